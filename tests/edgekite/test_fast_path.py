"""The fast envelope validator must never accept what pydantic refuses, nor read it differently.

Realistic envelopes and thousands of seeded mutations of them go through both paths; where the
fast path accepts, the row must equal the model's row (ids minted here aside).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from edgekite.config import LimitsSection
from edgekite.ingest import EventRow, Rejection, envelope_to_row
from edgekite.simulate import TrafficGenerator

NOW = 1_795_400_000_000
LIMITS = LimitsSection()

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**70, "", " ", "x", "web", "info", "standard", "1.0",
    "550e8400-e29b-41d4-a716-446655440000", "550E8400E29B41D4A716446655440000", "abc\n", "a/b",
    "2026-11-23T10:00:00Z", "1795400000000", [], [1], {}, {"k": "v"}, "x" * 200,
]  # fmt: skip


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out.extend(paths(v, (*prefix, i)))
    return out


def mutate(env: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    env = copy.deepcopy(env)
    for _ in range(rng.randint(1, 2)):
        path = rng.choice(paths(env) or [("event",)])
        parent: Any = env
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        action = rng.random()
        if action < 0.2 and isinstance(parent, dict):
            del parent[key]
        elif action < 0.3 and isinstance(parent, dict):
            parent[rng.choice(["extra", "Type", "ID", "synced", "metadata"])] = rng.choice(ODD_VALUES)
        else:
            parent[key] = rng.choice(ODD_VALUES)
    return env


def both(env: dict[str, Any]) -> tuple[EventRow | Rejection, EventRow | Rejection]:
    kw: dict[str, Any] = {
        "topic_source_id": None,
        "received_at": NOW,
        "limits": LIMITS,
        "require_source_match": False,
    }
    return envelope_to_row(env, fast=True, **kw), envelope_to_row(env, fast=False, **kw)


def comparable(row: EventRow, env: Any) -> tuple[Any, ...]:
    minted = not (isinstance(env, dict) and isinstance(env.get("event_id"), str))
    return (*tuple(row[1:16]), None if minted else row[0])


def test_simulator_envelopes_take_the_fast_path_and_match_the_model() -> None:
    gen = TrafficGenerator(seed=5)
    for _ in range(3000):
        _, env = gen.next_event()
        fast, model = both(env)
        assert isinstance(model, EventRow)
        assert isinstance(fast, EventRow)
        assert comparable(fast, env) == comparable(model, env)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_envelopes_agree_between_paths(seed: int) -> None:
    rng = random.Random(seed)
    gen = TrafficGenerator(seed=seed)
    accepted_fast = 0
    for _ in range(2500):
        _, env = gen.next_event()
        bad = mutate(env, rng)
        fast, model = both(bad)
        if isinstance(model, Rejection):
            assert isinstance(fast, Rejection), f"fast path accepted what the model refuses: {bad}"
            assert fast.detail == model.detail, "errors are always worded by the model"
        else:
            assert isinstance(fast, EventRow), f"model accepted, fast path refused: {bad}"
            assert comparable(fast, bad) == comparable(model, bad), bad
            accepted_fast += 1
    assert accepted_fast > 100, "the mutations should not all be fatal"

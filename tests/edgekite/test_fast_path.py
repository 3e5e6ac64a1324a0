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
from edgekite.ingest import EventRow, Rejection, _fast_fields, envelope_to_row
from edgekite.simulate import TrafficGenerator

NOW = 1_795_400_000_000
LIMITS = LimitsSection()

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**70, "", " ", "x", "web", "info", "standard", "1.0",
    "550e8400-e29b-41d4-a716-446655440000", "550E8400E29B41D4A716446655440000", "abc\n", "a/b",
    "2026-11-23T10:00:00Z", "1795400000000", [], [1], {}, {"k": "v"}, "x" * 200,
    "550e8400e29b-41d4-a716-446655440000-", "{550e8400-e29b-41d4-a716-4466554400}",
]  # fmt: skip


@pytest.mark.parametrize(
    "event_id",
    [
        "550e8400-e29b-41d4-a716-446655440000",
        "550E8400-E29B-41D4-A716-446655440000",
        "550e8400e29b-41d4-a716-446655440000-",  # 36 characters, hyphens out of place
        "{550e8400-e29b-41d4-a716-4466554400}",  # 36 characters, braces
        "550e8400-e29b-41d4-a716-44665544000g",
    ],
)
def test_event_id_spellings_agree_between_paths(event_id: str) -> None:
    env = TrafficGenerator(seed=1).next_event()[1] | {"event_id": event_id}
    fast, model = both(env)
    assert type(fast) is type(model), (fast, model)
    if isinstance(model, EventRow):
        assert fast[0] == model[0]


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


GOOD_ATTACHMENT: dict[str, Any] = {
    "kind": "thumbnail",
    "uri": "nvr://cam-1/2026/11/23/clip.jpg",
    "sha256": "ab" * 32,
    "size_bytes": 48213,
    "content_type": "image/jpeg",
}
ODD_ATTACHMENT_VALUES: list[Any] = [
    None, True, 0, -1, 5.0, "5", "", "Thumb", "thumb nail", "x" * 33, "data:image/png;base64,AAAA",
    "DATA:x", "javascript:alert(1)", "no-scheme", "file:///a", "HTTPS://a/b", "ab" * 31, "AB" * 32,
    "s3://" + "x" * 2044, "s3://" + "x" * 2043, "t" * 129, [], {},
]  # fmt: skip


def test_camera_events_with_thumbnails_take_the_fast_path() -> None:
    gen = TrafficGenerator(seed=3)
    with_attachments = 0
    for _ in range(3000):
        _, env = gen.next_event()
        if env.get("attachments"):
            with_attachments += 1
            assert _fast_fields(env) is not None, env
    assert with_attachments > 20


@pytest.mark.parametrize("field", [*GOOD_ATTACHMENT, "extra"])
def test_odd_attachments_agree_between_paths(field: str) -> None:
    base = TrafficGenerator(seed=1).next_event()[1]
    for value in ODD_ATTACHMENT_VALUES:
        for count in (1, 2):
            env = copy.deepcopy(base)
            att = {**GOOD_ATTACHMENT, field: value}
            if value is None and field != "extra":
                del att[field]
            env["attachments"] = [dict(GOOD_ATTACHMENT)] * (count - 1) + [att]
            fast, model = both(env)
            if isinstance(model, Rejection):
                assert isinstance(fast, Rejection) and fast.detail == model.detail, env["attachments"]
            else:
                assert isinstance(fast, EventRow), env["attachments"]
                assert comparable(fast, env) == comparable(model, env)


def test_more_attachments_than_allowed_are_refused_by_both_paths() -> None:
    env = TrafficGenerator(seed=1).next_event()[1]
    for n, ok in ((32, True), (33, False)):
        env["attachments"] = [dict(GOOD_ATTACHMENT)] * n
        fast, model = both(env)
        assert isinstance(fast, EventRow) is ok and isinstance(model, EventRow) is ok


def test_an_attachment_json_cannot_hold_is_refused_not_raised() -> None:
    """Only a Python caller can pass an int past 64 bits (orjson reads one as a float)."""
    env = TrafficGenerator(seed=1).next_event()[1]
    env["attachments"] = [dict(GOOD_ATTACHMENT, size_bytes=2**70)]
    for result in both(env):
        assert isinstance(result, Rejection) and result.code == "invalid_envelope"
        assert "cannot be stored as JSON" in result.detail

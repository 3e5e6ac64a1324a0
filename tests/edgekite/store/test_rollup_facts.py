"""Rollup facts: what the rollups need of an event's data, worked out where it is decoded.

The writer counts pages, referrers, visitors, errors and incidents from six small values each
row carries (``EventRow.facts``) instead of its parsed payload, so the decoders' processes do
that work and less crosses to the writer's. A row without facts still gets its rollups: the
writer works them out from ``payload_json``. Both ways must count alike.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson

from edgekite.config import EdgeConfig
from edgekite.ingest import Decoded, EventRow, decode_message
from edgekite.metrics import EdgeMetrics
from edgekite.rollups import NO_FACTS, rollup_facts
from edgekite.simulate import TrafficGenerator
from edgekite.store import EdgeStore, WriteItem

from .conftest import submit_wait

NOW_MS = 1_790_000_000_000

ROLLUP_TABLES = (
    "SELECT dim, hour_bucket, key, count FROM hourly_dims ORDER BY 1, 2, 3",
    "SELECT dim, day_bucket, key, count FROM daily_dims ORDER BY 1, 2, 3",
    "SELECT source_id, start_ms, end_ms, count, top_confidence, top_event_id, thumbnail_uri, labels "
    "FROM incidents ORDER BY 1, 2",
    "SELECT dim, granularity, bucket, sketch FROM sketches ORDER BY 1, 2, 3",
)


def test_a_page_view_gives_its_page_referrer_host_and_visitor() -> None:
    data = {"url": "https://shop.example/pricing?utm_source=x#top", "referrer": "https://www.google.com/q"}
    data["visitor_id"] = "v-1"
    page, ref, visitor, error, label, confidence = rollup_facts("web", "page_view", "info", data)
    assert (page, ref, error, label, confidence) == ("/pricing", "www.google.com", None, None, None)
    assert isinstance(visitor, int)


def test_an_error_gives_its_grouping_key_and_a_detection_its_label_and_confidence() -> None:
    assert rollup_facts("ops", "error", "error", {"code": "E42"})[3] == "error: E42"
    facts = rollup_facts("iot", "person_detected", "info", {"confidence": 0.91, "label": "person"})
    assert facts == (None, None, None, None, "person", 0.91)


def test_events_with_no_per_key_rollup_or_no_data_object_give_no_facts() -> None:
    assert rollup_facts("iot", "sensor_reading", "info", {"value": 3}) == NO_FACTS
    assert rollup_facts("web", "page_view", "info", ["not", "an", "object"]) == NO_FACTS
    assert rollup_facts("ops", "error", "critical", None) == NO_FACTS


def _decoded_mix(cfg: EdgeConfig, count: int) -> list[list[EventRow]]:
    """The simulator's mix as the MQTT bridge decodes it: array messages of 100 per source."""
    per_source: dict[str, list[Any]] = defaultdict(list)
    for source, env in TrafficGenerator(seed=7, now_ms=lambda: NOW_MS).events(count):
        per_source[source].append(env)
    batches = []
    for source, envs in sorted(per_source.items()):
        for start in range(0, len(envs), 100):
            decoded = decode_message(
                orjson.dumps(envs[start : start + 100]),
                topic_source_id=source,
                received_at=NOW_MS,
                limits=cfg.limits,
            )
            assert not decoded.rejections
            batches.append(decoded.events)
    return batches


def _store_rows(store: EdgeStore, batches: list[list[EventRow]]) -> None:
    for rows in batches:
        result = submit_wait(store, WriteItem(Decoded(rows, [], False), "mqtt", None, size=1000))
        assert result.committed and result.accepted == len(rows)


def _rollups(cfg: EdgeConfig) -> list[list[tuple[Any, ...]]]:
    conn = sqlite3.connect(cfg.edge.data_dir / "edge.db")
    try:
        return [conn.execute(q).fetchall() for q in ROLLUP_TABLES]
    finally:
        conn.close()


def test_rollups_from_decoded_facts_equal_rollups_from_the_payload(
    make_config: Callable[..., EdgeConfig], tmp_path_factory: Any
) -> None:
    stores = []
    for name in ("facts", "payload"):
        cfg = make_config(edge={"data_dir": str(tmp_path_factory.mktemp(name))})
        stores.append((EdgeStore(cfg, EdgeMetrics(), clock=lambda: NOW_MS / 1000).open(), cfg))
    (with_facts, cfg_a), (without, cfg_b) = stores
    batches = _decoded_mix(cfg_a, 3000)
    rows = [r for b in batches for r in b]
    # The decoders did the work: every row carries facts, none its parsed payload.
    assert all(type(r.facts) is tuple for r in rows)
    kinds = {(r.category, r.type) for r in rows if r.facts}
    assert {("web", "page_view"), ("iot", "person_detected")} <= kinds
    assert any(r.facts and r.facts[3] is not None for r in rows)  # an error's key

    try:
        _store_rows(with_facts, batches)
        _store_rows(without, [[r._replace(facts=None) for r in b] for b in batches])
    finally:
        with_facts.close()
        without.close()

    got, expected = _rollups(cfg_a), _rollups(cfg_b)
    assert all(expected), "each rollup table got rows"
    assert got == expected

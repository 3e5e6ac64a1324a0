"""Free-text search on a big store answers in bounded time and, followed through its cursors,
still finds every match exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest

from edge_api import queries
from edgekite.config import EdgeConfig, load_edge_config
from edgekite.ingest import decode_message
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, IngestResult, WriteItem
from edgekite.store.reads import Reader

EVENTS = 6_000
NEEDLE = "needle-7f3a"
MATCH_EVERY = 1_000  # events 0, 1000, ... carry the needle


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Reader, int]]:
    data = tmp_path_factory.mktemp("search")
    cfg: EdgeConfig = load_edge_config(environ={}, overrides={"edge": {"data_dir": str(data)}})
    store = EdgeStore(cfg, EdgeMetrics()).open()
    now = int(time.time() * 1000)
    envs = [
        {
            "event_id": str(uuid.uuid4()),
            "observed_at": now - (EVENTS - i) * 1000,
            "source": {"type": "edge_device"},
            "event": {
                "category": "iot",
                "type": "reading",
                "data": {"note": NEEDLE.upper() if i % MATCH_EVERY == 0 else f"ordinary reading {i}"},
            },
        }
        for i in range(EVENTS)
    ]
    done = threading.Event()
    results: list[IngestResult] = []

    def cb(r: IngestResult) -> None:
        results.append(r)
        if len(results) == EVENTS // 500:
            done.set()

    for start in range(0, EVENTS, 500):
        payload = orjson.dumps(envs[start : start + 500])
        decoded = decode_message(payload, topic_source_id="probe-1", received_at=now, limits=cfg.limits)
        store.submit(WriteItem(decoded, "http", None, False, None, cb, len(payload)))
    assert done.wait(60) and all(r.committed for r in results)
    r = Reader(cfg.db_path, cfg.store)
    assert r.conn.execute("SELECT count(*) FROM events").fetchone()[0] == EVENTS
    yield r, now
    r.conn.close()
    store.close()


def search(r: Reader, now: int, cursor: list[int] | None) -> dict[str, object]:
    f = queries.TimelineFilter(start=now - 10 * 86_400_000, end=now, q=NEEDLE)
    return queries.timeline(r, f, limit=50, cursor=cursor)


def follow(r: Reader, now: int) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    scanned: list[int] = []
    cursor = None
    while True:
        page = search(r, now, cursor)
        ids += [e["event_id"] for e in page["events"]]  # type: ignore[attr-defined]
        scanned.append(int(page.get("scanned", 0)))  # type: ignore[call-overload]
        cursor = page["next_cursor"]  # type: ignore[assignment]
        if cursor is None:
            return ids, scanned


def test_a_search_stops_at_its_time_box_and_the_cursor_finds_the_rest(
    reader: tuple[Reader, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, now = reader
    monkeypatch.setattr(queries, "Q_SCAN_SECONDS", 0.0)  # every request runs out of time at once
    ids, scanned = follow(r, now)
    # Each request examined its minimum (to the next clock read) and no more...
    assert scanned[0] == -(-queries.Q_SCAN_MIN // queries.Q_CLOCK_EVERY) * queries.Q_CLOCK_EVERY
    assert len(scanned) > 2
    # ...and following the cursors found every match, case-insensitively, exactly once.
    assert len(ids) == len(set(ids)) == EVENTS // MATCH_EVERY


def test_with_time_to_spare_one_request_examines_up_to_its_row_limit(
    reader: tuple[Reader, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, now = reader
    monkeypatch.setattr(queries, "Q_SCAN_SECONDS", 60.0)
    monkeypatch.setattr(queries, "Q_SCAN_LIMIT", 4_000)
    ids, scanned = follow(r, now)
    assert scanned[0] == 4_000
    assert len(ids) == len(set(ids)) == EVENTS // MATCH_EVERY

"""The outbox in edge.db: watermarks that only move on acks, and retention that respects them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from edge_bridge import outbox
from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore
from edgekite.store.schema import connect
from tests.conftest import db_rows
from tests.edgekite.store.conftest import Clock, envelope, item_for, submit_wait

HUB = {"hub_url": "http://127.0.0.1:9"}  # sync on; nothing listens (the worker is not started here)


@pytest.fixture
def store_factory(
    make_config: Callable[..., EdgeConfig],
) -> Iterator[Callable[..., tuple[EdgeStore, EdgeConfig]]]:
    stores: list[EdgeStore] = []
    clock = Clock()

    def factory(**sections: object) -> tuple[EdgeStore, EdgeConfig]:
        cfg = make_config(**sections)
        store = EdgeStore(cfg, EdgeMetrics(), clock=clock).open()
        store.clock = clock  # type: ignore[attr-defined]
        stores.append(store)
        return store, cfg

    yield factory
    for s in stores:
        s.close()


def write(store: EdgeStore, cfg: EdgeConfig, n: int, **over: object) -> None:
    submit_wait(store, item_for(store, cfg, orjson.dumps([envelope(**over) for _ in range(n)])))


def batch(no: int, first: int, last: int) -> outbox.PendingBatch:
    return outbox.PendingBatch(no, f"s:{first}-{last}", first, last, last - first + 1, {}, 0)


def run(store: EdgeStore, job: Callable[..., object]) -> object:
    return asyncio.run(store.run_write(job))


def state(cfg: EdgeConfig) -> outbox.OutboxState:
    conn = connect(cfg.db_path, cfg.store, readonly=True)
    try:
        return outbox.load_state(conn)
    finally:
        conn.close()


def test_synced_watermark_moves_only_over_contiguous_acks(
    store_factory: Callable[..., tuple[EdgeStore, EdgeConfig]],
) -> None:
    store, cfg = store_factory(sync=HUB)
    write(store, cfg, 30)
    for no, (a, b) in enumerate([(1, 10), (11, 20), (21, 30)], start=1):
        bt = batch(no, a, b)
        run(store, lambda c, bt=bt: outbox.record_batch(c, bt, 0, 0))
    st = state(cfg)
    assert (st.formed_to, st.synced_to, len(st.pending)) == (30, 0, 3)
    assert len(st.store_id) == 12

    assert run(store, lambda c: outbox.complete_batch(c, "s:11-20")) == 0, "batch 1 still out"
    assert run(store, lambda c: outbox.complete_batch(c, "s:1-10")) == 20
    assert run(store, lambda c: outbox.complete_batch(c, "s:1-10")) is None, "a second ack is a no-op"
    assert run(store, lambda c: outbox.complete_batch(c, "s:21-30")) == 30
    st = state(cfg)
    assert (st.synced_to, st.pending) == (30, [])
    assert db_rows(cfg.db_path, "SELECT value FROM counters WHERE name='sync_events_synced'") == [(30,)]


def test_age_retention_never_deletes_what_the_hub_has_not_acknowledged(
    store_factory: Callable[..., tuple[EdgeStore, EdgeConfig]],
) -> None:
    store, cfg = store_factory(sync=HUB, retention={"standard_days": 1, "interval_secs": 0.05})
    clock = store.clock  # type: ignore[attr-defined]
    clock.t -= 3 * 86_400  # written three days ago
    write(store, cfg, 20)
    clock.t += 3 * 86_400
    run(store, lambda c: outbox.record_batch(c, batch(1, 1, 10), 0, 0))
    time.sleep(0.5)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events") == [(20,)], "expired but unsynced: kept"

    run(store, lambda c: outbox.complete_batch(c, "s:1-10"))
    write(store, cfg, 1)  # wakes the writer, whose maintenance runs between batches
    deadline = time.monotonic() + 10
    while db_rows(cfg.db_path, "SELECT min(rowid) FROM events")[0][0] != 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_rows(cfg.db_path, "SELECT min(rowid), count(*) FROM events") == [(11, 11)], (
        "the acknowledged ten go, the unsynced ten and the fresh one stay"
    )


def test_without_sync_retention_is_plain_age(
    store_factory: Callable[..., tuple[EdgeStore, EdgeConfig]],
) -> None:
    store, cfg = store_factory(retention={"standard_days": 1, "interval_secs": 0.05})
    clock = store.clock  # type: ignore[attr-defined]
    clock.t -= 3 * 86_400
    write(store, cfg, 20)
    clock.t += 3 * 86_400
    write(store, cfg, 1)
    deadline = time.monotonic() + 10
    while db_rows(cfg.db_path, "SELECT count(*) FROM events") != [(1,)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events") == [(1,)]


def test_the_size_cap_wins_over_the_backlog_and_counts_what_it_drops(
    store_factory: Callable[..., tuple[EdgeStore, EdgeConfig]],
) -> None:
    cap = 1024**2
    store, cfg = store_factory(
        sync=HUB, retention={"max_db_bytes": cap, "interval_secs": 0.05, "chunk_rows": 200}
    )
    for i in range(60):
        write(store, cfg, 50, event={"category": "iot", "type": "r", "data": {"blob": "y" * 900, "i": i}})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0]
        dropped = db_rows(cfg.db_path, "SELECT value FROM counters WHERE name='sync_dropped_unsynced'")[0][0]
        if left < 3000 and dropped == 3000 - left:
            break
        time.sleep(0.05)
    assert 0 < left < 3000
    assert dropped == 3000 - left, "every event dropped unsynced is counted"


def test_rowids_never_go_back_even_when_retention_empties_the_table(
    store_factory: Callable[..., tuple[EdgeStore, EdgeConfig]],
) -> None:
    """An emptied rowid table restarts at 1, below the outbox's watermark: new events would never
    be sent. Retention therefore always spares the newest row."""
    store, cfg = store_factory(sync=HUB, retention={"standard_days": 1, "interval_secs": 0.05})
    clock = store.clock  # type: ignore[attr-defined]
    clock.t -= 3 * 86_400
    write(store, cfg, 10)
    clock.t += 3 * 86_400
    run(store, lambda c: outbox.record_batch(c, batch(1, 1, 10), 0, 0))
    run(store, lambda c: outbox.complete_batch(c, "s:1-10"))
    deadline = time.monotonic() + 10
    while db_rows(cfg.db_path, "SELECT count(*) FROM events") != [(1,)] and time.monotonic() < deadline:
        run(store, lambda c: None)  # let the writer loop run its maintenance
        time.sleep(0.05)
    assert db_rows(cfg.db_path, "SELECT rowid FROM events") == [(10,)], "the newest row is spared"
    write(store, cfg, 1)
    assert db_rows(cfg.db_path, "SELECT max(rowid) FROM events") == [(11,)], "above the watermark"

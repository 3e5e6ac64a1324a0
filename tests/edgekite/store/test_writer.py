"""The edge store: one writer, batched commits, dedup, rollups, dead letters, bounded growth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, IngestResult
from edgekite.store.maintenance import last_rowid_received_before, live_bytes, wal_bytes
from edgekite.store.schema import SCHEMA_VERSION, SchemaTooNewError, connect, migrate
from tests.conftest import db_rows
from tests.edgekite.store.conftest import Clock, envelope, item_for, metric, submit_wait


def test_migrations_set_user_version_and_refuse_newer(
    tmp_path: Path, make_config: Callable[..., EdgeConfig]
) -> None:
    cfg = make_config()
    conn = connect(tmp_path / "x.db", cfg.store)
    assert migrate(conn) == SCHEMA_VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(conn) == SCHEMA_VERSION, "migrating twice is a no-op"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNewError):
        migrate(conn)


def test_commit_stores_rows_rollups_and_source_state(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, metrics = open_store()
    envs = [envelope() for _ in range(5)] + [
        envelope(etype="heartbeat", event={"category": "ops", "type": "heartbeat"})
    ]
    result = submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    assert (result.committed, result.accepted, result.duplicates, result.rejected) == (True, 6, 0, [])
    db = cfg.db_path
    assert db_rows(db, "SELECT count(*) FROM events")[0][0] == 6
    assert sorted(db_rows(db, "SELECT type, count FROM hourly_counts")) == [
        ("heartbeat", 1),
        ("person_detected", 5),
    ]
    (src,) = db_rows(db, "SELECT source_id, source_type, last_seq, events, last_heartbeat FROM sources")
    assert src[:4] == ("cam-1", "edge_device", 6, 6)
    assert src[4] is not None
    assert [r[0] for r in db_rows(db, "SELECT source_seq FROM events ORDER BY rowid")] == [1, 2, 3, 4, 5, 6]
    assert metric(metrics, "edgekite_events_stored_total") == 6


def test_replayed_event_ids_are_counted_no_ops(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, metrics = open_store()
    envs = [envelope() for _ in range(10)]
    first = submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    # a replay of 3 old ones mixed with 2 new ones, one of which is repeated inside the message
    fresh = envelope()
    again = submit_wait(store, item_for(store, cfg, orjson.dumps([*envs[:3], fresh, envelope(), fresh])))
    assert (first.accepted, first.duplicates) == (10, 0)
    assert (again.accepted, again.duplicates) == (2, 4)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 12
    assert db_rows(cfg.db_path, "SELECT sum(count) FROM hourly_counts")[0][0] == 12, (
        "rollups count each event once"
    )
    assert db_rows(cfg.db_path, "SELECT events, last_seq FROM sources")[0] == (12, 12)
    assert metric(metrics, "edgekite_events_duplicate_total") == 4


def test_redelivered_idless_message_is_not_stored_twice(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, _ = open_store()
    minimal = orjson.dumps(
        {"source": {"type": "edge_device"}, "event": {"category": "iot", "type": "motion"}}
    )
    first = submit_wait(store, item_for(store, cfg, minimal))
    redelivered = submit_wait(store, item_for(store, cfg, minimal, dup=True))
    repeated_on_purpose = submit_wait(store, item_for(store, cfg, minimal, dup=False))
    assert (first.accepted, redelivered.duplicates, repeated_on_purpose.accepted) == (1, 1, 1)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 2


def test_rejections_are_dead_lettered_with_reason_and_bounded_payload(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, metrics = open_store(limits={"dead_letter_max_bytes": 100})
    garbage = b"\x00\x01not json" + b"z" * 500
    r1 = submit_wait(store, item_for(store, cfg, garbage))
    r2 = submit_wait(store, item_for(store, cfg, orjson.dumps([envelope(), {"event": 5}])))
    assert (r1.accepted, [r.code for r in r1.rejected]) == (0, ["invalid_json"])
    assert (r2.accepted, [r.code for r in r2.rejected]) == (1, ["invalid_envelope"])
    rows = db_rows(
        cfg.db_path, "SELECT code, reason, length(payload), payload_bytes, topic FROM dead_letter ORDER BY id"
    )
    assert rows[0][0] == "invalid_json" and rows[0][2:4] == (100, len(garbage))
    assert rows[1][0] == "invalid_envelope" and rows[1][1].startswith("[1] ")
    assert rows[1][4] == "ek/v1/cam-1/events"
    assert metric(metrics, "edgekite_events_rejected_total", reason="invalid_json") == 1
    assert metric(metrics, "edgekite_events_rejected_total", reason="invalid_envelope") == 1


def test_close_drains_everything_queued(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, _ = open_store()
    results: list[IngestResult] = []
    for _ in range(300):
        item = item_for(store, cfg, orjson.dumps([envelope() for _ in range(10)]))
        item.done = results.append
        store.submit(item)
    store.close()
    assert len(results) == 300 and all(r.committed for r in results)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 3000


def test_full_queue_blocks_the_producer(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, _ = open_store(store={"queue_max_messages": 10})
    payload = orjson.dumps(envelope())
    # Hold the writer inside a transaction-free wait: fill faster than it can possibly drain.
    blocked = 0
    for _ in range(2000):
        if not store.submit(item_for(store, cfg, payload), timeout=0):
            blocked += 1
    assert blocked > 0, "a bounded queue must refuse (block) when full"
    assert store.queue_depth <= 10


def test_retention_deletes_expired_rows_per_class(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]], clock: Clock
) -> None:
    store, cfg, metrics = open_store(
        retention={"short_days": 1, "standard_days": 3, "long_days": 10, "interval_secs": 0.05}
    )
    day = 86_400.0
    batches = {}
    for age_days in (5, 2, 0):  # written at now-5d, now-2d, now
        clock.t = 1_790_000_000.0 - age_days * day
        envs = [
            envelope(privacy={"retention_class": c}) for c in ("short", "standard", "long") for _ in range(4)
        ]
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
        batches[age_days] = envs
    clock.t = 1_790_000_000.0

    def remaining() -> list[tuple[str, int]]:
        return db_rows(cfg.db_path, "SELECT retention_class, count(*) FROM events GROUP BY 1 ORDER BY 1")

    deadline = time.monotonic() + 10
    want = [("long", 12), ("short", 4), ("standard", 8)]
    while remaining() != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remaining() == want
    kept_ids = {
        r[0] for r in db_rows(cfg.db_path, "SELECT event_id FROM events WHERE retention_class='standard'")
    }
    expected = {
        uuid.UUID(str(e["event_id"])).bytes
        for age in (2, 0)
        for e in batches[age]
        if e["privacy"] == {"retention_class": "standard"}
    }
    assert kept_ids == expected, "standard rows of 2 days ago stay, those of 5 days ago go"
    assert metric(metrics, "edgekite_retention_deleted_total", reason="age") == 12
    assert db_rows(cfg.db_path, "SELECT sum(count) FROM hourly_counts")[0][0] == 36, (
        "rollups outlive raw rows"
    )


def test_rowid_search_finds_the_age_boundary(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]], clock: Clock
) -> None:
    store, cfg, _ = open_store()
    for i in range(50):
        clock.t = 1_790_000_000.0 + i
        submit_wait(store, item_for(store, cfg, orjson.dumps(envelope())))
    conn = connect(cfg.db_path, cfg.store, readonly=True)
    cutoff = int((1_790_000_000.0 + 20) * 1000)
    rid = last_rowid_received_before(conn, cutoff)
    expected = db_rows(cfg.db_path, "SELECT max(rowid) FROM events WHERE received_at < ?", (cutoff,))[0][0]
    assert rid == expected == 20
    assert last_rowid_received_before(conn, 0) == 0
    conn.close()


def test_size_cap_deletes_oldest_first(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    cap = 1024**2
    store, cfg, metrics = open_store(
        retention={"max_db_bytes": cap, "interval_secs": 0.05, "chunk_rows": 200}
    )
    first_ids = []
    for i in range(60):
        envs = [
            envelope(event={"category": "iot", "type": "reading", "data": {"blob": "y" * 900, "i": i}})
            for _ in range(50)
        ]
        if i == 0:
            first_ids = [uuid.UUID(str(e["event_id"])).bytes for e in envs]
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    conn = connect(cfg.db_path, cfg.store, readonly=True)
    deadline = time.monotonic() + 15
    while live_bytes(conn) > cap and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_bytes(conn) <= cap
    remaining = db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0]
    assert 0 < remaining < 3000
    newest = db_rows(cfg.db_path, "SELECT max(json_extract(ek_json(payload_json), '$.i')) FROM events")[0][0]
    assert newest == 59, "the newest events are kept"
    marks = ",".join("?" * len(first_ids))
    assert (
        db_rows(cfg.db_path, f"SELECT count(*) FROM events WHERE event_id IN ({marks})", tuple(first_ids))[0][
            0
        ]
        == 0
    )
    assert metric(metrics, "edgekite_retention_deleted_total", reason="size_cap") == 3000 - remaining
    conn.close()


@pytest.mark.parametrize("background", [True, False], ids=["background-checkpoint", "writer-checkpoint"])
def test_wal_stays_bounded_under_sustained_load_with_a_reader(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]], background: bool
) -> None:
    bound = 2 * 1024**2
    store, cfg, metrics = open_store(store={"wal_max_bytes": bound, "background_checkpoint": background})
    stop = threading.Event()

    def reader() -> None:  # several dashboards polling hard all the while
        conn = connect(cfg.db_path, cfg.store, readonly=True)
        while not stop.is_set():
            conn.execute("SELECT count(*) FROM events WHERE observed_at > 0").fetchone()
            time.sleep(0.002)
        conn.close()

    t = threading.Thread(target=reader)
    t.start()
    peak = 0
    try:
        for _ in range(150):
            envs = [
                envelope(event={"category": "iot", "type": "r", "data": {"pad": "p" * 300}})
                for _ in range(100)
            ]
            submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
            peak = max(peak, wal_bytes(cfg.db_path))
    finally:
        stop.set()
        t.join()
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 15_000
    assert peak <= bound, f"WAL peaked at {peak} bytes"
    by_background = metric(metrics, "edgekite_wal_checkpoint_seconds_total", by="background")
    assert (by_background > 0) is background


def test_background_checkpoint_copies_the_wal_back_while_the_writer_appends(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    """Committed pages reach edge.db itself without the writer checkpointing, and the WAL is
    still rewound (so it does not grow) although the writer never pauses for long."""
    bound = 4 * 1024**2
    store, cfg, metrics = open_store(store={"wal_max_bytes": bound})
    reader = connect(cfg.db_path, cfg.store, readonly=True)
    assert store._conn is not None
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    pages_before = reader.execute("PRAGMA page_count").fetchone()[0]
    reader.close()
    for _ in range(60):
        envs = [
            envelope(event={"category": "iot", "type": "r", "data": {"pad": "p" * 400}}) for _ in range(100)
        ]
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    # The metric counts only background runs that copied frames back.
    assert metric(metrics, "edgekite_wal_checkpoint_seconds_total", by="background") > 0
    # edge.db's own file has grown with the copied pages (readers see them either way).
    db_file_pages = cfg.db_path.stat().st_size // 4096
    assert db_file_pages > pages_before + 200, (pages_before, db_file_pages)
    assert wal_bytes(cfg.db_path) <= bound
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 6_000


def test_wal_stays_bounded_when_the_background_checkpoint_thread_is_gone(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    bound = 2 * 1024**2
    store, cfg, _ = open_store(store={"wal_max_bytes": bound})
    assert store._checkpointer is not None
    store._checkpointer.stop()  # as if the thread had died
    peak = 0
    for _ in range(60):
        envs = [
            envelope(event={"category": "iot", "type": "r", "data": {"pad": "p" * 300}}) for _ in range(100)
        ]
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
        peak = max(peak, wal_bytes(cfg.db_path))
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 6_000
    assert peak <= bound, f"WAL peaked at {peak} bytes"


def test_json_columns_are_compressed_once_a_dictionary_is_trained(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    store, cfg, _ = open_store(store={"compress_train_events": 500})
    sent = []
    for i in range(12):
        envs = [
            envelope(
                event={
                    "category": "web",
                    "type": "page_view",
                    "data": {"url": f"/p/{i}/{j}", "ua": "Mozilla/5.0 " * 8},
                },
                attachments=[{"kind": "thumbnail", "uri": f"file:///m/{i}-{j}.jpg"}],
                source={"type": "browser", "version": "1.2.3", "metadata": {"site_id": "farm-17"}},
            )
            for j in range(100)
        ]
        sent.extend(envs)
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    db = cfg.db_path
    assert db_rows(db, "SELECT count(*) FROM zstd_dicts")[0][0] == 1
    kinds = dict(db_rows(db, "SELECT typeof(payload_json), count(*) FROM events GROUP BY 1"))
    assert kinds["blob"] >= 600 and kinds["text"] >= 500, kinds
    stored = db_rows(
        db,
        "SELECT event_id, ek_json(payload_json), ek_json(attachments_json), ek_json(meta_json), "
        "length(payload_json) FROM events ORDER BY rowid",
    )
    by_id = {uuid.UUID(str(e["event_id"])).bytes: e for e in sent}
    for eid, payload, attachments, meta, _ in stored:
        env = by_id[eid]
        assert orjson.loads(payload) == env["event"]["data"]  # type: ignore[index]
        assert orjson.loads(attachments) == env["attachments"]
        assert orjson.loads(meta) == {"source_version": "1.2.3", "source_metadata": {"site_id": "farm-17"}}
    compressed = [n for *_, n in stored[-100:]]
    assert sum(compressed) / len(compressed) < 0.5 * len(stored[0][1]), "a dictionary frame is far smaller"


def test_a_payload_naming_an_unknown_dictionary_is_a_clear_error() -> None:
    from edgekite.codec import PayloadCodec, UnknownDictionaryError

    with pytest.raises(UnknownDictionaryError):
        PayloadCodec().decode(bytes((9,)) + b"\x28\xb5\x2f\xfd")


def test_a_bug_in_rollups_costs_neither_the_events_nor_the_writer(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekite.store.rollup_writer import RollupWriter

    store, cfg, metrics = open_store()

    def broken(self: RollupWriter, conn: object, rows: object) -> None:
        raise TypeError("simulated rollup bug")

    monkeypatch.setattr(RollupWriter, "write", broken)
    hit = submit_wait(store, item_for(store, cfg, orjson.dumps([envelope() for _ in range(5)])))
    assert (hit.committed, hit.accepted) == (True, 5)
    assert metric(metrics, "edgekite_rollup_errors_total") == 1
    monkeypatch.undo()
    after = submit_wait(store, item_for(store, cfg, orjson.dumps([envelope() for _ in range(3)])))
    assert (after.committed, after.accepted) == (True, 3), "the writer is still alive"
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == 8
    assert db_rows(cfg.db_path, "SELECT sum(count) FROM hourly_counts")[0][0] == 3, "only the healthy batch"


def test_a_row_that_comes_encoded_is_stored_as_it_came(
    open_store: Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]],
) -> None:
    """The HTTP decode worker compresses the JSON columns itself; the writer must not redo it."""
    store, cfg, _ = open_store(store={"compress_train_events": 500})
    for i in range(6):
        envs = [
            envelope(event={"category": "web", "type": "page_view", "data": {"url": f"/{i}/{j}"}})
            for j in range(100)
        ]
        submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    assert store.codec.active_dict_id is not None
    item = item_for(store, cfg, orjson.dumps(envelope()))
    row = item.decoded.events[0]
    given = store.codec.encode('{"as":"encoded by the worker","pad":"' + "x" * 60 + '"}')
    item.decoded.events[0] = row._replace(encoded_json=(given, None, '{"m":1}'))
    assert submit_wait(store, item).accepted == 1
    ((payload, meta),) = db_rows(
        cfg.db_path, "SELECT payload_json, meta_json FROM events WHERE event_id = ?", (row.event_id,)
    )
    assert (payload, meta) == (given, '{"m":1}')


def test_a_dictionary_is_used_only_once_its_transaction_has_committed() -> None:
    """Rows naming a dictionary that a rollback took away could never be read again."""
    import sqlite3

    from edgekite.codec import PayloadCodec
    from edgekite.store.schema import MIGRATIONS

    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(MIGRATIONS[0])
    samples = [orjson.dumps({"url": f"/p/{i}", "ua": "Mozilla/5.0 " * 4, "n": i}) for i in range(2000)]
    codec = PayloadCodec()
    text = orjson.dumps({"url": "/p/1", "ua": "Mozilla/5.0 " * 4, "n": 1}).decode()
    conn.execute("BEGIN")
    codec.train(conn, samples, 0)
    conn.execute("ROLLBACK")
    assert codec.active_dict_id is None and codec.encode(text) == text
    conn.execute("BEGIN")
    dict_id, data = codec.train(conn, samples, 0)
    conn.execute("COMMIT")
    codec.install(dict_id, data)
    assert codec.active_dict_id == dict_id == 1
    assert codec.decode(codec.encode(text)) == text != codec.encode(text)

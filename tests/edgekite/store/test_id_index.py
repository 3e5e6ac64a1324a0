"""The event_id index in two tiers: a replay is a duplicate wherever its id sits, and the tiers
always name exactly the stored events."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import uuid_utils

from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, id_index
from edgekite.store.id_index import MERGE_CHUNKS, ROWID_OF_ID, chunk_bounds, is_time_ordered
from edgekite.store.schema import MIGRATIONS, SCHEMA_VERSION, _statements, connect
from tests.conftest import db_rows
from tests.edgekite.store.conftest import envelope, item_for, submit_wait

OpenStore = Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]]


@pytest.fixture
def tiered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random ids take the recent tier from the first event (in production: once the store has
    outgrown the page cache, ~131k events at 4 MB), so small tests exercise both tiers."""
    monkeypatch.setattr(id_index, "direct_below", lambda cache_mb: 0)


def tier_sizes(db: Path) -> tuple[int, int]:
    recent = db_rows(db, "SELECT count(*) FROM recent_ids")[0][0]
    merged = db_rows(db, "SELECT count(*) FROM event_ids")[0][0]
    return int(recent), int(merged)


def assert_tiers_name_exactly_the_events(db: Path) -> None:
    """Each stored event's id is in one tier, once, pointing at its row; nothing else is."""
    (events,) = db_rows(db, "SELECT count(*) FROM events")[0]
    pointing = db_rows(
        db,
        "SELECT count(*) FROM (SELECT event_id, rid FROM recent_ids UNION ALL "
        "SELECT event_id, rid FROM event_ids) t JOIN events e ON e.rowid = t.rid AND e.event_id = t.event_id",
    )[0][0]
    both = db_rows(db, "SELECT count(*) FROM recent_ids r JOIN event_ids b USING (event_id)")[0][0]
    recent, merged = tier_sizes(db)
    assert both == 0, "an id is in both tiers"
    assert recent + merged == events == pointing


def test_chunk_ranges_cover_the_id_space_once() -> None:
    keys = [bytes([b]) + bytes(15) for b in range(256)] + [b"\xff" * 16, bytes(16), b""]
    for key in keys:
        owners = [
            k
            for k in range(MERGE_CHUNKS)
            if chunk_bounds(k)[0] <= key and (chunk_bounds(k)[1] is None or key < chunk_bounds(k)[1])  # type: ignore[operator]
        ]
        assert len(owners) == 1, (key, owners)
    with pytest.raises(ValueError, match="not in"):
        chunk_bounds(MERGE_CHUNKS)


def test_only_uuidv7_ids_count_as_time_ordered() -> None:
    assert is_time_ordered(uuid_utils.uuid7().bytes)
    assert not is_time_ordered(uuid.uuid4().bytes)
    assert not is_time_ordered(uuid.uuid1().bytes)
    assert not is_time_ordered(b"\x00" * 6 + b"\x70")  # too short to be an id


def test_time_ordered_ids_skip_the_recent_tier_and_replays_are_still_caught(
    open_store: OpenStore, tiered: None
) -> None:
    store, cfg, _ = open_store()
    v7 = [envelope(event_id=str(uuid_utils.uuid7())) for _ in range(30)]
    v4 = [envelope() for _ in range(30)]
    assert _send(store, cfg, v7[:15] + v4[:15]) == (30, 0)
    recent = {r[0] for r in db_rows(cfg.db_path, "SELECT event_id FROM recent_ids")}
    assert not recent & {uuid.UUID(str(e["event_id"])).bytes for e in v7}
    assert (
        len(recent)
        >= 15
        - sum(  # the first transaction also moved merge range 0 along
            1 for e in v4[:15] if uuid.UUID(str(e["event_id"])).bytes < chunk_bounds(1)[0]
        )
    )
    assert _send(store, cfg, v7 + v4) == (30, 30)
    assert _send(store, cfg, [envelope(), *v7[::3], *v4[::3]]) == (1, 20)
    assert_tiers_name_exactly_the_events(cfg.db_path)


def _send(store: EdgeStore, cfg: EdgeConfig, envs: list[dict[str, object]]) -> tuple[int, int]:
    result = submit_wait(store, item_for(store, cfg, orjson.dumps(envs)))
    assert result.committed and not result.rejected
    return result.accepted, result.duplicates


def test_replays_are_duplicates_in_either_tier_and_after_a_restart(
    open_store: OpenStore, tiered: None
) -> None:
    store, cfg, _ = open_store()
    envs = [envelope() for _ in range(40 * (MERGE_CHUNKS + 6))]
    batches = [envs[i : i + 40] for i in range(0, len(envs), 40)]
    for batch in batches:  # one transaction each: more than one full merge cycle
        assert _send(store, cfg, batch) == (40, 0)
    recent, merged = tier_sizes(cfg.db_path)
    assert recent > 0 and merged > 0, "the load should leave ids in both tiers"
    assert_tiers_name_exactly_the_events(cfg.db_path)

    # Replays of every id, oldest (merged long ago) and newest (still recent), each mixed with a
    # new event and repeated within the message.
    for batch in batches[:3] + batches[-3:]:
        fresh = envelope()
        assert _send(store, cfg, [*batch, fresh, fresh]) == (1, 41)
    store.close()

    store, cfg, _ = open_store()  # same data dir: the recent tier outlives the process
    for batch in batches:
        assert _send(store, cfg, batch) == (0, 40)
    assert db_rows(cfg.db_path, "SELECT count(*) FROM events")[0][0] == len(envs) + 6
    assert_tiers_name_exactly_the_events(cfg.db_path)
    for env in (envs[0], envs[-1]):
        key = uuid.UUID(str(env["event_id"])).bytes
        (found,) = db_rows(cfg.db_path, f"SELECT event_id FROM events WHERE rowid IN {ROWID_OF_ID}", (key,))
        assert found[0] == key


def test_a_deleted_event_takes_its_id_from_the_index(open_store: OpenStore, tiered: None) -> None:
    store, cfg, _ = open_store()
    envs = [envelope() for _ in range(400)]
    for i in range(0, 400, 20):
        _send(store, cfg, envs[i : i + 20])
    store.close()
    conn = sqlite3.connect(cfg.db_path)
    with conn:
        conn.execute("DELETE FROM events WHERE rowid <= 300")  # any delete: retention, size cap, a hand
    conn.close()
    assert_tiers_name_exactly_the_events(cfg.db_path)
    assert sum(tier_sizes(cfg.db_path)) == 100

    store, cfg, _ = open_store()
    assert _send(store, cfg, envs[:20]) == (20, 0), "an id whose event is gone may be stored again"
    assert _send(store, cfg, envs[-20:]) == (0, 20)


def test_a_store_from_before_the_tiers_is_migrated_with_its_rowids(
    make_config: Callable[..., EdgeConfig], tiered: None
) -> None:
    cfg = make_config()
    conn = connect(cfg.db_path, cfg.store)
    for version in range(3):  # the schema as EdgeKite left it before the id tiers
        conn.execute("BEGIN")
        for statement in _statements(MIGRATIONS[version]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute("COMMIT")
    old_ids = [uuid.uuid4().bytes for _ in range(50)]
    conn.executemany(
        "INSERT INTO events (rowid, event_id, observed_at, received_at, source_type, source_id, category, "
        "type, payload_json) VALUES (?, ?, 1, 1, 'edge_device', 'cam-1', 'iot', 'person_detected', '{}')",
        [(100 + 2 * n, eid) for n, eid in enumerate(old_ids)],
    )
    conn.close()

    metrics = EdgeMetrics()
    with EdgeStore(cfg, metrics) as store:
        replay = [dict(envelope(), event_id=str(uuid.UUID(bytes=eid))) for eid in old_ids[:10]]
        assert _send(store, cfg, replay) == (0, 10), "ids stored before the migration are still known"
        assert _send(store, cfg, [envelope()]) == (1, 0)
    assert db_rows(cfg.db_path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
    rows = db_rows(cfg.db_path, "SELECT rowid, event_id FROM events ORDER BY rowid")
    assert rows[:50] == [(100 + 2 * n, eid) for n, eid in enumerate(old_ids)], "rowids (sync watermarks) kept"
    assert rows[50][0] == 100 + 2 * 49 + 1, "new rows continue after the old ones"
    assert_tiers_name_exactly_the_events(cfg.db_path)
    assert tier_sizes(cfg.db_path)[1] >= 50


def test_a_small_store_indexes_random_ids_directly(open_store: OpenStore) -> None:
    store, cfg, _ = open_store()
    envs = [envelope() for _ in range(200)]
    for i in range(0, 200, 50):
        assert _send(store, cfg, envs[i : i + 50]) == (50, 0)
    assert tier_sizes(cfg.db_path) == (0, 200), "below the page cache's size the detour is overhead"
    assert _send(store, cfg, envs[::7]) == (0, 29)


def test_a_rolled_back_move_is_not_taken_for_an_empty_recent_tier(
    open_store: OpenStore, tiered: None
) -> None:
    """The writer skips looking in a recent tier it believes empty; a transaction that moved
    the last recent ids and then failed must not leave it believing that."""
    store, cfg, _ = open_store()
    envs = [envelope() for _ in range(MERGE_CHUNKS * 4)]
    for env in envs:  # one id per transaction
        _send(store, cfg, [env])
    assert tier_sizes(cfg.db_path)[0] > 0
    ids = store._ids
    assert ids is not None
    conn = sqlite3.connect(cfg.db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for chunk in range(MERGE_CHUNKS):
        id_index.merge_chunk(conn, chunk)
    ids.recent_rows = 0  # what a recount inside the failed transaction would have read
    conn.execute("ROLLBACK")
    ids.rolled_back(conn)
    conn.close()
    assert ids.recent_rows == tier_sizes(cfg.db_path)[0] > 0
    assert _send(store, cfg, envs) == (0, len(envs))


def test_ids_left_in_the_recent_tier_are_found_once_ids_go_direct_again(
    open_store: OpenStore, tiered: None
) -> None:
    """A store that shrinks back below the page cache (retention, the size cap) sends random
    ids straight to the big tier again, while older ones still sit in the recent tier."""
    store, cfg, _ = open_store()
    envs = [envelope() for _ in range(60)]
    assert _send(store, cfg, envs) == (60, 0)
    assert tier_sizes(cfg.db_path)[0] > 0
    assert store._ids is not None
    store._ids.direct_below = 10**9
    assert _send(store, cfg, [envelope(), *envs]) == (1, 60)
    assert_tiers_name_exactly_the_events(cfg.db_path)


def test_a_recount_that_fails_after_a_rollback_keeps_the_recent_tier_looked_in(
    make_config: Callable[..., EdgeConfig],
) -> None:
    """A failing database must not leave the writer believing the recent tier is empty."""
    cfg = make_config()
    with EdgeStore(cfg, EdgeMetrics()):
        pass  # create and migrate edge.db
    conn = connect(cfg.db_path, cfg.store)
    ids = id_index.TieredIds(conn, direct_below=0)
    assert ids.recent_rows == 0
    conn.close()
    ids.rolled_back(conn)  # every query now raises sqlite3.ProgrammingError
    assert ids.recent_rows >= 1, "lookups keep including the recent tier"

"""The raw table keeps each event's first arrival; hubs from before the version column are migrated.

A resent event (the same ``event_id`` in another batch) lands as a second row; ReplacingMergeTree
collapses the copies on merge. Which copy survives decides which hub day the event belongs to,
so it must be the first arrival, and never change once the day is over.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore

DAY = 86_400_000
T0 = 1_796_000_000_000  # 2026-11-29

# The events table as hubs created it before 2026-12-06: no version, the last copy survived.
OLD_EVENTS_DDL = """CREATE TABLE edgekite.events (
    event_id UUID, edge_id LowCardinality(String), batch_id String,
    observed_at DateTime64(3, 'UTC'), received_at DateTime64(3, 'UTC'), hub_received_at DateTime64(3, 'UTC'),
    source_type LowCardinality(String), source_id LowCardinality(String), category LowCardinality(String),
    type LowCardinality(String), severity LowCardinality(String), source_seq Nullable(UInt64),
    correlation_id Nullable(String), session_id Nullable(String), incident_id Nullable(String),
    data String CODEC(ZSTD(3)), attachments String, source_version Nullable(String),
    source_metadata String CODEC(ZSTD(3)), schema_version LowCardinality(String), pii UInt8,
    retention_class LowCardinality(String), flags UInt8, visitor_id UInt64 DEFAULT 0
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (category, source_id, type, observed_at, event_id)
SETTINGS non_replicated_deduplication_window = 1000"""


def _uuid(i: int) -> str:
    return f"00000000-0000-7000-8000-{i:012d}"


def _insert(store: HubStore, rows: list[tuple[int, str, int]]) -> None:
    """rows: (event number, batch id, hub_received_at ms); one INSERT, so one part."""
    values = ", ".join(
        f"('{_uuid(i)}', 'edge-a', '{batch}', fromUnixTimestamp64Milli({T0 - DAY + i}, 'UTC'),"
        f" fromUnixTimestamp64Milli({T0 - DAY + i + 5}, 'UTC'), fromUnixTimestamp64Milli({hub}, 'UTC'),"
        f" 'sensor', 'sensor-1', 'iot', 'reading', 'info', '{{}}', '[]', '{{}}', '1', 0, 'standard', 0)"
        for i, batch, hub in rows
    )
    store.command(
        "INSERT INTO edgekite.events (event_id, edge_id, batch_id, observed_at, received_at,"
        " hub_received_at, source_type, source_id, category, type, severity, data, attachments,"
        f" source_metadata, schema_version, pii, retention_class, flags) VALUES {values}"
    )


def _surviving(store: HubStore) -> dict[str, tuple[str, int]]:
    """event_id -> (batch_id, hub_received_at ms) of every stored copy left after a full merge."""
    store.command("OPTIMIZE TABLE edgekite.events FINAL")
    rows = store.query_rows(
        "SELECT toString(event_id), batch_id, toUnixTimestamp64Milli(hub_received_at) FROM edgekite.events"
    )
    assert len({r[0] for r in rows}) == len(rows), "copies left after OPTIMIZE FINAL"
    return {r[0]: (r[1], int(r[2])) for r in rows}


def _open(data_dir: Path) -> HubStore:
    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(data_dir)}}))
    store.open()
    return store


def _engine(store: HubStore) -> str:
    rows = store.query_rows(
        "SELECT engine_full FROM system.tables WHERE database = 'edgekite' AND name = 'events'"
    )
    return str(rows[0][0])


def test_a_later_copy_never_replaces_the_first_arrival(tmp_path: Path) -> None:
    store = _open(tmp_path / "hub")
    try:
        assert _engine(store).startswith("ReplacingMergeTree(first_arrival_ver)")
        _insert(store, [(1, "b1", T0), (2, "b1", T0)])
        _insert(store, [(1, "b9", T0 + 3 * DAY)])  # event 1 again, three days later
        # An earlier arrival inserted after a later one (out of order) still wins.
        _insert(store, [(3, "b8", T0 + 2 * DAY)])
        _insert(store, [(3, "b2", T0 + DAY)])
        assert _surviving(store) == {
            _uuid(1): ("b1", T0),
            _uuid(2): ("b1", T0),
            _uuid(3): ("b2", T0 + DAY),
        }
    finally:
        store.close()


def test_an_old_hub_is_migrated_in_place_with_its_rows(tmp_path: Path) -> None:
    from chdb import session

    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    old = session.Session(str(data_dir))  # type: ignore[no-untyped-call]
    old.query("CREATE DATABASE edgekite")
    old.query(OLD_EVENTS_DDL)
    old.close()

    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(data_dir)}}))
    # Fill the old table through the store's own session before the migration runs.
    store._open_chdb()
    _insert(store, [(i, "b1", T0) for i in range(1, 101)])
    _insert(store, [(1, "b5", T0 + 2 * DAY), (101, "b5", T0 + 2 * DAY)])  # a resent event, a new one
    assert not _engine(store).startswith("ReplacingMergeTree(first_arrival_ver)")
    store.close()

    store = _open(data_dir)  # the migration runs here
    try:
        assert _engine(store).startswith("ReplacingMergeTree(first_arrival_ver)")
        names = store.query_rows("SELECT name FROM system.tables WHERE database = 'edgekite'")
        tables = {r[0] for r in names}
        assert "events_first_arrival" not in tables
        # Every stored row moved, copies included (nothing merged or lost on the way).
        assert store.query_rows("SELECT count(), uniqExact(event_id) FROM edgekite.events") == [(102, 101)]
        # The old rows read the site column by its default (here: the source, as they name none).
        assert store.query_rows("SELECT DISTINCT site FROM edgekite.events") == [("sensor-1",)]
        # The resent event's first arrival survives the merge, as on a new hub.
        _insert(store, [(2, "b7", T0 + 3 * DAY)])
        survivors = _surviving(store)
        assert len(survivors) == 101
        assert survivors[_uuid(1)] == ("b1", T0)
        assert survivors[_uuid(2)] == ("b1", T0)
        assert survivors[_uuid(101)] == ("b5", T0 + 2 * DAY)
    finally:
        store.close()

    store = _open(data_dir)  # a second start finds nothing to migrate
    try:
        assert store.query_rows("SELECT count() FROM edgekite.events") == [(101,)]
    finally:
        store.close()


@pytest.mark.parametrize("partitions", [[], ["202611"], ["202611", "202612"]])
def test_the_migration_attaches_every_partition_and_swaps_atomically(partitions: list[str]) -> None:
    from edgekite.hubstore.schema import events_migration

    stmts = events_migration("edgekite", 1000, partitions)
    attaches = [s for s in stmts if "ATTACH PARTITION" in s]
    assert [s.split("'")[1] for s in attaches] == partitions
    exchange = stmts.index("EXCHANGE TABLES edgekite.events AND edgekite.events_first_arrival")
    assert all(stmts.index(a) < exchange for a in attaches)
    assert stmts[-1].startswith("DROP TABLE edgekite.events_first_arrival")

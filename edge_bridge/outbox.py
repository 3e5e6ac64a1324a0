"""The outbox: which of edge.db's rows the hub has, which batches are out, and their rows.

State is two watermarks over the events' rowids (arrival order) plus one row per batch in
flight, all in edge.db, so it survives any restart and is written once per batch. Reads use a
reader connection; writes are jobs for the store's one writer thread (``EdgeStore.run_write``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from edgekite.store.rows import EVENT_COLUMNS


@dataclass(frozen=True)
class PendingBatch:
    """A batch formed and recorded, not yet acknowledged by the hub."""

    batch_no: int
    batch_id: str
    first_seq: int
    last_seq: int
    events: int
    withheld: dict[str, int]
    created_at: int


@dataclass(frozen=True)
class OutboxState:
    store_id: str
    formed_to: int
    synced_to: int
    pending: list[PendingBatch]


def _counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def load_state(conn: sqlite3.Connection) -> OutboxState:
    (store_id,) = conn.execute("SELECT value FROM config WHERE key = 'store_id'").fetchone()
    pending = [
        PendingBatch(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), r[6])
        for r in conn.execute(
            "SELECT batch_no, batch_id, first_seq, last_seq, events, withheld, created_at "
            "FROM sync_batches ORDER BY batch_no"
        )
    ]
    return OutboxState(
        str(store_id), _counter(conn, "sync_formed_to"), _counter(conn, "sync_synced_to"), pending
    )


def read_rows(conn: sqlite3.Connection, first_seq: int, last_seq: int, limit: int) -> list[tuple[Any, ...]]:
    """Rows ``first_seq <= rowid <= last_seq`` in order, as ``(rowid, *EVENT_COLUMNS)``."""
    return conn.execute(
        f"SELECT rowid, {EVENT_COLUMNS} FROM events WHERE rowid >= ? AND rowid <= ? ORDER BY rowid LIMIT ?",
        (first_seq, last_seq, limit),
    ).fetchall()


def oldest_unsynced(conn: sqlite3.Connection, synced_to: int) -> tuple[int, int | None]:
    """(backlog, received_at of the oldest unsynced event). A rowid range scan: no flag index."""
    (n,) = conn.execute("SELECT count(*) FROM events WHERE rowid > ?", (synced_to,)).fetchone()
    row = conn.execute(
        "SELECT received_at FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1", (synced_to,)
    ).fetchone()
    return int(n), (int(row[0]) if row else None)


def pii_hash_key(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM config WHERE key = 'sync_pii_key'").fetchone()
    return str(row[0]) if row else None


# -- writer jobs: run by ``EdgeStore.run_write`` inside the writer's own transaction ----------


def record_batch(
    conn: sqlite3.Connection, batch: PendingBatch, withheld_pii: int, withheld_short: int
) -> None:
    """A batch is recorded before it is first sent, so a restart resends the very same batch."""
    conn.execute(
        "INSERT INTO sync_batches (batch_no, batch_id, first_seq, last_seq, events, withheld, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            batch.batch_no,
            batch.batch_id,
            batch.first_seq,
            batch.last_seq,
            batch.events,
            orjson.dumps(batch.withheld).decode(),
            batch.created_at,
        ),
    )
    conn.execute("UPDATE counters SET value = ? WHERE name = 'sync_formed_to'", (batch.last_seq,))
    if withheld_pii:
        conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'sync_withheld_pii'", (withheld_pii,)
        )
    if withheld_short:
        conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'sync_withheld_short'", (withheld_short,)
        )


def complete_batch(conn: sqlite3.Connection, batch_id: str) -> int | None:
    """The hub acknowledged ``batch_id``: forget it, move the synced watermark. Returns it (None if
    the batch was already completed: a duplicate ack)."""
    row = conn.execute("SELECT events FROM sync_batches WHERE batch_id = ?", (batch_id,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM sync_batches WHERE batch_id = ?", (batch_id,))
    conn.execute("UPDATE counters SET value = value + ? WHERE name = 'sync_events_synced'", (row[0],))
    first = conn.execute("SELECT min(first_seq) FROM sync_batches").fetchone()[0]
    synced = int(first) - 1 if first is not None else _counter(conn, "sync_formed_to")
    conn.execute("UPDATE counters SET value = ? WHERE name = 'sync_synced_to'", (synced,))
    return synced


def ensure_pii_key(conn: sqlite3.Connection, key: str) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO config (key, value, updated_at) VALUES ('sync_pii_key', ?, 0)", (key,)
    )


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        str(name): int(value)
        for name, value in conn.execute("SELECT name, value FROM counters WHERE name LIKE 'sync_%'")
    }

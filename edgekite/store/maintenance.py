"""Retention, the size cap and WAL control: small steps the writer runs between batches.

Every step touches a bounded number of rows, so ingest waits at most one step (a few tens of
milliseconds) and never a whole cleanup. Rows are in arrival (rowid) order and ``received_at``
is the edge's own clock, so "older than N days" is a rowid range found by binary search,
without an index of its own.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from edgekite.config import RetentionSection
from edgekite.envelope import RETENTION_CLASSES

log = logging.getLogger(__name__)


@dataclass
class RetentionState:
    """Per class, the rowid below which retention has already looked."""

    scanned_to: dict[str, int] = field(default_factory=dict)


def last_rowid_received_before(conn: sqlite3.Connection, cutoff_ms: int) -> int:
    """The largest rowid whose row arrived before ``cutoff_ms`` (0 if none).

    Relies on rowids growing with received_at (one writer, stamping as it goes); a clock
    jump only makes this conservative, since deletes re-check received_at.
    """
    first = conn.execute("SELECT rowid, received_at FROM events ORDER BY rowid LIMIT 1").fetchone()
    if first is None or first[1] >= cutoff_ms:
        return 0
    (hi,) = conn.execute("SELECT max(rowid) FROM events").fetchone()
    # P(x): the first row at or after rowid x arrived before the cutoff. P(first) holds and
    # P only turns from true to false, so search the largest x where it holds.
    lo = first[0]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        row = conn.execute(
            "SELECT received_at FROM events WHERE rowid >= ? ORDER BY rowid LIMIT 1", (mid,)
        ).fetchone()
        if row is not None and row[0] < cutoff_ms:
            lo = mid
        else:
            hi = mid - 1
    (found,) = conn.execute(
        "SELECT rowid FROM events WHERE rowid >= ? ORDER BY rowid LIMIT 1", (lo,)
    ).fetchone()
    return int(found)


def synced_to(conn: sqlite3.Connection) -> int:
    """Every event at or below this rowid is at the hub (or was withheld from it on purpose)."""
    row = conn.execute("SELECT value FROM counters WHERE name = 'sync_synced_to'").fetchone()
    return int(row[0]) if row else 0


def retention_step(
    conn: sqlite3.Connection,
    cfg: RetentionSection,
    now_ms: int,
    state: RetentionState,
    *,
    keep_unsynced: bool = False,
) -> tuple[int, bool]:
    """Delete at most a window of expired rows per retention class. Returns (deleted, more_to_do).

    With ``keep_unsynced`` (hub sync on), age never deletes an event the hub has not
    acknowledged: an edge offline for longer than a retention period keeps its backlog (the
    size cap still bounds the disk, and counts what it drops unsynced).
    """
    deleted = 0
    more = False
    window = cfg.chunk_rows * 4
    keep_above = synced_to(conn) if keep_unsynced else None
    newest = _newest_rowid(conn)
    for cls in RETENTION_CLASSES:
        cutoff = now_ms - int(cfg.days_for(cls) * 86_400_000)
        upper = min(last_rowid_received_before(conn, cutoff), newest - 1)
        if keep_above is not None:
            upper = min(upper, keep_above)
        lower = state.scanned_to.get(cls, 0)
        if upper <= lower:
            continue
        end = min(upper, lower + window)
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "DELETE FROM events WHERE rowid > ? AND rowid <= ? "
                "AND retention_class = ? AND received_at < ?",
                (lower, end, cls, cutoff),
            )
            _count_deleted(conn, cur.rowcount)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        deleted += cur.rowcount
        state.scanned_to[cls] = end
        more = more or end < upper
    return deleted, more


def _newest_rowid(conn: sqlite3.Connection) -> int:
    """Deletes always spare the newest row: an emptied rowid table would hand out rowid 1 again,
    and the outbox's watermarks rely on rowids never going back."""
    (top,) = conn.execute("SELECT max(rowid) FROM events").fetchone()
    return int(top or 0)


def _count_deleted(conn: sqlite3.Connection, n: int) -> None:
    if n:
        conn.execute("UPDATE counters SET value = value - ? WHERE name = 'events_stored'", (n,))


def live_bytes(conn: sqlite3.Connection) -> int:
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int((pages - free) * page_size)


def size_cap_step(
    conn: sqlite3.Connection, cfg: RetentionSection, *, count_unsynced: bool = False
) -> tuple[int, bool]:
    """Over the cap, delete the oldest events, one chunk. Returns (deleted, still_over).

    The disk bound wins over the backlog: unsynced events go too when they are the oldest,
    and ``sync_dropped_unsynced`` counts them so the loss is visible, not silent.
    """
    if live_bytes(conn) <= cfg.max_db_bytes:
        return 0, False
    newest = _newest_rowid(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if count_unsynced:
            (dropped,) = conn.execute(
                "SELECT count(*) FROM (SELECT rowid FROM events WHERE rowid < ? ORDER BY rowid LIMIT ?) "
                "WHERE rowid > ?",
                (newest, cfg.chunk_rows, synced_to(conn)),
            ).fetchone()
            if dropped:
                conn.execute(
                    "UPDATE counters SET value = value + ? WHERE name = 'sync_dropped_unsynced'", (dropped,)
                )
                log.warning("size cap: deleting %d events the hub has not received", dropped)
        cur = conn.execute(
            "DELETE FROM events WHERE rowid IN "
            "(SELECT rowid FROM events WHERE rowid < ? ORDER BY rowid LIMIT ?)",
            (newest, cfg.chunk_rows),
        )
        _count_deleted(conn, cur.rowcount)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if cur.rowcount == 0:
        log.warning("edge.db is over its size cap with no events left to delete; other tables hold the space")
        return 0, False
    return cur.rowcount, live_bytes(conn) > cfg.max_db_bytes


def prune_side_tables(
    conn: sqlite3.Connection, cfg: RetentionSection, now_ms: int, fingerprint_hours: float
) -> None:
    """Dead letters, fingerprints and rollups expire too (rollups live as long as 'long' events)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "DELETE FROM dead_letter WHERE received_at < ?",
            (now_ms - int(cfg.dead_letter_days * 86_400_000),),
        )
        conn.execute(
            "DELETE FROM fingerprints WHERE received_at < ?", (now_ms - int(fingerprint_hours * 3_600_000),)
        )
        conn.execute(
            "DELETE FROM hourly_counts WHERE hour_bucket < ?",
            ((now_ms - int(cfg.long_days * 86_400_000)) // 3_600_000,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def release_free_pages(conn: sqlite3.Connection, max_pages: int = 2048) -> None:
    """Give freed pages back to the file system a little at a time (auto_vacuum=INCREMENTAL)."""
    conn.execute(f"PRAGMA incremental_vacuum({int(max_pages)})").fetchall()


def wal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def wal_bytes(db_path: Path) -> int:
    try:
        return wal_path(db_path).stat().st_size
    except FileNotFoundError:
        return 0


def checkpoint(conn: sqlite3.Connection, *, truncate: bool) -> tuple[int, int, int]:
    """Copy the WAL back into the database; TRUNCATE also shrinks the WAL file to zero."""
    mode = "TRUNCATE" if truncate else "PASSIVE"
    busy, log_frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return int(busy), int(log_frames), int(done)

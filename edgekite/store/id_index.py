"""The ``event_id`` index in two tiers, so random producer ids do not dirty the whole index.

Producers do send random UUIDv4 ids. With one B-tree over every id, a batch of 1,000 random
ids lands on ~1,000 different leaf pages once the store holds a million events: every commit
writes ~4 MB of index pages to the WAL, and the checkpoint copies them back again (measured:
the writer alone fell to ~20,000 events/s at 1.2M stored, against ~37,000 with UUIDv7 ids).

So new random ids go to ``recent_ids``, a small tier that stays in the page cache, and each
transaction moves one key range of it (1/``MERGE_CHUNKS`` of the id space) into
``event_ids``, the big tier. A range move inserts many sorted ids into the same few leaf
pages, so each page of the big tier is written about once per cycle instead of once per id.
Time-ordered ids (UUIDv7) are local already and go straight to the big tier.

Both tiers map ``event_id -> events.rowid``; an id is in exactly one of them while its row
exists (the writer checks both before inserting; a trigger removes the id when the row is
deleted). The duplicate guarantee is unchanged: a replayed ``event_id`` is found in whichever
tier holds it, however old.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from edgekite.store.in_list import MAX_IN, padded_in

# Ranges the id space is cut into; one is moved per transaction. More ranges: fewer big-tier
# pages per move, a larger recent tier. Measured on 1.2M rows with bench/sqlite_id_tiers.py
# (bench/README-issue4.md): 16 clearly slower, 32 and 64 alike, 128 not better in a long run.
MERGE_CHUNKS = 64


# The rowid of the event holding ``?1``, from whichever tier has it.
ROWID_OF_ID = (
    "(SELECT rid FROM recent_ids WHERE event_id = ?1 UNION ALL SELECT rid FROM event_ids WHERE event_id = ?1)"
)


def chunk_bounds(chunk: int, chunks: int = MERGE_CHUNKS) -> tuple[bytes, bytes | None]:
    """The id range ``[low, high)`` of merge chunk ``chunk`` (``high`` None: to the end).

    Ranges split on the first byte, which is uniform for the random ids this tier holds
    (time-ordered ids skip it), so each move carries about the same number of ids.
    """
    if not 0 <= chunk < chunks:
        raise ValueError(f"chunk {chunk} not in 0..{chunks - 1}")
    low = bytes([chunk * 256 // chunks]) if chunk else b""
    high = bytes([(chunk + 1) * 256 // chunks]) if chunk + 1 < chunks else None
    return low, high


def stored_ids(
    conn: sqlite3.Connection, ids: Sequence[bytes], tables: Sequence[str] = ("recent_ids", "event_ids")
) -> set[bytes]:
    """Those of ``ids`` some stored event already has (in the tiers named)."""
    found: set[bytes] = set()
    for start in range(0, len(ids), MAX_IN):
        marks, params = padded_in(ids[start : start + MAX_IN], b"")  # b"": never an id
        for table in tables:
            query = f"SELECT event_id FROM {table} WHERE event_id IN ({marks})"
            found.update(r[0] for r in conn.execute(query, params))
    return found


def is_time_ordered(event_id: bytes) -> bool:
    """A UUIDv7: its leading bits are a timestamp, so new ones sort next to each other."""
    return len(event_id) == 16 and event_id[6] >> 4 == 7


def split_by_tier(
    pairs: Iterable[tuple[bytes, int]], *, all_direct: bool = False
) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    """``(event_id, rowid)`` pairs as (for the big tier, for the recent tier).

    Time-ordered ids go straight to the big tier, where they land on its last few pages
    anyway; a detour through the recent tier would only cost them two more B-tree writes.
    Random ids go to the recent tier (sorted, so each insert lands next to the one before),
    unless ``all_direct``.
    """
    direct: list[tuple[bytes, int]] = []
    scattered: list[tuple[bytes, int]] = []
    for pair in pairs:
        (direct if all_direct or is_time_ordered(pair[0]) else scattered).append(pair)
    scattered.sort()
    return direct, scattered


def _insert(conn: sqlite3.Connection, table: str, pairs: list[tuple[bytes, int]], *, or_ignore: bool) -> int:
    if not pairs:
        return 0
    before = conn.total_changes
    verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
    conn.executemany(f"{verb} INTO {table} (event_id, rid) VALUES (?, ?)", pairs)
    return conn.total_changes - before


def add_new(conn: sqlite3.Connection, pairs: Iterable[tuple[bytes, int]], *, all_direct: bool = False) -> int:
    """Index new events (ids known not to be stored). Returns how many went to the recent tier."""
    direct, scattered = split_by_tier(pairs, all_direct=all_direct)
    _insert(conn, "event_ids", direct, or_ignore=False)
    return _insert(conn, "recent_ids", scattered, or_ignore=False)


def direct_below(cache_mb: int) -> int:
    """Events stored below which random ids skip the recent tier: the big tier (~32 B an id
    with its B-tree overhead) still fits in the writer's page cache."""
    return cache_mb * 2**20 // 32


class TieredIds:
    """The writer's side of the index: where new ids go, where to look, which range moves next.

    While the store is small enough for the big tier to sit in the page cache, random inserts
    into it cost no more than into the recent tier, so the detour would be pure overhead (in one
    pair of runs it took single-envelope MQTT ingest on a fresh store from 0.73 to 0.60 of the
    bare subscriber's rate): ids go straight in until ``direct_below`` events are stored. An
    empty recent tier is not looked in.
    """

    def __init__(self, conn: sqlite3.Connection, direct_below: int) -> None:
        self.direct_below = direct_below
        self.events = self._count_events(conn)
        self.recent_rows = self._count_recent(conn)  # an upper bound: deletes lower it unseen
        self.next_chunk = 0

    @staticmethod
    def _count_events(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM counters WHERE name = 'events_stored'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _count_recent(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM recent_ids").fetchone()[0])

    def stored(self, conn: sqlite3.Connection, ids: Sequence[bytes]) -> set[bytes]:
        return stored_ids(conn, ids, ("event_ids",) if self.recent_rows == 0 else ("recent_ids", "event_ids"))

    def add_if_all_new(self, conn: sqlite3.Connection, pairs: Sequence[tuple[bytes, int]]) -> bool:
        """Index ``pairs`` if none of their ids is stored or repeated; False (with some of them
        perhaps written: roll back) otherwise.

        The unique keys of the tier each id goes to do that tier's checking as they insert, so
        only the other tier is looked in: a random id's big tier, a direct id's recent tier
        (when it has anything).
        """
        direct, scattered = split_by_tier(pairs, all_direct=self.events < self.direct_below)
        if scattered:
            if stored_ids(conn, [eid for eid, _ in scattered], ("event_ids",)):
                return False
            self.recent_rows += len(scattered)  # before the insert: an overcount is harmless
            if _insert(conn, "recent_ids", scattered, or_ignore=True) != len(scattered):
                return False
        if direct:
            if self.recent_rows and stored_ids(conn, [eid for eid, _ in direct], ("recent_ids",)):
                return False
            if _insert(conn, "event_ids", direct, or_ignore=True) != len(direct):
                return False
        self.events += len(pairs)
        return True

    def add(self, conn: sqlite3.Connection, pairs: Sequence[tuple[bytes, int]]) -> None:
        self.recent_rows += add_new(conn, pairs, all_direct=self.events < self.direct_below)
        self.events += len(pairs)

    def merge(self, conn: sqlite3.Connection) -> None:
        """Move the next id range to the big tier (call once per transaction)."""
        if self.recent_rows == 0:
            return
        merge_chunk(conn, self.next_chunk)
        self.next_chunk = (self.next_chunk + 1) % MERGE_CHUNKS
        if self.next_chunk == 0:  # a full cycle: recount, so deleted rows stop counting
            self.recent_rows = self._count_recent(conn)

    def rolled_back(self, conn: sqlite3.Connection) -> None:
        """The transaction did not commit: what this object counted in it did not happen."""
        try:
            self.recent_rows = self._count_recent(conn)
            self.events = self._count_events(conn)
        except sqlite3.Error:  # the database is failing: keep looking in the recent tier
            self.recent_rows = max(self.recent_rows, 1)


def merge_chunk(conn: sqlite3.Connection, chunk: int, chunks: int = MERGE_CHUNKS) -> int:
    """Move one id range from the recent tier to the big one, in id order. Returns ids moved."""
    low, high = chunk_bounds(chunk, chunks)
    where, params = "event_id >= ?", [low]
    if high is not None:
        where, params = "event_id >= ? AND event_id < ?", [low, high]
    before = conn.total_changes
    conn.execute(
        f"INSERT INTO event_ids (event_id, rid) SELECT event_id, rid FROM recent_ids WHERE {where} "
        "ORDER BY event_id",
        params,
    )
    moved = conn.total_changes - before
    if moved:
        conn.execute(f"DELETE FROM recent_ids WHERE {where}", params)
    return moved

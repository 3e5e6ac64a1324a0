"""Per-edge daily figures for the fleet drill-down, closed hub days computed once.

An event counts on the hub day of its first arrival (``edge_first_arrivals_sql``). Once a hub
day is over, and every insert stamped with it has landed, its rows cannot change: later copies
are later, and the table's merges keep the first copy. So ``/api/fleet/{edge_id}`` over 30 days
asks ClickHouse only for the two partial days at the ends of the period; the whole days between
come from this cache (and, across restarts, from the ``fleet_days`` table), computed by one
query the first time they are asked for. That is what keeps the drill-down under 500 ms on an
edge with 4.4M events in 30 days (the exact deduplication of every one of them costs more than
that on two cores).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from edgekite.hubstore import HubStore
from edgekite.hubstore.arrow import FLEET_DAYS_SCHEMA, table_from_rows
from edgekite.hubstore.backend import StorageError
from hub_api.analytics_queries import DAY_MS

log = logging.getLogger(__name__)

# A hub day counts as closed this long after it ended: ``hub_received_at`` is stamped when the
# hub takes a batch, and the insert of a (grouped) batch lands seconds later, not minutes.
CLOSE_AFTER_MS = 15 * 60_000

Row = tuple[Any, ...]

# What the cached rows mean: change it whenever ``edge_first_arrivals_sql`` counts differently,
# so rows stored by an older release are not served as today's figures.
DEFINITION = "first-arrival-1"


@dataclass(frozen=True)
class DaysPlan:
    """Whole hub days served from the cache and the ranges ``[a, b)`` queried every time."""

    closed_days: tuple[int, ...]
    live: tuple[tuple[int, int], ...]


def plan_days(from_ms: int, to_ms: int, now_ms: int, close_after_ms: int = CLOSE_AFTER_MS) -> DaysPlan:
    """Split ``[from_ms, to_ms)`` into closed whole UTC days and the live ranges around them."""
    first = -(-from_ms // DAY_MS) * DAY_MS  # the first midnight at or after from
    end = (min(to_ms, now_ms - close_after_ms) // DAY_MS) * DAY_MS  # the last closed midnight
    if end <= first:
        return DaysPlan((), ((from_ms, to_ms),))
    live = []
    if from_ms < first:
        live.append((from_ms, first))
    if end < to_ms:
        live.append((end, to_ms))
    return DaysPlan(tuple(range(first, end, DAY_MS)), tuple(live))


class EdgeDaysCache:
    """Rows of closed hub days per (database, edge, day), least recently used dropped beyond a
    bound on the rows held.

    A day holds one row per (day of the edge's clock, source) plus the lag row: ~21 rows for an
    edge with 18 sources, ~430 bytes each as Python tuples. The default bound, 100,000 rows, is
    therefore ~40 MB at most: 30 days of ~150 such edges. Nothing evicts on data changes because
    closed days do not change. Behind it, :class:`FleetDaysTable` keeps them across restarts.
    """

    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = max_rows
        self._days: OrderedDict[tuple[str, str, int], tuple[Row, ...]] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._days)

    @property
    def rows(self) -> int:
        return self._rows

    def get(self, db: str, edge_id: str, day: int) -> tuple[Row, ...] | None:
        with self._lock:
            rows = self._days.get((db, edge_id, day))
            if rows is None:
                self.misses += 1
                return None
            self._days.move_to_end((db, edge_id, day))
            self.hits += 1
            return rows

    def put(self, db: str, edge_id: str, day: int, rows: Sequence[Row]) -> None:
        key = (db, edge_id, day)
        with self._lock:
            old = self._days.pop(key, None)
            if old is not None:
                self._rows -= len(old)
            self._days[key] = tuple(rows)
            self._rows += len(rows)
            while self._rows > self.max_rows and len(self._days) > 1:
                _, dropped = self._days.popitem(last=False)
                self._rows -= len(dropped)


class DaysBacking(Protocol):
    """Where closed days outlive the process (:class:`FleetDaysTable`)."""

    def load(self, edge_id: str, days: Sequence[int]) -> dict[int, list[Row]]: ...

    def save(self, edge_id: str, days: dict[int, list[Row]]) -> None: ...


class FleetDaysTable:
    """The closed days in the hub's ``fleet_days`` table, as JSON rows per (edge, day).

    Rows are keyed by :data:`DEFINITION` and by the UUID of the ``events`` table they were
    computed from: a recreated or migrated ``events`` table (a restore, the first-arrival
    migration) has a new UUID, so nothing computed from the old one is served. Storage errors
    are logged and the figures computed live: the table only saves work.
    """

    def __init__(self, store: HubStore) -> None:
        self.store = store

    def _events_table(self) -> str:
        rows = self.store.query_rows(
            "SELECT toString(uuid) FROM system.tables WHERE database = {db:String} AND name = 'events'",
            {"db": self.store.database},
        )
        return str(rows[0][0]) if rows else ""

    def load(self, edge_id: str, days: Sequence[int]) -> dict[int, list[Row]]:
        try:
            stored = self.store.query_rows(
                f"SELECT hub_day, rows FROM {self.store.table('fleet_days')} FINAL"
                " WHERE definition = {definition:String} AND events_table = {events:String}"
                " AND edge_id = {edge_id:String} AND hub_day IN {days:Array(Int64)}",
                {
                    "definition": DEFINITION,
                    "events": self._events_table(),
                    "edge_id": edge_id,
                    "days": list(days),
                },
            )
        except StorageError as exc:
            log.warning("fleet_days: cannot read the stored days of %s: %s", edge_id, exc)
            return {}
        return {int(day): [tuple(r) for r in orjson.loads(rows)] for day, rows in stored}

    def save(self, edge_id: str, days: dict[int, list[Row]]) -> None:
        if not days:
            return
        now = time.time_ns() // 1_000_000
        try:
            events = self._events_table()
            rows = [
                (DEFINITION, events, edge_id, day, orjson.dumps(day_rows).decode(), now)
                for day, day_rows in days.items()
            ]
            self.store.insert_arrow("fleet_days", table_from_rows(FLEET_DAYS_SCHEMA, rows))
        except StorageError as exc:
            log.warning("fleet_days: cannot store the days of %s: %s", edge_id, exc)


def edge_day_rows(
    cache: EdgeDaysCache,
    query: Callable[[int, int], list[Row]],
    db: str,
    edge_id: str,
    plan: DaysPlan,
    backing: DaysBacking | None = None,
) -> list[Row]:
    """Rows ``(kind, hub_day, day, source, events, quantiles, last_seen)`` for the whole plan.

    ``query(a, b)`` runs ``edge_first_arrivals_sql`` over ``[a, b)``. Closed days come from the
    cache, else from ``backing``, else are computed in one query over the span of the missing
    ones and stored in both, empty days included (an edge that sent nothing that day is an
    answer too). The live ranges are queried each time.
    """
    have: dict[int, tuple[Row, ...]] = {}
    missing = []
    for day in plan.closed_days:
        rows = cache.get(db, edge_id, day)
        if rows is None:
            missing.append(day)
        else:
            have[day] = rows
    if missing and backing is not None:
        for day, day_rows in backing.load(edge_id, missing).items():
            cache.put(db, edge_id, day, day_rows)
            have[day] = tuple(day_rows)
        missing = [day for day in missing if day not in have]
    if missing:
        span_from, span_to = missing[0], missing[-1] + DAY_MS
        fresh: dict[int, list[Row]] = {day: [] for day in range(span_from, span_to, DAY_MS)}
        for row in query(span_from, span_to):
            fresh.setdefault(int(row[1]), []).append(row)
        for day, day_rows in fresh.items():
            cache.put(db, edge_id, day, day_rows)
            have[day] = tuple(day_rows)
        if backing is not None:
            backing.save(edge_id, {day: fresh[day] for day in missing})
    out: list[Row] = []
    for day in plan.closed_days:
        out.extend(have[day])
    for a, b in plan.live:
        out.extend(query(a, b))
    return out

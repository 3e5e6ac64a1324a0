"""Per-edge daily figures for the fleet drill-down, closed hub days computed once.

An event counts on the hub day of its first arrival (``edge_first_arrivals_sql``). Once a hub
day is over, and every insert stamped with it has landed, its rows cannot change: later copies
are later, and the table's merges keep the first copy. So ``/api/fleet/{edge_id}`` over 30 days
asks ClickHouse only for the two partial days at the ends of the period; the whole days between
come from this cache, filled by one query the first time they are asked for. That is what keeps
the drill-down under 500 ms on an edge with 4.4M events in 30 days (the exact deduplication of
every one of them costs more than that on two cores).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DAY_MS = 86_400_000

# A hub day counts as closed this long after it ended: ``hub_received_at`` is stamped when the
# hub takes a batch, and the insert of a (grouped) batch lands seconds later, not minutes.
CLOSE_AFTER_MS = 15 * 60_000

Row = tuple[Any, ...]


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
    closed days do not change; a hub whose tables were dropped or restored must be restarted (the
    cache lives in the process only).
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


def edge_day_rows(
    cache: EdgeDaysCache,
    query: Callable[[int, int], list[Row]],
    db: str,
    edge_id: str,
    plan: DaysPlan,
) -> list[Row]:
    """Rows ``(kind, hub_day, day, source, events, quantiles, last_seen)`` for the whole plan.

    ``query(a, b)`` runs ``edge_first_arrivals_sql`` over ``[a, b)``. The closed days missing from
    the cache are computed in one query over their span and stored, empty days included (an
    edge that sent nothing that day is an answer too); the live ranges are queried each time.
    """
    out: list[Row] = []
    have: dict[int, tuple[Row, ...]] = {}
    missing = []
    for day in plan.closed_days:
        rows = cache.get(db, edge_id, day)
        if rows is None:
            missing.append(day)
        else:
            have[day] = rows
    if missing:
        span_from, span_to = missing[0], missing[-1] + DAY_MS
        fresh: dict[int, list[Row]] = {day: [] for day in range(span_from, span_to, DAY_MS)}
        for row in query(span_from, span_to):
            fresh.setdefault(int(row[1]), []).append(row)
        for day, day_rows in fresh.items():
            cache.put(db, edge_id, day, day_rows)
            if day in plan.closed_days:
                have[day] = tuple(day_rows)
    for day in plan.closed_days:
        out.extend(have[day])
    for a, b in plan.live:
        out.extend(query(a, b))
    return out

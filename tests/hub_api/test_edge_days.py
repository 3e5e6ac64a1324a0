"""The fleet drill-down's daily figures: each event once, on the hub day it first arrived, with
closed days served from a cache that later copies, merges and other edges cannot make wrong.

Real chDB; rows inserted as the hub ingest would store them (one INSERT per batch).
Days: D0 = 2024-06-01 00:00 UTC; "now" is far later, so every whole day is closed.
"""

from __future__ import annotations

from typing import Any

from edgekite.hubstore import HubStore
from hub_api.analytics_queries import DAY_MS, edge_first_arrivals_sql
from hub_api.edge_days import CLOSE_AFTER_MS, DaysPlan, EdgeDaysCache, edge_day_rows, plan_days
from tests.hub_enrich.rawrows import insert_raw, raw_row

D0 = 1_717_200_000_000
H = 3_600_000
LATER = D0 + 100 * DAY_MS


def test_a_period_splits_into_closed_whole_days_and_live_ends() -> None:
    # 30 days from 04:00 to 04:00, now an hour later: 29 whole days cached, two partial days live.
    plan = plan_days(D0 + 4 * H, D0 + 30 * DAY_MS + 4 * H, D0 + 30 * DAY_MS + 5 * H)
    assert plan.closed_days == tuple(D0 + i * DAY_MS for i in range(1, 30))
    assert plan.live == ((D0 + 4 * H, D0 + DAY_MS), (D0 + 30 * DAY_MS, D0 + 30 * DAY_MS + 4 * H))
    # Midnight-aligned and long over: nothing live.
    assert plan_days(D0, D0 + 3 * DAY_MS, LATER) == DaysPlan((D0, D0 + DAY_MS, D0 + 2 * DAY_MS), ())
    # Yesterday is not closed until its last inserts can have landed.
    just_after = D0 + 2 * DAY_MS + CLOSE_AFTER_MS - 1
    assert plan_days(D0, D0 + 2 * DAY_MS, just_after) == DaysPlan((D0,), ((D0 + DAY_MS, D0 + 2 * DAY_MS),))
    # Less than a whole closed day: one live range.
    assert plan_days(D0 + H, D0 + 5 * H, LATER) == DaysPlan((), ((D0 + H, D0 + 5 * H),))


def _batch(store: HubStore, edge: str, hub_ms: int, events: list[int], source: str = "sensor-1") -> None:
    """One stored batch (one INSERT): event i was observed at D0 + i minutes, received 1 s later."""
    rows = [
        raw_row(
            category="iot",
            type="reading",
            source_id=source,
            observed_at=D0 + i * 60_000,
            received_at=D0 + i * 60_000 + 1000,
            hub_at=hub_ms,
            data={},
            edge=edge,
            event_id=f"00000000-0000-7000-8000-{i:012d}",
        )
        for i in events
    ]
    insert_raw(store, rows)


def _figures(store: HubStore, cache: EdgeDaysCache, plan: DaysPlan, edge: str = "edge-a") -> dict[str, Any]:
    """What the route shows: events per hub day (lag rows), per edge day and per source."""
    sql = edge_first_arrivals_sql(store.database)
    rows = edge_day_rows(
        cache,
        lambda a, b: store.query_rows(sql, {"edge_id": edge, "a": a, "b": b}),
        store.database,
        edge,
        plan,
    )
    per_hub_day = {int(r[1]): (int(r[4]), [int(x) for x in r[5]]) for r in rows if int(r[0]) == 1}
    per_source: dict[str, int] = {}
    for r in rows:
        if int(r[0]) == 0:
            per_source[str(r[3])] = per_source.get(str(r[3]), 0) + int(r[4])
    return {"hub_days": per_hub_day, "sources": per_source}


def test_each_event_counts_once_on_the_day_it_first_arrived(store: HubStore) -> None:
    _batch(store, "edge-a", D0 + 1 * DAY_MS + H, [1, 2, 3])
    _batch(store, "edge-a", D0 + 2 * DAY_MS + H, [4, 5, 1])  # event 1 again, a day later
    _batch(store, "edge-b", D0 + 1 * DAY_MS, [6])  # event 6 reached the hub first through edge-b
    _batch(store, "edge-a", D0 + 2 * DAY_MS + 2 * H, [6])
    plan = plan_days(D0, D0 + 4 * DAY_MS, LATER)
    got = _figures(store, EdgeDaysCache(), plan)
    lag = {i: D0 + DAY_MS + H - (D0 + i * 60_000) for i in (1, 2, 3)}
    assert got["hub_days"][D0 + DAY_MS] == (3, [lag[2], lag[1], lag[1]])  # exact p50/p95/p99
    assert got["hub_days"][D0 + 2 * DAY_MS][0] == 2  # 4 and 5; not 1 (a copy), not 6 (edge-b's)
    assert got["sources"] == {"sensor-1": 5}
    assert _figures(store, EdgeDaysCache(), plan, edge="edge-b")["sources"] == {"sensor-1": 1}


def test_closed_days_stay_right_after_late_copies_and_merges(store: HubStore) -> None:
    """Days 0-2 are cached while day 3 is still open; then copies of day-1 events arrive on day 3
    and the parts merge. The cached days plus the newly closed day 3, a fresh computation and a
    live-only one all agree. (With the old table, which kept the *last* copy, the merge left
    events 2 and 3 on day 3 only, and they were counted on day 1 and again on day 3.)"""
    _batch(store, "edge-a", D0 + DAY_MS + H, [1, 2, 3])
    _batch(store, "edge-a", D0 + 2 * DAY_MS + H, [4])
    cache = EdgeDaysCache()
    period = (D0, D0 + 4 * DAY_MS)
    early = plan_days(*period, now_ms=D0 + 3 * DAY_MS + H)
    assert early.closed_days == (D0, D0 + DAY_MS, D0 + 2 * DAY_MS)
    before = _figures(store, cache, early)
    assert before["sources"] == {"sensor-1": 4}
    assert len(cache) == 3  # the empty day 0 too

    _batch(store, "edge-a", D0 + 3 * DAY_MS + 2 * H, [2, 3, 7])  # 2 and 3 resent, 7 new
    store.command("OPTIMIZE TABLE edgekite.events FINAL")
    assert store.query_rows("SELECT count() FROM edgekite.events") == [(5,)]

    lag7 = D0 + 3 * DAY_MS + 2 * H - (D0 + 7 * 60_000)
    expected = {
        "hub_days": {**before["hub_days"], D0 + 3 * DAY_MS: (1, [lag7, lag7, lag7])},
        "sources": {"sensor-1": 5},
    }
    later = plan_days(*period, now_ms=LATER)
    assert _figures(store, cache, later) == expected  # days 0-2 from the cache
    assert cache.hits == 3
    assert _figures(store, EdgeDaysCache(), later) == expected
    assert _figures(store, EdgeDaysCache(), DaysPlan((), (period,))) == expected


def test_a_late_copy_of_an_event_does_not_count_in_the_live_day(store: HubStore) -> None:
    _batch(store, "edge-a", D0 + H, [1, 2])
    today = D0 + 5 * DAY_MS
    _batch(store, "edge-a", today + H, [2, 3])  # 2 resent today (its first copy is 5 days old)
    now = today + 2 * H
    plan = plan_days(D0, now, now)
    assert plan.live == ((today, now),)
    got = _figures(store, EdgeDaysCache(), plan)
    assert got["hub_days"][today][0] == 1
    assert got["sources"] == {"sensor-1": 3}


def test_the_vitals_of_a_thousand_sources_fit_in_one_query(store: HubStore) -> None:
    """The route asks for the newest heartbeat of each source it lists (at most 1,000)."""
    from hub_api.analytics_queries import edge_heartbeat_vitals_sql

    params: dict[str, Any] = {"edge_id": "edge-a"}
    for i in range(1000):
        params[f"s{i}"], params[f"t{i}"] = f"source-{i}", D0 + i
    assert store.query_rows(edge_heartbeat_vitals_sql(store.database, 1000), params) == []


def test_the_cache_drops_the_least_recently_used_days_beyond_its_row_bound() -> None:
    cache = EdgeDaysCache(max_rows=10)
    row = (0, D0, D0, "s", 1, [0, 0, 0], D0)
    for day in range(4):
        cache.put("db", "edge-a", D0 + day * DAY_MS, [row] * 3)
    assert (len(cache), cache.rows) == (3, 9)  # day 0 went first
    assert cache.get("db", "edge-a", D0) is None
    assert cache.get("db", "edge-a", D0 + DAY_MS) is not None  # now the most recently used
    cache.put("db", "edge-a", D0 + 9 * DAY_MS, [row] * 3)
    assert cache.get("db", "edge-a", D0 + 2 * DAY_MS) is None
    assert cache.get("db", "edge-a", D0 + DAY_MS) is not None
    cache.put("db", "edge-a", D0 + DAY_MS, [row])  # replacing a day re-counts its rows
    assert cache.rows == 7


def _counting(store: HubStore, edge: str = "edge-a") -> tuple[list[tuple[int, int]], Any]:
    sql = edge_first_arrivals_sql(store.database)
    calls: list[tuple[int, int]] = []

    def query(a: int, b: int) -> list[Any]:
        calls.append((a, b))
        return store.query_rows(sql, {"edge_id": edge, "a": a, "b": b})

    return calls, query


def test_closed_days_outlive_the_process_in_the_fleet_days_table(store: HubStore) -> None:
    from hub_api.edge_days import FleetDaysTable

    _batch(store, "edge-a", D0 + DAY_MS + H, [1, 2, 3])
    _batch(store, "edge-a", D0 + 2 * DAY_MS + H, [4, 1])
    plan = plan_days(D0, D0 + 4 * DAY_MS, LATER)
    table = FleetDaysTable(store)
    calls, query = _counting(store)
    first = edge_day_rows(EdgeDaysCache(), query, store.database, "edge-a", plan, table)
    assert calls == [(D0, D0 + 4 * DAY_MS)]

    # A restarted hub: an empty cache, the same table. Nothing is computed again.
    calls.clear()
    cache = EdgeDaysCache()
    again = edge_day_rows(cache, query, store.database, "edge-a", plan, FleetDaysTable(store))
    assert calls == []
    assert again == first
    assert len(cache) == 4  # loaded into the process's cache, empty days included
    assert sum(int(r[4]) for r in again if int(r[0]) == 0) == 4


def test_stored_days_of_a_replaced_events_table_are_not_served(store: HubStore) -> None:
    from edgekite.hubstore.schema import ddl
    from hub_api.edge_days import FleetDaysTable

    _batch(store, "edge-a", D0 + DAY_MS + H, [1, 2, 3])
    plan = plan_days(D0, D0 + 3 * DAY_MS, LATER)
    table = FleetDaysTable(store)
    calls, query = _counting(store)
    edge_day_rows(EdgeDaysCache(), query, store.database, "edge-a", plan, table)
    # The events table is replaced (a restore from a backup, say) by one holding other events.
    store.command("RENAME TABLE edgekite.events TO edgekite.events_old")
    for statement in ddl(store.config):
        store.command(statement)
    _batch(store, "edge-a", D0 + DAY_MS + H, [5])
    calls.clear()
    rows = edge_day_rows(EdgeDaysCache(), query, store.database, "edge-a", plan, table)
    assert calls == [(D0, D0 + 3 * DAY_MS)]
    assert sum(int(r[4]) for r in rows if int(r[0]) == 0) == 1

"""Hand-computed visits (issue 6's "Show"): exact numbers from web_visits / web_daily on real chDB.

The traffic, all on 2024-06-01 UTC (T0 = 00:00), times in minutes after T0:

site s1 (humans)
  A (visitor 101): /a1 @0, /a2 @29, /a3 @60     gaps 29 (same visit) and 31 (new visit)
                   -> visit 1: 2 page views, 1,740 s; visit 2: 1 page view (a bounce), 0 s
  B (visitor 102): /b1 @5                        -> 1 visit, a bounce
  D (visitor 105): /d1 @100, /d2 @130            gap of exactly 30 min: still one visit, 1,800 s
  C (visitor 103): /c1 @10, /c2 @20, /c3 @45     from edge-2, offline: stored two days later, in
                   the order @45, @10, @20       -> 1 visit, 3 page views, 2,100 s, entry /c1, exit /c3
site s1 (a bot)
  Googlebot (visitor 301): /x @0, /y @1, /z @2   -> 1 visit of 120 s, left out unless bots included
site s2
  A's browser (visitor 201): /a @1, /b @3        -> 1 visit, 2 page views, 120 s

Expected s1 (humans), before C arrives: page views 6, visitors 3, visits 4, bounces 2, 3,540 s.
After C: page views 9, visitors 4, visits 5, bounces 2, total duration 5,640 s.
With bots: page views 12, visitors 5, visits 6, bounces 2, total duration 5,760 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.hubstore import HubStore
from hub_enrich.bots import BotDetector
from hub_enrich.consumer import EnrichmentConsumer
from hub_enrich.enrich import Enricher
from hub_enrich.ua import UaParser
from tests.hub_enrich.rawrows import GOOGLEBOT, MIN, T0, insert_raw, open_store, page_view, reset, rows

DAY = 86_400_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStore]:
    with open_store(Path(tmp_path_factory.mktemp("hub-sessions"))) as s:
        yield s


@pytest.fixture
def clean(store: HubStore) -> HubStore:
    reset(store)
    return store


def daily(store: HubStore, view: str = "web_daily") -> dict[str, tuple[int, ...]]:
    return {
        str(r[0]): tuple(int(x) for x in r[1:])
        for r in rows(
            store,
            f"SELECT site, pageviews, visitors, visits, bounces, total_duration FROM {{db}}.{view} "
            "WHERE day = '2024-06-01' ORDER BY site",
        )
    }


def on_time_traffic() -> list[dict[str, object]]:
    m = MIN
    return [
        page_view("s1", "/a1", T0 + 0 * m, visitor=101),
        page_view("s1", "/a2", T0 + 29 * m, visitor=101),
        page_view("s1", "/a3", T0 + 60 * m, visitor=101),
        page_view("s1", "/b1", T0 + 5 * m, visitor=102),
        page_view("s1", "/d1", T0 + 100 * m, visitor=105),
        page_view("s1", "/d2", T0 + 130 * m, visitor=105),
        page_view("s1", "/x", T0 + 0 * m, visitor=301, ua=GOOGLEBOT),
        page_view("s1", "/y", T0 + 1 * m, visitor=301, ua=GOOGLEBOT),
        page_view("s1", "/z", T0 + 2 * m, visitor=301, ua=GOOGLEBOT),
        page_view("s2", "/a", T0 + 1 * m, visitor=201),
        page_view("s2", "/b", T0 + 3 * m, visitor=201),
    ]


def late_traffic() -> list[dict[str, object]]:
    """C's events from an edge that was offline: stored two days later, out of order."""
    late = T0 + 2 * DAY
    return [
        page_view("s1", "/c3", T0 + 45 * MIN, visitor=103, edge="edge-2", hub_at=late),
        page_view("s1", "/c1", T0 + 10 * MIN, visitor=103, edge="edge-2", hub_at=late + 5),
        page_view("s1", "/c2", T0 + 20 * MIN, visitor=103, edge="edge-2", hub_at=late + 5),
    ]


def test_hand_computed_visits_with_late_out_of_order_events(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    store = clean
    now = [T0 + DAY]
    consumer = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), clock=lambda: now[0])
    insert_raw(store, on_time_traffic())
    assert consumer.catch_up() == 11

    assert daily(store) == {"s1": (6, 3, 4, 2, 3540), "s2": (2, 1, 1, 0, 120)}

    # A's two visits, exactly.
    visits_a = rows(
        store,
        "SELECT toUnixTimestamp64Milli(visit_start), duration, pageviews, entry_path, exit_path "
        "FROM {db}.web_visits WHERE site = 's1' AND visitor_id = 101 ORDER BY visit_start",
    )
    assert visits_a == [(T0, 1740, 2, "/a1", "/a2"), (T0 + 60 * MIN, 0, 1, "/a3", "/a3")]
    # A gap of exactly 30 minutes stays in the visit.
    assert rows(store, "SELECT count(), max(duration) FROM {db}.web_visits WHERE visitor_id = 105")[0] == (
        1,
        1800,
    )

    # The offline edge's events arrive two days later, out of order.
    now[0] = T0 + 2 * DAY + 10_000  # stored 10 s ago: inside the lag margin, not read yet
    insert_raw(store, late_traffic())
    assert consumer.step() == 0
    now[0] = T0 + 2 * DAY + 60_000
    assert consumer.catch_up() == 3

    assert daily(store) == {"s1": (9, 4, 5, 2, 5640), "s2": (2, 1, 1, 0, 120)}
    visit_c = rows(
        store,
        "SELECT duration, pageviews, entry_path, exit_path, edge_id FROM {db}.web_visits "
        "WHERE visitor_id = 103",
    )
    assert [tuple(r) for r in visit_c] == [(2100, 3, "/c1", "/c3", "edge-2")]

    # Bots: flagged, never deleted, back in with include_bots (web_daily_all).
    assert daily(store, "web_daily_all") == {"s1": (12, 5, 6, 2, 5760), "s2": (2, 1, 1, 0, 120)}
    bot = rows(
        store, "SELECT is_bot, device_type, pageviews, duration FROM {db}.web_visits WHERE visitor_id = 301"
    )
    assert [tuple(r) for r in bot] == [(1, "bot", 3, 120)]

    # The visit's attributes: the landing page view's.
    attrs = rows(
        store,
        "SELECT browser, os, device_type, channel FROM {db}.web_visits WHERE visitor_id = 102",
    )
    assert [tuple(r) for r in attrs] == [("Chrome", "Windows", "desktop", "direct")]

    # A restarted consumer (new instance, same name) finds its watermark: nothing enriched twice.
    again = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), clock=lambda: now[0])
    assert again.catch_up() == 0
    assert daily(store) == {"s1": (9, 4, 5, 2, 5640), "s2": (2, 1, 1, 0, 120)}


def test_visits_ignore_duplicate_raw_rows_and_re_enrichment(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    """A batch stored twice (resent after the dedup window) and a crash before the watermark was
    saved (the same rows enriched twice) change no number."""
    store = clean
    traffic = on_time_traffic()
    insert_raw(store, traffic)
    dup = [{**r, "hub_received_at": int(str(r["hub_received_at"])) + 3 * MIN} for r in traffic[:4]]
    insert_raw(store, dup)
    now = T0 + DAY
    enricher = Enricher(ua_parser, bot_detector)
    EnrichmentConsumer(store, enricher, clock=lambda: now).catch_up()
    # "crash": rows re-enriched, but no watermark saved, then a new consumer under another name
    # (an empty watermark) enriches everything again.
    EnrichmentConsumer(store, enricher, name="second", clock=lambda: now).catch_up()
    assert daily(store) == {"s1": (6, 3, 4, 2, 3540), "s2": (2, 1, 1, 0, 120)}
    assert rows(store, "SELECT count() FROM {db}.events_enriched FINAL")[0][0] == 11
    assert rows(store, "SELECT count() FROM {db}.web_events")[0][0] == 11

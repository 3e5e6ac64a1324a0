"""The analytics API (issue 6) over real chDB: hand-computed numbers through HTTP.

The hub app (``hub_api.app.create_app``) runs in a thread over a store filled with raw rows
(tests/hub_enrich/rawrows.py) enriched by the real ``EnrichmentConsumer``. Times in minutes
after T0 = 2024-06-01 00:00 UTC.

Site s1 (the traffic of tests/hub_enrich/test_sessions.py, plus visitor E):
  A 101: /a1 @0, /a2 @29, /a3 @60 -> visits (2 pv, 1,740 s) and (1 pv, bounce)
  B 102: /b1 @5 -> bounce          D 105: /d1 @100, /d2 @130 -> 1 visit, 1,800 s
  C 103: /c1 @10, /c2 @20, /c3 @45 from edge-2, stored two days late, out of order -> 2,100 s
  E 104 (iPhone Safari, from Google): /a1 @200, /p2 @210 -> 1 visit, 600 s, channel search
  Googlebot 301: /x @0, /y @1, /z @2 -> a bot visit of 120 s
  humans: page views 11, visitors 5, visits 6, bounces 2, duration 6,240 s (avg 1,040)
  with the bot: 14, 6, 7, 2, 6,360 s (avg 908.6)
Site shop (funnel /, /pricing, event signup, window 1 h):
  v1 / @0, /pricing @2, signup @5 (3 steps); v2 / @0, /pricing @3 (2); v3 / @0 (1);
  v4 /pricing @0, / @1 (1: wrong order); v5 / @0, /pricing @2, signup @125 (2: outside the window)
  -> 5, 3, 1 visitors; conversion 1, 0.6, 0.2; drop-off 0, 2, 2
Site app (producer ids, weeks from Monday W0 = 2024-06-03): 201 in weeks 0,1,2; 202 in 0,2;
  203 in 1; 204 in 1,2 -> cohort W0: 2 visitors, retention [2, 1, 2]; W1: 2, [2, 1]
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore
from edgekite.hubstore.arrow import BATCHES_SCHEMA, table_from_rows
from hub_api.app import HubApiContext, create_app
from hub_enrich.bots import BotDetector
from hub_enrich.consumer import EnrichmentConsumer
from hub_enrich.enrich import Enricher
from hub_enrich.ua import UaParser
from tests.hub_enrich.rawrows import (
    MIN,
    SAFARI_IOS,
    T0,
    eid,
    insert_raw,
    open_store,
    page_view,
    raw_row,
)
from tests.hub_enrich.test_sessions import late_traffic, on_time_traffic
from tests.hub_ingest.helpers import http, hub_config

DAY = 86_400_000
HOUR = 3_600_000
W0 = T0 + 2 * DAY  # Monday 2024-06-03
WEEK = 7 * DAY


def web_rows() -> list[dict[str, Any]]:
    m = MIN
    rows = on_time_traffic() + late_traffic()
    rows += [
        page_view("s1", "/a1", T0 + 200 * m, visitor=104, ua=SAFARI_IOS, referrer="https://www.google.com/"),
        page_view(
            "s1", "/p2", T0 + 210 * m, visitor=104, ua=SAFARI_IOS, referrer="https://s1.example.com/a1"
        ),
    ]
    shop = [
        (1, "/", 0, "page_view"),
        (1, "/pricing", 2, "page_view"),
        (1, "/pricing", 5, "signup"),
        (2, "/", 0, "page_view"),
        (2, "/pricing", 3, "page_view"),
        (3, "/", 0, "page_view"),
        (4, "/pricing", 0, "page_view"),
        (4, "/", 1, "page_view"),
        (5, "/", 0, "page_view"),
        (5, "/pricing", 2, "page_view"),
        (5, "/pricing", 125, "signup"),
    ]
    rows += [page_view("shop", p, T0 + t * m, visitor=400 + v, event_type=et) for v, p, t, et in shop]
    app = {201: (0, 1, 2), 202: (0, 2), 203: (1,), 204: (1, 2)}
    rows += [page_view("app", "/home", W0 + w * WEEK + HOUR, visitor=v) for v, ws in app.items() for w in ws]
    return rows


def iot_rows() -> list[dict[str, Any]]:
    def det(
        cam: str, label: str, at: int, conf: float, incident: str | None, site: str = ""
    ) -> dict[str, Any]:
        return raw_row(
            category="iot",
            type=f"{label}_detected",
            source_id=cam,
            observed_at=at,
            data={"camera_id": cam, "label": label, "confidence": conf, **({"site": site} if site else {})},
            metadata={"site_id": "farm"},
            incident_id=incident,
        )

    def reading(value: float | None, at: int, event_id: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"metric": "temperature", "unit": "C"}
        if value is not None:
            data["value"] = value
        return raw_row(
            category="iot",
            type="sensor_reading",
            source_id="sensor-t",
            observed_at=at,
            data=data,
            metadata={"site_id": "farm"},
            event_id=event_id,
        )

    dup_id = eid()
    rows = [
        det("cam-1", "person", T0 + 1 * MIN, 0.5, "i1"),
        det("cam-1", "person", T0 + 2 * MIN, 0.7, "i1"),
        det("cam-1", "person", T0 + 3 * MIN, 0.9, "i1"),
        det("cam-2", "person", T0 + 2 * MIN, 0.8, "i1"),
        det("cam-1", "vehicle", T0 + 70 * MIN, 0.6, None),
        det("cam-1", "vehicle", T0 + 70 * MIN + 30_000, 0.6, None),
        # Day 3, for the newest-first limit: i2 (@10), a cam-3 run (@30), i3 (@60, cam-3 and cam-4).
        det("cam-3", "person", T0 + 2 * DAY + 10 * MIN, 0.5, "i2"),
        det("cam-3", "person", T0 + 2 * DAY + 12 * MIN, 0.5, "i2"),
        det("cam-3", "animal", T0 + 2 * DAY + 30 * MIN, 0.5, None),
        det("cam-3", "person", T0 + 2 * DAY + 60 * MIN, 0.5, "i3"),
        det("cam-4", "person", T0 + 2 * DAY + 61 * MIN, 0.5, "i3"),
        # Day 4: i4 seen first at the barn, then on the farm's cam-6; i5 only on the farm.
        det("cam-5", "person", T0 + 3 * DAY + 11 * MIN, 0.5, "i4", site="barn"),
        det("cam-6", "person", T0 + 3 * DAY + 10 * MIN + 30_000, 0.5, "i4"),
        det("cam-5", "person", T0 + 3 * DAY + 10 * MIN, 0.5, "i4", site="barn"),
        det("cam-6", "person", T0 + 3 * DAY + 5 * MIN, 0.5, "i5"),
        reading(20.0, T0 + 5 * MIN),
        reading(22.0, T0 + 10 * MIN, dup_id),
        reading(27.0, T0 + 15 * MIN),
        reading(None, T0 + 20 * MIN),
    ]
    dup = {**rows[7], "hub_received_at": int(rows[7]["hub_received_at"]) + 5 * MIN, "batch_id": "b-again"}
    beats = [
        raw_row(
            category="ops",
            type="heartbeat",
            source_id="gw-1",
            observed_at=T0 + t * MIN,
            data={"uptime_seconds": up, "cpu_percent": cpu, "memory_percent": 40.0, "disk_percent": 10.0},
        )
        for t, up, cpu in ((5, 300, 12.5), (10, 600, 15.0))
    ]
    return [*rows, dup, *beats]


class Server:
    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = Path(tmp_path_factory.mktemp("hub-analytics"))
    with open_store(data_dir) as store:
        fill(store)
        ctx = HubApiContext(hub_config(data_dir), store, HubMetrics(), dev_mode=True)
        server = Server(create_app(ctx))
        try:
            yield server.url
        finally:
            server.close()


def fill(store: HubStore) -> None:
    insert_raw(store, web_rows() + iot_rows())
    store.insert_arrow(
        "batches",
        table_from_rows(
            BATCHES_SCHEMA,
            [("edge-1", "b-1", 1, 30, 30, 30, 0, 42, "", T0, T0 + 20 * MIN)],
        ),
    )
    consumer = EnrichmentConsumer(store, Enricher(UaParser(), BotDetector()), clock=lambda: T0 + 30 * DAY)
    assert consumer.catch_up() > 0


def get(api: str, path: str) -> tuple[int, Any]:
    status, _, body = http("GET", api + path)
    return status, body


def ok(api: str, path: str) -> dict[str, Any]:
    status, body = get(api, path)
    assert status == 200, (path, body)
    assert body["truth"] == "hub"
    return dict(body)


DAY1 = f"from={T0}&to={T0 + DAY}"


def test_overview_hand_computed(api: str) -> None:
    body = ok(api, f"/api/web/overview?site=s1&{DAY1}")
    assert body["totals"] == {
        "pageviews": 11,
        "visitors": 5,
        "visits": 6,
        "bounces": 2,
        "bounce_rate": 0.3333,
        "avg_duration_secs": 1040.0,
    }
    assert body["from"] == T0 and body["to"] == T0 + DAY
    assert body["latest_event_ms"] == W0 + 2 * WEEK + HOUR + 1100  # the app site's last row
    assert body["interval"] == "hour"
    # hour 0: A(/a1,/a2), B, C(3), Googlebot left out; visits A1, B, C start there
    assert body["series"][0] == {"t": T0, "pageviews": 6, "visitors": 3, "visits": 3}
    assert sum(s["pageviews"] for s in body["series"]) == 11
    assert sum(s["visits"] for s in body["series"]) == 6
    # the same period given as ISO-8601
    iso = ok(api, "/api/web/overview?site=s1&from=2024-06-01T00:00:00Z&to=2024-06-02")
    assert iso["totals"] == body["totals"]


def test_include_bots(api: str) -> None:
    totals = ok(api, f"/api/web/overview?site=s1&{DAY1}&include_bots=1")["totals"]
    assert totals == {
        "pageviews": 14,
        "visitors": 6,
        "visits": 7,
        "bounces": 2,
        "bounce_rate": 0.2857,
        "avg_duration_secs": 908.6,
    }
    browsers = ok(api, f"/api/web/top?dim=browser&site=s1&{DAY1}&include_bots=1")["rows"]
    assert {r["value"] for r in browsers} == {"Chrome", "Safari", "Googlebot"}
    browsers = ok(api, f"/api/web/top?dim=browser&site=s1&{DAY1}")["rows"]
    assert browsers == [
        {"value": "Chrome", "visitors": 4, "pageviews": 9},
        {"value": "Safari", "visitors": 1, "pageviews": 2},
    ]


def test_filters_select_visits(api: str) -> None:
    one = {
        "pageviews": 2,
        "visitors": 1,
        "visits": 1,
        "bounces": 0,
        "bounce_rate": 0.0,
        "avg_duration_secs": 600.0,
    }
    for f in ("browser=Safari", "device=mobile", "channel=search", "os=iOS"):
        assert ok(api, f"/api/web/overview?site=s1&{DAY1}&{f}")["totals"] == one, f
    # a visit-level filter keeps every page of the matching visits (E's second view came from s1)
    pages = ok(api, f"/api/web/top?dim=page&site=s1&{DAY1}&channel=search")["rows"]
    assert pages == [
        {"value": "/a1", "visitors": 1, "pageviews": 1},
        {"value": "/p2", "visitors": 1, "pageviews": 1},
    ]
    # path: visits that viewed it (A's first visit and E's)
    totals = ok(api, f"/api/web/overview?site=s1&{DAY1}&path=/a1")["totals"]
    assert (totals["visits"], totals["pageviews"], totals["visitors"]) == (2, 4, 2)
    none = ok(api, f"/api/web/overview?site=s1&{DAY1}&country=XX")["totals"]
    assert none["visits"] == 0 and none["pageviews"] == 0


def test_top_lists(api: str) -> None:
    pages = ok(api, f"/api/web/top?dim=page&site=s1&{DAY1}&limit=3")
    assert pages["dim"] == "page"
    assert pages["rows"] == [
        {"value": "/a1", "visitors": 2, "pageviews": 2},
        {"value": "/a2", "visitors": 1, "pageviews": 1},
        {"value": "/a3", "visitors": 1, "pageviews": 1},
    ]
    entry = ok(api, f"/api/web/top?dim=entry_page&site=s1&{DAY1}")["rows"]
    assert entry[0] == {"value": "/a1", "visitors": 2, "visits": 2}
    assert sum(r["visits"] for r in entry) == 6
    exits = ok(api, f"/api/web/top?dim=exit_page&site=s1&{DAY1}")["rows"]
    assert {r["value"] for r in exits} == {"/a2", "/a3", "/b1", "/c3", "/d2", "/p2"}
    channels = ok(api, f"/api/web/top?dim=channel&site=s1&{DAY1}")["rows"]
    assert channels == [
        {"value": "direct", "visitors": 4, "pageviews": 9, "visits": 5},
        {"value": "search", "visitors": 1, "pageviews": 2, "visits": 1},
    ]
    sites = ok(api, f"/api/web/sites?{DAY1}")["sites"]
    assert {s["site"]: (s["pageviews"], s["visitors"]) for s in sites} == {
        "s1": (11, 5),
        "shop": (9, 5),
        "s2": (2, 1),
    }


def test_funnel_with_drop_off(api: str) -> None:
    body = ok(
        api, f"/api/web/funnel?site=shop&{DAY1}&steps=page:/,page:/pricing,event:signup&window_secs=3600"
    )
    assert body["steps"] == [
        {"step": "page:/", "visitors": 5, "conversion_rate": 1.0, "drop_off": 0, "drop_off_rate": 0.0},
        {"step": "page:/pricing", "visitors": 3, "conversion_rate": 0.6, "drop_off": 2, "drop_off_rate": 0.4},
        {
            "step": "event:signup",
            "visitors": 1,
            "conversion_rate": 0.2,
            "drop_off": 2,
            "drop_off_rate": 0.6667,
        },
    ]
    # a longer window lets v5's late signup count
    wide = ok(
        api, f"/api/web/funnel?site=shop&{DAY1}&steps=page:/,page:/pricing,event:signup&window_secs=10800"
    )
    assert [s["visitors"] for s in wide["steps"]] == [5, 3, 2]


def test_cohort_grid(api: str) -> None:
    body = ok(api, f"/api/web/cohorts?site=app&weeks=3&to={W0 + 3 * WEEK}")
    assert body["from"] == W0 and body["weeks"] == 3
    assert body["cohorts"] == [
        {"week_start": W0, "visitors": 2, "retention": [2, 1, 2]},
        {"week_start": W0 + WEEK, "visitors": 2, "retention": [2, 1]},
    ]


def test_csv_export(api: str) -> None:
    status, _, text = http("GET", api + f"/api/web/top?dim=browser&site=s1&{DAY1}&format=csv")
    assert status == 200
    assert text.splitlines() == ["value,visitors,pageviews", "Chrome,4,9", "Safari,1,2"]
    status, _, text = http("GET", api + f"/api/web/overview?site=s1&{DAY1}&format=csv")
    assert status == 200 and text.splitlines()[:2] == ["t,pageviews,visitors,visits", f"{T0},6,3,3"]


def test_iot_detections_and_sensors(api: str) -> None:
    body = ok(api, f"/api/iot/detections?{DAY1}")
    assert body["interval"] == "hour"
    assert body["rows"] == [
        {
            "t": T0,
            "camera_id": "cam-1",
            "label": "person",
            "detections": 3,
            "avg_confidence": 0.7,
            "max_confidence": 0.9,
        },
        {
            "t": T0,
            "camera_id": "cam-2",
            "label": "person",
            "detections": 1,
            "avg_confidence": 0.8,
            "max_confidence": 0.8,
        },
        {
            "t": T0 + HOUR,
            "camera_id": "cam-1",
            "label": "vehicle",
            "detections": 2,
            "avg_confidence": 0.6,
            "max_confidence": 0.6,
        },
    ]
    inc = {i["incident_key"]: i for i in body["incidents"]}
    assert set(inc) == {"i1", "cam-1#1"}
    assert (inc["i1"]["detections"], inc["i1"]["cameras"], inc["i1"]["duration"]) == (
        4,
        ["cam-1", "cam-2"],
        120,
    )
    assert (inc["cam-1#1"]["detections"], inc["cam-1#1"]["duration"], inc["cam-1#1"]["correlated"]) == (
        2,
        30,
        0,
    )
    cam2 = ok(api, f"/api/iot/detections?{DAY1}&source=cam-2")
    assert [r["camera_id"] for r in cam2["rows"]] == ["cam-2"] and [
        i["incident_key"] for i in cam2["incidents"]
    ] == ["i1"]
    # Newest first, correlated incidents and runs of one camera competing for the limit.
    day3 = f"from={T0 + 2 * DAY}&to={T0 + 3 * DAY}"
    for limit, keys in ((1, ["i3"]), (2, ["i3", "cam-3#1"]), (3, ["i3", "cam-3#1", "i2"])):
        got = ok(api, f"/api/iot/detections?{day3}&limit={limit}")["incidents"]
        assert [i["incident_key"] for i in got] == keys
    everything = ok(api, f"/api/iot/detections?{day3}")["incidents"]
    assert ok(api, f"/api/iot/detections?{day3}&site=farm")["incidents"] == everything
    assert ok(api, f"/api/iot/detections?{day3}&site=farm&limit=2")["incidents"] == everything[:2]
    assert ok(api, f"/api/iot/detections?{day3}&site=elsewhere")["incidents"] == []
    # An incident's site is its first detection's: i4 belongs to the barn, not to the farm.
    day4 = f"from={T0 + 3 * DAY}&to={T0 + 4 * DAY}"
    for site, keys in (("barn", ["i4"]), ("farm", ["i5"])):
        for limit in (1, 5):
            got = ok(api, f"/api/iot/detections?{day4}&site={site}&limit={limit}")["incidents"]
            assert [(i["incident_key"], i["site"]) for i in got] == [(k, site) for k in keys]
    assert [i["incident_key"] for i in ok(api, f"/api/iot/detections?{day4}")["incidents"]] == ["i4", "i5"]
    cam4 = ok(api, f"/api/iot/detections?{day3}&limit=1&source=cam-4")["incidents"]
    assert [i["incident_key"] for i in cam4] == ["i3"]
    cam3 = ok(api, f"/api/iot/detections?{day3}&limit=2&source=cam-3")["incidents"]
    assert [(i["incident_key"], i["detections"]) for i in cam3] == [("i3", 2), ("cam-3#1", 1)]
    vehicles = ok(api, f"/api/iot/detections?{DAY1}&label=vehicle&interval=day")["rows"]
    assert [(r["t"], r["detections"]) for r in vehicles] == [(T0, 2)]

    sensors = ok(api, f"/api/iot/sensors?{DAY1}&source=sensor-t&metric=temperature")["rows"]
    # the reading stored twice counts once; the one without a value is skipped
    assert sensors == [
        {
            "t": T0,
            "source_id": "sensor-t",
            "metric": "temperature",
            "min": 20.0,
            "avg": 23.0,
            "max": 27.0,
            "samples": 3,
        }
    ]
    assert ok(api, f"/api/iot/sensors?{DAY1}&metric=humidity")["rows"] == []


def test_fleet_edge(api: str) -> None:
    rng = f"from={T0 - DAY}&to={T0 + 3 * DAY}"
    edge2 = ok(api, f"/api/fleet/edge-2?{rng}")
    assert edge2["edge_id"] == "edge-2" and edge2["last_seen"] is None
    assert edge2["events_per_day"] == [{"day": T0, "events": 3}]
    assert edge2["sync_lag"] == [
        {"day": T0 + 2 * DAY, "events": 3, "p50_ms": 2 * DAY - 20 * MIN + 5, "p95_ms": 2 * DAY - 10 * MIN + 5,
         "p99_ms": 2 * DAY - 10 * MIN + 5}
    ]  # fmt: skip
    assert edge2["sources"] == [{"source_id": "s1-web", "events": 3, "last_seen": T0 + 45 * MIN}]
    edge1 = ok(api, f"/api/fleet/edge-1?{rng}")
    assert (edge1["last_seen"], edge1["backlog_reported"]) == (T0 + 20 * MIN, 42)
    beat = next(h for h in edge1["heartbeats"] if h["source_id"] == "gw-1")
    assert (beat["heartbeats"], beat["cpu_percent"], beat["uptime_seconds"]) == (2, 15.0, 600)
    assert beat["last_heartbeat_at"] == T0 + 10 * MIN
    # the sensor reading stored twice counts once
    assert next(s for s in edge1["sources"] if s["source_id"] == "sensor-t")["events"] == 4
    status, body = get(api, "/api/fleet/edge-zz")
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/api/web/top?dim=bogus", "dim"),
        ("/api/web/top", "dim"),
        ("/api/web/top?dim=page&limit=1000", "limit"),
        ("/api/web/overview?from=yesterday-ish", "from"),
        (f"/api/web/overview?from={T0 + DAY}&to={T0}", "from"),
        ("/api/web/overview?from=2020-01-01&to=2024-01-01", "days"),
        ("/api/web/overview?include_bots=maybe", "include_bots"),
        ("/api/web/overview?format=xml", "format"),
        ("/api/web/funnel?steps=page:/a", "steps"),
        ("/api/web/funnel?steps=" + ",".join(f"page:/{i}" for i in range(9)), "steps"),
        ("/api/web/funnel?steps=page:/,click:/b", "steps"),
        ("/api/web/funnel?steps=page:/,page:/b&window_secs=0", "window_secs"),
        ("/api/web/cohorts?weeks=99", "weeks"),
        ("/api/iot/detections?interval=minute", "interval"),
        ("/api/fleet/bad%20edge", "edge_id"),
        ("/api/web/overview?country=" + "x" * 300, "country"),
    ],
)
def test_validation_errors(api: str, path: str, word: str) -> None:
    status, body = get(api, path)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request" and word in body["error"]["message"]

"""The Enricher over stored rows: simulator traffic, tracker-shaped events, neutral non-web rows."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edgekite.hubstore.enriched import ENRICHED_COLUMNS
from edgekite.hubstore.schema import EVENT_COLUMNS
from edgekite.simulate import USER_AGENTS, TrafficGenerator
from edgekite.visitor import DAY_MS, DailySalts, site_of, visitor_id
from hub_enrich.bots import BotDetector
from hub_enrich.enrich import COLUMN_NAMES, ENRICHMENT_VERSION, Enricher
from hub_enrich.geo import GeoLookup
from hub_enrich.ua import UaParser
from tests.hub_enrich.user_agents import HUMAN_UAS

NOW = 20_000 * DAY_MS + 12 * 3_600_000
SALT = b"s" * 32
SITE_HOSTS = {f"site-{n}": [f"site{n}.example.com"] for n in (1, 2, 3)}
CHROME = HUMAN_UAS[0][0]


def stored_row(source_id: str, env: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """An envelope as a row of the hub's ``events`` table, JSON columns as text, as hub ingest stores it."""
    event = env["event"]
    corr = env.get("correlation") or {}
    row: dict[str, Any] = {
        "event_id": env.get("event_id") or str(uuid.uuid4()),
        "edge_id": "edge-1",
        "batch_id": "b1",
        "observed_at": env.get("observed_at", NOW),
        "received_at": env.get("observed_at", NOW) + 20,
        "hub_received_at": env.get("observed_at", NOW) + 900,
        "source_type": env["source"].get("type", ""),
        "source_id": source_id,
        "category": event["category"],
        "type": event["type"],
        "severity": event.get("severity", "info"),
        "source_seq": None,
        "correlation_id": None,
        "session_id": corr.get("session_id"),
        "incident_id": None,
        "data": orjson.dumps(event.get("data") or {}).decode(),
        "attachments": "[]",
        "source_version": None,
        "source_metadata": orjson.dumps(env["source"].get("metadata") or {}).decode(),
        "schema_version": "1.0",
        "pii": 1,
        "retention_class": "standard",
        "flags": 0,
        "visitor_id": 0,  # 0: not computed at ingest, so the enricher computes it from the salts
        "site": site_of(event.get("data") or {}, env["source"].get("metadata") or {}, source_id),
    }
    assert set(row) == set(EVENT_COLUMNS)
    row.update(extra)
    return row


def web_row(
    data: dict[str, Any], *, source_id: str = "shop.example.com", etype: str = "page_view", **extra: Any
) -> dict[str, Any]:
    """A row shaped like what the edge's tracker (t.js) sends: ``source.id`` is the site."""
    env = {
        "source": {"type": "browser", "id": source_id},
        "event": {"category": "web", "type": etype, "data": data},
    }
    return stored_row(source_id, env, **extra)


@pytest.fixture(scope="module")
def sim_rows() -> list[dict[str, Any]]:
    gen = TrafficGenerator(seed=7, sites=3, now_ms=lambda: NOW)
    return [stored_row(sid, env) for sid, env in gen.events(3000)]


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test-City")
    for net, cc, sub, city in (
        ("192.0.2.0/24", "DE", "BE", "Berlin"),
        ("198.51.100.0/24", "US", "NY", "New York"),
        ("203.0.113.0/24", "GB", "ENG", "London"),
        ("2001:db8::/32", "NL", "NH", "Amsterdam"),
    ):
        record = {
            "country": {"iso_code": cc},
            "subdivisions": [{"iso_code": sub}],
            "city": {"names": {"en": city}},
        }
        writer.insert_network(IPSet([net]), record)
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def enricher(ua_parser: UaParser, bot_detector: BotDetector, geo_db: Path) -> Enricher:
    return Enricher(
        ua_parser, bot_detector, GeoLookup(geo_db), site_hosts=SITE_HOSTS, salts=DailySalts({20_000: SALT})
    )


def test_columns_and_types(enricher: Enricher, sim_rows: list[dict[str, Any]]) -> None:
    assert tuple(ENRICHED_COLUMNS) == COLUMN_NAMES
    for row in sim_rows[:300]:
        out = enricher.enrich(row)
        assert tuple(out) == COLUMN_NAMES
        for name, value in out.items():
            ch_type = ENRICHED_COLUMNS[name]
            if ch_type.startswith(("UInt", "DateTime")):
                assert type(value) is int and value >= 0, name
            else:
                assert type(value) is str, name
        assert out["is_bot"] in (0, 1)
        assert out["visitor_id"] < 2**64
        assert out["enrichment_version"] == ENRICHMENT_VERSION
        assert out["event_id"] == row["event_id"] and out["observed_at"] == row["observed_at"]


def test_simulator_web_mix_matches_its_ground_truth(
    enricher: Enricher, sim_rows: list[dict[str, Any]]
) -> None:
    classes = {ua: device for ua, device, _ in USER_AGENTS}
    web = [r for r in sim_rows if r["category"] == "web"]
    assert len(web) > 1000
    channels = set()
    for row in web:
        data = orjson.loads(row["data"])
        out = enricher.enrich(row)
        expected = classes[data["user_agent"]]
        assert out["site"] == orjson.loads(row["source_metadata"])["site_id"]
        if expected in ("bot", "tool"):
            assert out["is_bot"] == 1 and out["device_type"] == "bot" and out["bot_name"], data["user_agent"]
        else:
            assert out["is_bot"] == 0 and out["device_type"] == expected, data["user_agent"]
            assert out["browser"] and out["os"]
        # a view whose referrer is the site itself is internal, never a referral
        if data["referrer"].startswith(f"https://{out['site'].replace('-', '')}.example.com"):
            assert out["channel"] == "internal"
        if "utm_medium=email" in data["url"]:
            assert out["channel"] == "email"
        if "utm_medium=cpc" in data["url"]:
            assert out["channel"] == "campaign" and out["utm_source"] in ("google", "bing", "duckduckgo")
        assert out["url_path"] == data["url"].split("?")[0]
        assert out["page_title"] == data["title"]
        assert out["country"] in ("DE", "US", "GB", "NL")
        assert out["visitor_id"] == visitor_id(out["site"], data["ip"], data["user_agent"], SALT)
        channels.add(out["channel"])
    assert channels == {"direct", "internal", "search", "social", "email", "campaign", "referral"}


def test_no_raw_ip_in_the_output(enricher: Enricher, sim_rows: list[dict[str, Any]]) -> None:
    ips = {orjson.loads(r["data"])["ip"] for r in sim_rows if "ip" in orjson.loads(r["data"])}
    assert len(ips) > 50
    columns = enricher.enrich_many(sim_rows)
    for name, values in columns.items():
        leaked = {v for v in values if isinstance(v, str)} & ips
        assert not leaked, name


def test_non_web_events_are_neutral(enricher: Enricher, sim_rows: list[dict[str, Any]]) -> None:
    others = [r for r in sim_rows if r["category"] != "web"]
    assert {r["category"] for r in others} >= {"iot", "ops", "security"}
    for row in others:
        out = enricher.enrich(row)
        assert out["site"] and out["category"] == row["category"]
        derived = {
            k: v
            for k, v in out.items()
            if k
            not in (
                "event_id",
                "observed_at",
                "edge_id",
                "source_id",
                "category",
                "type",
                "site",
                "enrichment_version",
            )
        }
        assert set(derived.values()) <= {"", 0}, derived  # no geo for a login attempt's IP, no bot verdict


def test_enrich_many_and_columns_match_enrich(enricher: Enricher, sim_rows: list[dict[str, Any]]) -> None:
    rows = sim_rows[:500]
    columns = enricher.enrich_many(rows)
    assert list(columns) == list(COLUMN_NAMES)
    assert all(len(v) == len(rows) for v in columns.values())
    for i in (0, 17, 499):
        assert {k: v[i] for k, v in columns.items()} == enricher.enrich(rows[i])
    as_columns = {name: [r[name] for r in rows] for name in EVENT_COLUMNS}
    assert enricher.enrich_columns(as_columns) == columns
    assert enricher.enrich_many([]) == {name: [] for name in COLUMN_NAMES}


def test_site_resolution(enricher: Enricher) -> None:
    # data.site beats source metadata beats source_id
    env = {
        "source": {"id": "x", "metadata": {"site_id": "meta-site"}},
        "event": {"category": "web", "type": "page_view", "data": {"site": "data-site", "url": "/"}},
    }
    assert enricher.enrich(stored_row("src", env))["site"] == "data-site"
    env["event"]["data"] = {"url": "/"}
    assert enricher.enrich(stored_row("src", env))["site"] == "meta-site"
    assert enricher.enrich(web_row({"url": "/"}, source_id="tracker-site"))["site"] == "tracker-site"


def test_tracker_event_with_a_hostname_site(enricher: Enricher) -> None:
    # t.js defaults data-site to location.hostname; its SPA views' referrer is the previous URL.
    out = enricher.enrich(
        web_row(
            {
                "url": "/docs?utm_source=x",
                "referrer": "https://www.shop.example.com/",
                "title": "Docs",
                "user_agent": CHROME,
                "screen": "1920x1080",
                "language": "en",
                "ip": "198.51.100.23",
            },
            source_id="shop.example.com",
        )
    )
    assert (out["site"], out["url_path"], out["channel"], out["utm_source"]) == (
        "shop.example.com",
        "/docs",
        "internal",
        "x",
    )
    assert (out["browser"], out["os"], out["device_type"], out["is_bot"]) == (
        "Chrome",
        "Windows",
        "desktop",
        0,
    )
    assert (out["country"], out["region"], out["city"]) == ("US", "US-NY", "New York")


def test_absolute_url_and_alternate_keys(enricher: Enricher) -> None:
    out = enricher.enrich(
        web_row(
            {
                "href": "https://www.Blog.Example.net/post/1?utm_source=fb",
                "referer": "https://t.co/x",
                "ua": CHROME,
                "client_ip": "2001:db8::5",
            },
            source_id="blog",
        )
    )
    assert (out["url_host"], out["url_path"], out["channel"], out["referrer_source"]) == (
        "blog.example.net",
        "/post/1",
        "social",
        "Facebook",
    )
    assert out["browser"] == "Chrome" and out["country"] == "NL"
    assert enricher.enrich(web_row({"url": "/", "hostname": "blog.example.net"}, source_id="b"))[
        "url_host"
    ] == ("blog.example.net")


def test_empty_user_agent_rules(enricher: Enricher) -> None:
    page_view = enricher.enrich(web_row({"url": "/", "user_agent": ""}))
    assert (page_view["is_bot"], page_view["bot_name"], page_view["device_type"]) == (
        1,
        "(empty user agent)",
        "bot",
    )
    no_key = enricher.enrich(web_row({"url": "/"}))  # a page view without any user agent key
    assert no_key["is_bot"] == 1
    # the tracker's custom events carry no user agent: not bots for that
    custom = enricher.enrich(web_row({"url": "/pricing", "plan": "pro"}, etype="signup_click"))
    assert (custom["is_bot"], custom["device_type"], custom["browser"]) == (0, "other", "")
    custom_empty = enricher.enrich(web_row({"url": "/", "user_agent": ""}, etype="signup_click"))
    assert custom_empty["is_bot"] == 1


def test_visitor_id_sources(enricher: Enricher) -> None:
    data = {"url": "/", "user_agent": CHROME, "ip": "192.0.2.10"}
    computed = enricher.enrich(web_row(data))["visitor_id"]
    assert computed == visitor_id("shop.example.com", "192.0.2.10", CHROME, SALT)
    # a hub-stored id (computed at ingest, before the IP was dropped) wins
    assert enricher.enrich(web_row(data, visitor_id=12345))["visitor_id"] == 12345
    # a producer's own id: stable, per site, not salted
    a = enricher.enrich(web_row({**data, "visitor_id": "user-42"}))["visitor_id"]
    assert (
        a
        == enricher.enrich(web_row({"url": "/x", "visitor_id": "user-42"}, observed_at=NOW + 9 * DAY_MS))[
            "visitor_id"
        ]
    )
    assert a != enricher.enrich(web_row({**data, "visitor_id": "user-42"}, source_id="other"))["visitor_id"]
    # no IP, or no salt for the day (nor the receive day): unknown
    assert enricher.enrich(web_row({"url": "/", "user_agent": CHROME}))["visitor_id"] == 0
    late = web_row(data, observed_at=NOW + 3 * DAY_MS, hub_received_at=NOW + 3 * DAY_MS)
    assert enricher.enrich(late)["visitor_id"] == 0
    # a late event from an offline edge whose day's salt is gone: the receive day's salt
    old = web_row(data, observed_at=NOW - 5 * DAY_MS, hub_received_at=NOW)
    assert enricher.enrich(old)["visitor_id"] == computed
    # the edge's keyed hash in place of the IP still identifies the visitor (no geo)
    hashed = enricher.enrich(web_row({**data, "ip": "hmac256:00ff"}))
    assert hashed["visitor_id"] not in (0, computed) and hashed["country"] == ""


def test_input_shapes(enricher: Enricher) -> None:
    row = web_row({"url": "/a", "user_agent": CHROME})
    expected = enricher.enrich(row)
    eid = uuid.UUID(row["event_id"])
    as_objects = {
        **row,
        "event_id": eid,
        "observed_at": datetime.fromtimestamp(NOW / 1000, UTC),
        "data": orjson.loads(row["data"]),
        "source_metadata": {},
    }
    assert enricher.enrich(as_objects) == expected
    broken = enricher.enrich({**row, "data": "{not json", "source_metadata": "[]"})
    assert broken["site"] == "shop.example.com" and broken["url_path"] == "" and broken["is_bot"] == 1
    assert enricher.enrich({"category": "web", "type": "page_view"})["site"] == ""


def test_bot_list_change_moves_verdicts_without_adding_rows(
    ua_parser: UaParser, tmp_path: Path, sim_rows: list[dict[str, Any]]
) -> None:
    rows = [r for r in sim_rows if r["category"] == "web"]
    before = Enricher(ua_parser, BotDetector(), site_hosts=SITE_HOSTS)
    patterns = tmp_path / "bots.txt"
    patterns.write_text("# Firefox on Linux is our uptime checker\nX11; (?:Ubuntu; )?Linux x86_64; rv:\n")
    after = Enricher(ua_parser, BotDetector.from_file(patterns), site_hosts=SITE_HOSTS)
    a, b = before.enrich_many(rows), after.enrich_many(rows)
    assert len(a["event_id"]) == len(b["event_id"]) == len(rows)
    assert a["event_id"] == b["event_id"]
    flipped = [i for i in range(len(rows)) if a["is_bot"][i] != b["is_bot"][i]]
    assert flipped and all(b["is_bot"][i] == 1 and "Linux x86_64; rv:" in b["bot_name"][i] for i in flipped)
    assert sum(b["is_bot"]) == sum(a["is_bot"]) + len(flipped)
    assert before.fingerprint != after.fingerprint


def test_fingerprint(ua_parser: UaParser, bot_detector: BotDetector) -> None:
    one = Enricher(ua_parser, bot_detector, site_hosts={"s": ["a.example"]})
    assert one.fingerprint == Enricher(ua_parser, bot_detector, site_hosts={"s": ["A.example"]}).fingerprint
    assert one.fingerprint != Enricher(ua_parser, bot_detector, site_hosts={"s": ["b.example"]}).fingerprint

"""The edge's HTTP API against a real store filled by the real bridge (simulator traffic over MQTT)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgekite.rollups import error_key, page_key, referrer_key
from tests.conftest import wait_for
from tests.edge_api.conftest import Edge, publish_all, request, start_edge

JSON = {"Content-Type": "application/json"}


def envelope(source_id: str, category: str = "app", etype: str = "job_done", **over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "source": {"type": "server", "id": source_id},
        "event": {"category": category, "type": etype, "data": {"n": 1}},
    }
    env.update(over)
    return env


# -- ingest ------------------------------------------------------------------------------
def test_post_one_event_answers_after_commit(filled_edge: Edge) -> None:
    env = envelope("api-test-1")
    status, body = filled_edge.post("/api/events", orjson.dumps(env), JSON)
    assert (status, body) == (200, {"accepted": 1, "duplicates": 0, "rejected": []})
    status, stored = filled_edge.get(f"/api/events/{env['event_id']}")
    assert status == 200
    assert stored["source"]["id"] == "api-test-1" and stored["event"]["data"] == {"n": 1}
    status, body = filled_edge.post("/api/events", orjson.dumps(env), JSON)
    assert body == {"accepted": 0, "duplicates": 1, "rejected": []}, "a retry is a counted no-op"


def test_batch_as_array_and_ndjson_reports_each_element(filled_edge: Edge) -> None:
    good = [envelope("api-batch") for _ in range(3)]
    bad = {"source": {"type": "server", "id": "api-batch"}, "event": {"category": "nope", "type": "x"}}
    status, body = filled_edge.post("/api/events/batch", orjson.dumps([good[0], bad, good[1], good[0]]), JSON)
    assert status == 200
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert [r["index"] for r in body["rejected"]] == [1]
    assert "event.category" in body["rejected"][0]["reason"]
    ndjson = b"\n".join([orjson.dumps(good[2]), b"{broken", orjson.dumps(envelope("api-batch"))]) + b"\n"
    status, body = filled_edge.post("/api/events/batch", ndjson, {"Content-Type": "application/x-ndjson"})
    assert status == 200
    assert body["accepted"] == 2
    assert [(r["index"], r["reason"].split(":")[0]) for r in body["rejected"]] == [(1, "invalid_json")]


def test_unreadable_and_oversized_bodies_are_refused_with_a_reason(filled_edge: Edge) -> None:
    status, body = filled_edge.post("/api/events", b"{not json", JSON)
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = filled_edge.post("/api/events", b"[]", JSON)
    assert status == 400 and "batch" in body["error"]
    status, body = filled_edge.post("/api/events/batch", b"[" + b"1," * 2000 + b"1]", JSON)
    assert status == 400 and "max 1000" in body["error"]

    def with_string(n: int) -> bytes:
        return (
            b'{"source":{"type":"server","id":"x"},"event":{"category":"app","type":"x","data":{"p":"'
            + b"a" * n
            + b'"}}}'
        )

    status, body = filled_edge.post("/api/events", with_string(3 * 1024 * 1024), JSON)
    assert status == 413 and "larger than 2097152" in body["error"]
    status, body = filled_edge.post("/api/events", with_string(300_000), JSON)
    assert (status, body["accepted"]) == (200, 0)
    assert body["rejected"][0]["reason"].startswith("too_big: field 'p' is longer than 8192")
    full_batch = orjson.dumps(
        [
            envelope("api-big-batch")
            | {"event": {"category": "app", "type": "x", "data": {"pad": "p" * 1200}}}
            for _ in range(1000)
        ]
    )
    assert len(full_batch) > 1024 * 1024
    status, body = filled_edge.post("/api/events/batch", full_batch, JSON)
    assert (status, body["accepted"]) == (200, 1000), "a full 1,000-event batch fits the body limit"


def test_web_events_get_the_senders_address_and_cors(filled_edge: Edge) -> None:
    env = envelope("site-9-web", "web", "outbound_click")
    env["source"]["type"] = "browser"
    env["event"]["data"] = {"url": "/hello", "user_agent": "UA"}
    status, _ = filled_edge.post(
        "/api/events", orjson.dumps(env), {**JSON, "Origin": "http://shop.example.com"}
    )
    assert status == 200
    _, stored = filled_edge.get(f"/api/events/{env['event_id']}")
    assert stored["event"]["data"]["ip"] == "127.0.0.1"
    assert stored["event"]["data"]["user_agent"] == "UA", "a sent user agent is kept"
    assert stored["privacy"]["pii"] is True
    custom = envelope("site-9-web", "web", "signup")
    custom["source"]["type"] = "browser"
    status, _ = filled_edge.post("/api/events", orjson.dumps(custom), {**JSON, "User-Agent": "Mozilla/5.0 X"})
    assert status == 200
    _, stored = filled_edge.get(f"/api/events/{custom['event_id']}")
    assert stored["event"]["data"]["user_agent"] == "Mozilla/5.0 X", "a missing one is the request's"
    # CORS preflight for the tracker's POST from a site's pages
    host, port = filled_edge.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"OPTIONS /api/events HTTP/1.1\r\nHost: x\r\nOrigin: http://shop.example.com\r\n"
            b"Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 204") and "Access-Control-Allow-Origin: *" in reply


# -- timeline ------------------------------------------------------------------------------
def test_timeline_pages_through_everything_newest_first_exactly_once(filled_edge: Edge) -> None:
    seen: list[str] = []
    times: list[int] = []
    cursor = None
    while True:
        q = "/api/timeline?category=iot&limit=137" + (f"&cursor={cursor}" if cursor else "")
        status, page = filled_edge.get(q)
        assert status == 200
        seen += [e["event_id"] for e in page["events"]]
        times += [e["observed_at"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = {env["event_id"] for _, env in filled_edge.published if env["event"]["category"] == "iot"}
    assert len(seen) == len(set(seen)), "no event on two pages"
    assert set(seen) == expected
    assert times == sorted(times, reverse=True)


def test_timeline_filters_combine(filled_edge: Edge) -> None:
    pub = filled_edge.published
    sid = next(s for s, env in pub if env["event"]["type"] == "heartbeat")
    want = {e["event_id"] for s, e in pub if s == sid and e["event"]["type"] == "heartbeat"}
    _, page = filled_edge.get(f"/api/timeline?source={sid}&type=heartbeat&limit=500")
    assert {e["event_id"] for e in page["events"]} == want
    _, page = filled_edge.get("/api/timeline?severity=error,critical&limit=500")
    assert page["events"] and all(e["event"]["severity"] in ("error", "critical") for e in page["events"])
    newest = max(e["observed_at"] for _, e in pub)
    _, page = filled_edge.get(f"/api/timeline?to={newest - 1000}&from={newest - 3000}&limit=500")
    assert all(newest - 3000 <= e["observed_at"] <= newest - 1000 for e in page["events"])


def test_free_text_search_finds_payload_words(filled_edge: Edge) -> None:
    word = "E_I2C_NACK"
    want = {
        e["event_id"] for _, e in filled_edge.published if word in orjson.dumps(e["event"]["data"]).decode()
    }
    assert want
    _, page = filled_edge.get(f"/api/timeline?q={word.lower()}&limit=500")
    assert {e["event_id"] for e in page["events"]} == want


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/api/timeline?cursor=garbage", "cursor"),
        ("/api/timeline?limit=0", "limit"),
        ("/api/timeline?limit=5000", "limit"),
        ("/api/timeline?from=yesterday", "from"),
        ("/api/timeline?category=weather", "category"),
        ("/api/timeline?severity=loud", "severity"),
        ("/api/counts?bucket=week", "bucket"),
        ("/api/counts?bucket=hour&from=0", "range too long"),
        ("/api/top?dim=colour", "dim"),
        ("/api/uniques?window=1y", "window"),
        ("/api/events/not-a-uuid", "UUID"),
    ],
)
def test_bad_parameters_get_a_400_with_the_reason(filled_edge: Edge, path: str, fragment: str) -> None:
    status, body = filled_edge.get(path)
    assert status == 400
    assert fragment in body["error"]


def test_unknown_event_is_404(filled_edge: Edge) -> None:
    status, body = filled_edge.get(f"/api/events/{uuid.uuid4()}")
    assert status == 404 and "no event" in body["error"]


# -- rollups -------------------------------------------------------------------------------
def test_counts_add_up_to_what_was_published(filled_edge: Edge) -> None:
    by_type = Counter(e["event"]["type"] for _, e in filled_edge.published)
    _, hourly = filled_edge.get("/api/counts?bucket=hour&group_by=type")
    _, daily = filled_edge.get("/api/counts?bucket=day&group_by=type")
    for body in (hourly, daily):
        got: Counter[str] = Counter()
        for b in body["buckets"]:
            got[b["key"]] += b["count"]
        for etype, n in by_type.items():
            assert got[etype] >= n  # other tests may add events of their own types
        assert got["page_view"] == by_type["page_view"]
    _, by_source = filled_edge.get("/api/counts?group_by=source")
    assert sum(b["count"] for b in by_source["buckets"] if b["key"] == "site-1-web") == sum(
        1 for s, _ in filled_edge.published if s == "site-1-web"
    )


@pytest.mark.parametrize("window", ["24h", "7d", "30d"])
def test_top_pages_referrers_and_errors_match_the_definitions(filled_edge: Edge, window: str) -> None:
    views = [e["event"]["data"] for _, e in filled_edge.published if e["event"]["type"] == "page_view"]
    errors = [e for _, e in filled_edge.published if e["event"]["severity"] in ("error", "critical")]
    expected = {
        "page": Counter(page_key(d) for d in views),
        "referrer": Counter(referrer_key(d) for d in views),
        "error": Counter(error_key(e["event"]["type"], e["event"]["data"]) for e in errors),
    }
    for dim, counter in expected.items():
        _, body = filled_edge.get(f"/api/top?dim={dim}&window={window}&limit=5")
        top = body["items"]
        assert len(top) == min(5, len(counter))
        for item in top:
            assert item["count"] == counter[item["key"]], (dim, item)
        assert top[0]["count"] == max(counter.values())


def test_uniques_are_marked_estimates_and_close(filled_edge: Edge) -> None:
    views = [e["event"]["data"] for _, e in filled_edge.published if e["event"]["type"] == "page_view"]
    visitors = len({(d["ip"], d["user_agent"]) for d in views})
    _, body = filled_edge.get("/api/uniques?window=24h")
    assert body["estimate"] is True
    v = body["visitors"]
    assert v["lower"] <= visitors <= v["upper"]
    assert abs(v["value"] - visitors) / visitors < 0.05
    _, week = filled_edge.get("/api/uniques?window=7d")
    assert week["visitors"]["value"] == v["value"], "same data, daily sketches agree with hourly ones"
    assert body["sources"]["value"] >= len({s for s, _ in filled_edge.published})


# -- alerts, incidents, health --------------------------------------------------------------
def test_alerts_inbox_and_mark_seen(filled_edge: Edge) -> None:
    _, body = filled_edge.get("/api/alerts?limit=3")
    assert len(body["alerts"]) == 3 and body["unseen"] >= 3
    assert all(a["event"]["severity"] in ("error", "critical") for a in body["alerts"])
    status, seen = filled_edge.post("/api/alerts/seen", b"{}", JSON)
    assert status == 200 and seen["unseen"] == 0
    crit = envelope(
        "api-alert",
        "ops",
        "disk_full",
        event={"category": "ops", "type": "disk_full", "severity": "critical"},
    )
    filled_edge.post("/api/events", orjson.dumps(crit), JSON)
    _, body = filled_edge.get("/api/alerts?limit=1")
    assert body["unseen"] == 1 and body["alerts"][0]["event_id"] == crit["event_id"]


def test_incidents_group_detections_of_one_camera_within_the_gap(filled_edge: Edge) -> None:
    base = int(time.time() * 1000) - 3_600_000
    plan = [
        (0, 0.61, "person"),
        (10_000, 0.97, "person"),
        (50_000, 0.7, "vehicle"),
        (200_000, 0.55, "animal"),
    ]
    msgs = []
    for offset, conf, label in plan:
        env = {
            "event_id": str(uuid.uuid4()),
            "observed_at": base + offset,
            "source": {"type": "edge_device"},
            "event": {
                "category": "iot",
                "type": f"{label}_detected",
                "data": {"label": label, "confidence": conf},
            },
            "attachments": [{"kind": "thumbnail", "uri": f"file:///media/cam-test-99/{offset}.jpg"}],
        }
        msgs.append(("ek/v1/cam-test-99/events", orjson.dumps(env)))
    publish_all(filled_edge.mqtt_port, msgs)
    _, body = filled_edge.get("/api/incidents?source=cam-test-99")
    got = [
        (i["start"] - base, i["end"] - base, i["count"], i["top_confidence"], i["labels"])
        for i in body["incidents"]
    ]
    assert got == [(200_000, 200_000, 1, 0.55, ["animal"]), (0, 50_000, 3, 0.97, ["person", "vehicle"])]
    assert body["incidents"][1]["thumbnail"] == {"uri": "file:///media/cam-test-99/10000.jpg"}


def test_health_stats_resources_and_dead_letters(filled_edge: Edge) -> None:
    publish_all(filled_edge.mqtt_port, [("ek/v1/junk/events", b"\x00\x01garbage")])
    _, health = filled_edge.get("/api/health")
    assert health["status"] == "ok" and health["mqtt_connected"] is True
    sources = {s["source_id"]: s for s in health["sources"]}
    assert {sid for sid, _ in filled_edge.published} <= set(sources)
    cam = next(s for s in sources.values() if s["source_id"].startswith("cam-") and s["last_heartbeat"])
    assert cam["stale"] is False and cam["events"] > 0
    assert health["storage"]["db_bytes"] > 0 and health["storage"]["disk_free_bytes"] > 0
    assert health["sync"]["enabled"] is False
    _, stats = filled_edge.get("/api/stats")
    assert stats["events_stored"] >= len(filled_edge.published)
    assert stats["rejected_24h"] >= 1 and stats["oldest_event"] <= stats["newest_event"]
    _, res = filled_edge.get("/api/resources")
    assert 0 < res["process"]["rss_bytes"] < 500 * 1024**2 and res["system"]["cpu_count"] >= 1
    _, dl = filled_edge.get("/api/dead_letters?limit=5")
    assert dl["dead_letters"][0]["code"] == "invalid_json"
    assert dl["dead_letters"][0]["topic"] == "ek/v1/junk/events"
    status, metrics = filled_edge.get("/metrics")
    assert status == 200 and b"edgekite_events_stored_total" in metrics


def test_hostile_payload_comes_back_as_inert_json_text(filled_edge: Edge) -> None:
    env = envelope("api-xss")
    env["event"]["data"] = {"note": "<img src=x onerror=alert(1)><script>alert(2)</script>"}
    filled_edge.post("/api/events", orjson.dumps(env), JSON)
    status, raw = request(f"{filled_edge.base}/api/events/{env['event_id']}")
    assert status == 200 and raw["event"]["data"]["note"].startswith("<img")


def test_stream_pushes_new_events(filled_edge: Edge) -> None:
    host, port = filled_edge.base.removeprefix("http://").split(":")
    received = bytearray()
    ready = threading.Event()

    def listen() -> None:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            while b"stream-test" not in received:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
                if b": connected" in received:
                    ready.set()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    filled_edge.post("/api/events", orjson.dumps(envelope("stream-test")), JSON)
    t.join(10)
    assert b"event: event" in received and b'"id":"stream-test"' in received


# -- configuration-dependent behaviour (own edges) ------------------------------------------
def test_stale_sources_are_flagged(tmp_path: Path) -> None:
    proc, base, port = start_edge(tmp_path, env={"EDGEKITE_HEALTH__STALE_AFTER_SECS": "3"})
    try:
        publish_all(port, [("ek/v1/quiet-1/events", orjson.dumps(envelope("quiet-1", "ops", "heartbeat")))])
        _, fresh = request(base + "/api/health")
        assert [s["stale"] for s in fresh["sources"]] == [False]
        time.sleep(3.2)
        _, later = request(base + "/api/health")
        assert [s["stale"] for s in later["sources"]] == [True] and later["stale_sources"] == 1
    finally:
        proc.terminate()


def test_api_key_guards_everything_but_open_ingest_and_the_dashboard(tmp_path: Path) -> None:
    proc, base, _ = start_edge(tmp_path, env={"EDGEKITE_HTTP__API_KEY": "s3cret-key"})
    try:
        status, body = request(base + "/api/stats")
        assert status == 401 and "API key" in body["error"]
        assert request(base + "/metrics")[0] == 401
        assert request(base + "/api/stats", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(base + "/api/stats", headers={"Authorization": "Bearer s3cret-key"})[0] == 200
        assert request(base + "/api/stats", headers={"X-API-Key": "s3cret-key"})[0] == 200
        assert request(base + "/api/events", orjson.dumps(envelope("k-1")), JSON)[0] == 200, "open ingest"
        assert request(base + "/")[0] == 200
    finally:
        proc.terminate()
    proc, base, _ = start_edge(
        tmp_path / "all", env={"EDGEKITE_HTTP__API_KEY": "k", "EDGEKITE_HTTP__INGEST_AUTH": "all"}
    )
    try:
        assert request(base + "/api/events", orjson.dumps(envelope("k-2")), JSON)[0] == 401
        assert (
            request(base + "/api/events", orjson.dumps(envelope("k-2")), {**JSON, "X-API-Key": "k"})[0] == 200
        )
    finally:
        proc.terminate()


def test_stream_and_the_store_survive_many_listeners_coming_and_going(filled_edge: Edge) -> None:
    host, port = filled_edge.base.removeprefix("http://").split(":")
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1024)
    wait_for(lambda: filled_edge.get("/api/health")[1]["status"] == "ok")


def test_health_reports_a_dead_writer_as_failing(tmp_path: Path) -> None:
    """If the writer thread ever dies, nothing commits: health must say so, not 'ok'."""
    from edge_api.app import EdgeContext, create_app
    from edgekite.config import load_edge_config
    from edgekite.metrics import EdgeMetrics
    from edgekite.store import EdgeStore

    cfg = load_edge_config(environ={}, overrides={"edge": {"data_dir": str(tmp_path)}})
    store = EdgeStore(cfg, EdgeMetrics()).open()
    store.close()  # the thread is gone, as after a crash of it
    ctx = EdgeContext(cfg, store, EdgeMetrics(), lambda: True, time.time())

    async def call() -> dict[str, Any]:
        from aiohttp.test_utils import TestClient, TestServer

        async with TestClient(TestServer(create_app(ctx))) as client:
            resp = await client.get("/api/health")
            return dict(await resp.json())

    import asyncio

    health = asyncio.run(call())
    assert (health["status"], health["writer_alive"]) == ("failing", False)

"""The hub's HTTP surface as a real ``edgekite hub`` process: ingest route, read API, auth, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import HubProcess
from tests.hub_ingest.helpers import KEY_A, KEY_B, batch, envelopes, http, metric, post_batch

API_KEY = "reader-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    edges = {"edge-a": {"api_key": KEY_A}, "edge-b": {"api_key": KEY_B, "rate_limit_events_per_sec": 50}}
    env = {
        "EDGEKITE_HUB_EDGES": json.dumps(edges),
        "EDGEKITE_HUB_HTTP__API_KEY": API_KEY,
        "EDGEKITE_HUB_HTTP__MAX_BODY_BYTES": str(1024**2),
        "EDGEKITE_HUB_INGEST__RATE_LIMIT_BURST_EVENTS": "100",
    }
    h = HubProcess(tmp_path_factory.mktemp("hubapi") / "hub", env=env).start()
    evs = envelopes(120, seed=5)
    evs[7] = {**evs[7], "event": {**evs[7]["event"], "category": "nope"}}
    status, _, ack = post_batch(h.http_url, batch("edge-a", "s:1-120", evs), key=KEY_A)
    assert status == 200 and ack["accepted"] == 119, ack
    yield h
    h.terminate()


def get(hub: HubProcess, path: str, **headers: str) -> tuple[int, dict[str, str], object]:
    return http("GET", f"{hub.http_url}{path}", headers={**AUTH, **headers})


def test_ingest_statuses(hub: HubProcess) -> None:
    url = hub.http_url
    payload = batch("edge-a", "s:200-201", envelopes(2, seed=6))
    assert post_batch(url, payload, key=KEY_A)[0] == 200
    status, _, ack = post_batch(url, payload, key=KEY_A)
    assert status == 200 and ack["duplicate"] is True
    assert post_batch(url, payload, key=KEY_B)[0] == 401  # b's key for a's batch
    assert post_batch(url, payload)[0] == 401  # no key
    assert post_batch(url, payload, signed_with=KEY_A)[0] == 200  # a signature is enough
    status, _, ack = post_batch(url, payload, key=KEY_A, edge="edge-b")
    assert status == 403 and ack["reason"].startswith("edge_mismatch")
    assert post_batch(url, batch("edge-x", "s:1-2", envelopes(2)), key=KEY_A)[0] == 401
    status, _, ack = post_batch(url, b"\x28\xb5\x2f\xfd garbage", key=KEY_A)
    assert status == 400 and ack["status"] == "refused"
    status, _, body = post_batch(url, b"x" * (1024**2 + 10), key=KEY_A)
    assert status == 413 and body["error"]["code"] == "too_large"
    # edge-b: 50 events/s, burst 100
    assert post_batch(url, batch("edge-b", "s:1-90", envelopes(90, seed=8)), key=KEY_B)[0] == 200
    status, headers, ack = post_batch(url, batch("edge-b", "s:91-180", envelopes(90, seed=9)), key=KEY_B)
    assert status == 429 and ack["status"] == "retry" and ack["retry_after_ms"] > 0
    assert int(headers["Retry-After"]) >= 1
    text = get(hub, "/metrics")[2]
    assert isinstance(text, str)
    assert metric(text, "edgekite_hub_batches_refused_total", 'reason="bad_key"') == 2
    assert metric(text, "edgekite_hub_batches_refused_total", 'reason="edge_mismatch"') == 1
    assert metric(text, "edgekite_hub_batches_refused_total", 'reason="unknown_edge"') == 1
    assert metric(text, "edgekite_hub_batches_retry_total", 'reason="rate_limit"') == 1


def test_read_api_needs_the_key_ingest_does_not(hub: HubProcess) -> None:
    for path in ("/api/fleet", "/api/events", "/api/health", "/metrics", "/api/dead_letters"):
        status, _, body = http("GET", f"{hub.http_url}{path}")
        assert status == 401 and body["error"]["code"] == "unauthorized", path  # type: ignore[index]
    assert get(hub, "/api/nothing-here")[0] == 404


def test_fleet_and_health(hub: HubProcess) -> None:
    status, _, fleet = get(hub, "/api/fleet")
    assert status == 200 and fleet["dev_mode"] is False  # type: ignore[index]
    a = next(e for e in fleet["edges"] if e["edge_id"] == "edge-a")  # type: ignore[index]
    assert a["events"] >= 119 and a["rejected"] >= 1 and a["last_seen"] > 0
    health = get(hub, "/api/health")[2]
    assert health["status"] == "ok" and health["storage"]["ok"] and health["last_hub_received_at"]  # type: ignore[index]
    assert health["mqtt"] == {"configured": False, "consumers": 1, "connected": 0}  # type: ignore[index]


def test_event_search_filters_and_pages(hub: HubProcess) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        q = "/api/events?edge_id=edge-a&limit=50" + (f"&cursor={cursor}" if cursor else "")
        status, _, page = get(hub, q)
        assert status == 200, page
        seen += [e["event_id"] for e in page["events"]]  # type: ignore[index]
        cursor = page["next_cursor"]  # type: ignore[index]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 119
    page = get(hub, "/api/events?category=iot&limit=500")[2]
    assert page["events"] and {e["event"]["category"] for e in page["events"]} == {"iot"}  # type: ignore[index]
    ev = page["events"][0]  # type: ignore[index]
    assert {"edge_id", "hub_received_at", "source", "event", "privacy"} <= ev.keys()
    one = get(hub, f"/api/events?source_id={ev['source']['id']}&type={ev['event']['type']}&limit=1")[2]
    assert one["events"][0]["source"]["id"] == ev["source"]["id"]  # type: ignore[index]
    assert get(hub, "/api/events?limit=501")[0] == 400
    assert get(hub, "/api/events?cursor=garbage")[0] == 400
    assert get(hub, "/api/events?severity=loud")[0] == 400
    assert get(hub, "/api/events?q=nothing-contains-this-zzz")[2]["events"] == []  # type: ignore[index]
    assert get(hub, "/api/events?from=2999-01-01T00:00:00Z")[2]["events"] == []  # type: ignore[index]


def test_dead_letters_listed_with_reasons(hub: HubProcess) -> None:
    page = get(hub, "/api/dead_letters?edge_id=edge-a")[2]
    items = page["dead_letters"]  # type: ignore[index]
    assert any(
        d["index"] == 7 and d["code"] == "invalid_envelope" and "category" in d["reason"] for d in items
    )

"""Edge → hub, end to end: real edge and hub processes, real Mosquitto brokers, real chDB.

The hub's numbers must equal the edge's exactly, whatever happens in between: the hub away
for a while, either side killed with -9 at random moments, a forged or misconfigured edge.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore
from tests.conftest import EdgeProcess, HubProcess, Mosquitto, db_rows, start_mosquitto, wait_for
from tests.hub_ingest.helpers import http, metric

FAST_SYNC = {
    "EDGEKITE_SYNC__ACK_TIMEOUT_SECS": "2",
    "EDGEKITE_SYNC__BACKOFF_INITIAL_SECS": "0.2",
    "EDGEKITE_SYNC__BACKOFF_MAX_SECS": "2",
    "EDGEKITE_SYNC__BATCH_MAX_EVENTS": "500",
    "EDGEKITE_SYNC__BATCH_MAX_AGE_MS": "100",
    "EDGEKITE_SYNC__HEARTBEAT_SECS": "1",
}


def edge_http(edge: EdgeProcess) -> str:
    assert edge.http_url, edge.ready_line
    return edge.http_url


def iot(n: int, **data: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "source": {"type": "edge_device", "id": f"cam-{n % 5}"},
        "event": {"category": "iot", "type": "person_detected", "data": {"n": n, **data}},
    }


def post(edge: EdgeProcess, events: list[dict[str, Any]]) -> None:
    for k in range(0, len(events), 1000):
        status, _, body = http(
            "POST",
            f"{edge_http(edge)}/api/events/batch",
            orjson.dumps(events[k : k + 1000]),
            {"Content-Type": "application/json"},
        )
        assert status == 200 and body["accepted"] == len(events[k : k + 1000]), body


def sync_status(edge: EdgeProcess) -> dict[str, Any]:
    status, _, body = http("GET", f"{edge_http(edge)}/api/health")
    assert status == 200
    result: dict[str, Any] = body["sync"]
    return result


def fleet_events(hub: HubProcess, edge_id: str) -> int:
    _, _, body = http("GET", f"{hub.http_url}/api/fleet")
    return next((e["events"] for e in body["edges"] if e["edge_id"] == edge_id), 0)


def edge_ids(edge: EdgeProcess) -> set[str]:
    return {str(uuid.UUID(bytes=r[0])) for r in db_rows(edge.db_path, "SELECT event_id FROM events")}


def hub_storage(data_dir: Path) -> HubStore:
    """The hub's chDB, opened by the test once the hub process has stopped (one process per dir)."""
    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(data_dir)}}))
    store.open()
    return store


def assert_hub_holds_exactly(data_dir: Path, edge_id: str, expected_ids: set[str]) -> None:
    store = hub_storage(data_dir)
    try:
        rows, distinct = store.query_rows(
            f"SELECT count(), uniqExact(event_id) FROM {store.table('events')} WHERE edge_id = {{e:String}}",
            {"e": edge_id},
        )[0]
        ids = {
            str(r[0])
            for r in store.query_rows(
                f"SELECT event_id FROM {store.table('events')} WHERE edge_id = {{e:String}}", {"e": edge_id}
            )
        }
    finally:
        store.close()
    assert distinct == len(expected_ids), "every event reached the hub"
    assert rows == distinct, "and none is stored twice (not even before a merge)"
    assert ids == expected_ids


@pytest.fixture
def hub_broker(tmp_path: Path) -> Any:
    (tmp_path / "hub-broker").mkdir()
    broker = start_mosquitto(tmp_path / "hub-broker")
    yield broker
    broker.proc.terminate()
    broker.proc.wait(10)


def test_hub_away_backlog_grows_then_drains_in_order_and_counts_match(
    tmp_path: Path, hub_broker: Mosquitto
) -> None:
    edge = EdgeProcess(
        tmp_path / "edge",
        *("--http-port", "0", "--mqtt-port", "0", "--edge-id", "farm-1", "--hub-mqtt-url", hub_broker.url),
        env=FAST_SYNC,
    ).start()
    first = [iot(n) for n in range(6000)]
    post(edge, first)
    wait_for(lambda: sync_status(edge)["backlog"] == 6000, timeout=10)
    st = sync_status(edge)
    assert st["connected"] and st["last_success_ms"] is None
    wait_for(lambda: sync_status(edge)["last_error"] is not None, timeout=10)
    assert "no ack" in sync_status(edge)["last_error"]
    assert sync_status(edge)["oldest_unsynced_age_secs"] >= 1

    hub = HubProcess(tmp_path / "hub", "--mqtt-url", hub_broker.url).start()
    wait_for(lambda: sync_status(edge)["backlog"] == 0, timeout=60)
    assert fleet_events(hub, "farm-1") == 6000
    second = [iot(n) for n in range(6000, 7500)]
    post(edge, second)
    wait_for(lambda: fleet_events(hub, "farm-1") == 7500, timeout=30)

    def synced() -> float:  # the hub stores a batch a moment before the edge hears its ack
        return metric(http("GET", f"{edge_http(edge)}/metrics")[2], "edgekite_sync_events_synced_total")

    wait_for(lambda: synced() == 7500, timeout=10)
    wait_for(lambda: sync_status(edge)["backlog"] == 0, timeout=10)
    _, _, metrics_text = http("GET", f"{edge_http(edge)}/metrics")
    assert metric(metrics_text, "edgekite_sync_batches_total", 'result="timeout"') >= 1
    edge.terminate()
    hub.terminate()

    assert_hub_holds_exactly(tmp_path / "hub", "farm-1", {e["event_id"] for e in first + second})
    store = hub_storage(tmp_path / "hub")
    try:
        ledger = store.query_rows(
            f"SELECT first_seq, last_seq, hub_received_at FROM {store.table('batches')} FINAL "
            "WHERE edge_id = 'farm-1' AND count > 0 ORDER BY first_seq"
        )
    finally:
        store.close()
    assert ledger[0][0] == 1 and ledger[-1][1] == 7500
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ledger)), "contiguous ranges"
    arrival = [r[2] for r in ledger]
    assert arrival == sorted(arrival), "the backlog drained in the edge's order"


class SteadyPublisher(threading.Thread):
    """Devices publishing QoS 1 to the site broker (which keeps them while the edge is down)."""

    def __init__(self, broker: Mosquitto, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.total, self.rate = total, rate
        self.ids: list[str] = []
        self.acked = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devices")
        self.client.max_inflight_messages_set(500)
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)

    def _on_publish(self, *_: object) -> None:
        with self._lock:
            self.acked += 1

    def run(self) -> None:
        self.client.loop_start()
        start = time.monotonic()
        for n in range(self.total):
            env = iot(n)
            self.ids.append(env["event_id"])
            self.client.publish(f"ek/v1/cam-{n % 5}/events", orjson.dumps(env), qos=1)
            ahead = n / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        deadline = time.monotonic() + 30
        while self.acked < self.total and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.loop_stop()


@pytest.mark.slow
def test_kill9_of_edge_and_hub_at_random_moments_loses_and_doubles_nothing(
    tmp_path: Path, mosquitto: Mosquitto, hub_broker: Mosquitto
) -> None:
    rng = random.Random(5)
    edge_args = (
        *("--mqtt-url", mosquitto.url, "--http-port", "0", "--edge-id", "shop-1"),
        *("--hub-mqtt-url", hub_broker.url),
    )
    edge = EdgeProcess(tmp_path / "edge", *edge_args, env=FAST_SYNC).start()
    hub = HubProcess(tmp_path / "hub", "--mqtt-url", hub_broker.url).start()
    pub = SteadyPublisher(mosquitto, total=16_000, rate=1600)
    pub.start()
    kills = {"edge": 0, "hub": 0}
    while pub.is_alive() or sum(kills.values()) < 6:
        time.sleep(rng.uniform(0.8, 2.0))
        victim = rng.choice(["edge", "hub"])
        kills[victim] += 1
        if victim == "edge":
            edge.kill9()
            time.sleep(rng.uniform(0.1, 0.8))
            edge = EdgeProcess(tmp_path / "edge", *edge_args, env=FAST_SYNC).start()
        else:
            hub.kill9()
            time.sleep(rng.uniform(0.1, 0.8))
            hub = HubProcess(tmp_path / "hub", "--mqtt-url", hub_broker.url).start()
    pub.join(60)
    assert pub.acked == 16_000 and kills["edge"] >= 2 and kills["hub"] >= 2, kills
    wait_for(lambda: db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0] == 16_000, timeout=60)
    wait_for(lambda: sync_status(edge)["backlog"] == 0, timeout=90)
    assert fleet_events(hub, "shop-1") == 16_000
    ids = edge_ids(edge)
    assert ids == set(pub.ids), "the edge itself lost nothing"
    edge.terminate()
    hub.terminate()
    assert_hub_holds_exactly(tmp_path / "hub", "shop-1", ids)


def test_http_transport_with_keys_privacy_border_and_a_forged_edge(tmp_path: Path) -> None:
    key = "shop-2-key-0123456789abcdef"
    hub = HubProcess(
        tmp_path / "hub", env={"EDGEKITE_HUB_EDGES": orjson.dumps({"shop-2": {"api_key": key}}).decode()}
    ).start()
    privacy = {
        **FAST_SYNC,
        "EDGEKITE_SYNC__PII": "hash",
        "EDGEKITE_SYNC__PII_FIELDS": '["ip"]',
        "EDGEKITE_SYNC__SHORT_RETENTION": "local",
    }
    base = ("--http-port", "0", "--mqtt-port", "0", "--hub-url", hub.http_url)
    forged = EdgeProcess(
        tmp_path / "forged",
        *base,
        "--edge-id",
        "shop-2",
        "--hub-api-key",
        "not-the-key-0123456789",
        env=privacy,
    ).start()
    post(forged, [iot(1)])
    wait_for(lambda: "refused" in (sync_status(forged)["last_error"] or ""), timeout=15)
    wait_for(lambda: sync_status(forged)["backlog"] == 1, timeout=5)  # a refused batch stays at the edge
    _, _, hub_metrics = http("GET", f"{hub.http_url}/metrics")
    assert (
        sum(
            float(line.split()[-1])
            for line in hub_metrics.splitlines()
            if line.startswith("edgekite_hub_batches_refused_total{")
        )
        >= 1
    )
    forged.terminate()

    edge = EdgeProcess(
        tmp_path / "edge", *base, "--edge-id", "shop-2", "--hub-api-key", key, env=privacy
    ).start()
    web = [
        {
            "event_id": str(uuid.uuid4()),
            "source": {"type": "browser", "id": "site-a"},
            "event": {
                "category": "web",
                "type": "pageview",
                "data": {"url": f"/p{i}", "ip": f"198.51.100.{i}"},
            },
            "privacy": {"pii": True},
        }
        for i in range(10)
    ]
    short = [{**iot(i), "privacy": {"retention_class": "short"}} for i in range(5)]
    plain = [iot(i) for i in range(10)]
    post(edge, web + short + plain)
    wait_for(lambda: fleet_events(hub, "shop-2") == 20, timeout=30)  # the 5 'short' ones stay on the site
    wait_for(lambda: sync_status(edge)["backlog"] == 0, timeout=5)
    _, _, found = http("GET", f"{hub.http_url}/api/events?edge_id=shop-2&category=web&limit=50")
    ips = {e["event"]["data"]["ip"] for e in found["events"]}
    assert len(ips) == 10 and all(ip.startswith("hmac256:") for ip in ips), ips
    _, _, raw = http("GET", f"{hub.http_url}/api/events?q=198.51.100&limit=50")
    assert raw["events"] == [], "no raw visitor IP reached the hub"
    _, _, edge_metrics = http("GET", f"{edge_http(edge)}/metrics")
    assert metric(edge_metrics, "edgekite_sync_events_withheld_total", 'reason="short"') == 5
    wait_for(lambda: sync_status(edge)["withheld"] == {"pii": 0, "short": 5}, timeout=5)
    assert len(db_rows(edge.db_path, "SELECT 1 FROM events WHERE retention_class = 'short'")) == 5
    edge.terminate()
    hub.terminate()

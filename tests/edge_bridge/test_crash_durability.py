"""Guarantee 1 under fire: kill -9 of ``edgekite edge`` at random moments during a QoS 1 load.

Every event the broker accepted (PUBACK to the publisher) must end up stored exactly once,
including id-less events (the edge mints their ids, so a redelivery must be recognised).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psutil
import pytest

from tests.conftest import EdgeProcess, Mosquitto, db_rows, wait_for

TOTAL = 24_000
MINIMAL_EVERY = 5  # one in five events comes in the minimal form, with no event_id


class Publisher(threading.Thread):
    """Publishes TOTAL QoS 1 events at a steady pace and records which ones the broker acked."""

    def __init__(self, broker: Mosquitto, rate: float) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-publisher")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.acked_mids: set[int] = set()
        self.mid_to_n: dict[int, int] = {}
        self.ids: dict[int, str | None] = {}
        self.rate = rate
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._lock:
            self.acked_mids.add(mid)

    @property
    def acked(self) -> set[int]:
        with self._lock:
            return {self.mid_to_n[m] for m in self.acked_mids if m in self.mid_to_n}

    def run(self) -> None:
        self.client.loop_start()
        start = time.monotonic()
        for n in range(TOTAL):
            source = f"dev-{n % 13}"
            body: dict[str, object] = {
                "source": {"type": "edge_device"},
                "event": {"category": "iot", "type": "sensor_reading", "data": {"n": n, "value": n * 0.5}},
            }
            eid = None if n % MINIMAL_EVERY == 0 else str(uuid.uuid4())
            if eid is not None:
                body["event_id"] = eid
            self.ids[n] = eid
            info = self.client.publish(f"ek/v1/{source}/events", orjson.dumps(body), qos=1)
            with self._lock:
                self.mid_to_n[info.mid] = n
            ahead = n / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)


def bridge_children(edge: EdgeProcess) -> list[psutil.Process]:
    assert edge.proc is not None
    return [
        p
        for p in psutil.Process(edge.proc.pid).children()
        if "edge_bridge.bridge_process" in " ".join(p.cmdline())
    ]


def assert_stored_exactly_once(edge: EdgeProcess, pub: Publisher) -> None:
    rows = db_rows(edge.db_path, "SELECT event_id, json_extract(ek_json(payload_json), '$.n') FROM events")
    ns = [n for _, n in rows]
    assert len(ns) == len(set(ns)), f"{len(ns) - len(set(ns))} events stored twice"
    assert set(ns) == set(range(TOTAL)), f"missing: {sorted(set(range(TOTAL)) - set(ns))[:20]}"
    by_n = {n: eid for eid, n in rows}
    for n, eid in pub.ids.items():
        if eid is not None:
            assert uuid.UUID(bytes=by_n[n]) == uuid.UUID(eid)
    assert db_rows(edge.db_path, "SELECT sum(count) FROM hourly_counts")[0][0] == TOTAL, "rollups count once"


@pytest.mark.slow
def test_kill9_during_load_loses_nothing_and_stores_nothing_twice(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(20261123)
    data = tmp_path / "edge"
    args = ("--mqtt-url", mosquitto.url, "--http-port", "0", "--edge-id", "crash")
    edge = EdgeProcess(data, *args).start()
    pub = Publisher(mosquitto, rate=4000)
    pub.start()
    kills = 0
    stored_at_kill = []
    while pub.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.4, 1.6))
        children = bridge_children(edge)
        assert len(children) == 1, "the bridge runs in its own child process"
        edge.kill9()
        kills += 1
        stored_at_kill.append(db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0])
        # The orphaned child sees its pipe close and leaves at once, acknowledging nothing more.
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, "the bridge child outlived the edge"
        edge = EdgeProcess(data, *args).start()
        if kills >= 6:
            break
    pub.join(60)
    assert not pub.is_alive()
    wait_for(lambda: len(pub.acked) == TOTAL, timeout=60)

    def stored() -> int:
        return int(db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0])

    wait_for(lambda: stored() >= TOTAL, timeout=30)
    time.sleep(1.0)  # any straggling redelivery would show up as an extra row now
    assert edge.terminate() == 0, "SIGTERM drains and exits cleanly"

    assert_stored_exactly_once(edge, pub)
    assert kills >= 3
    assert any(0 < s < TOTAL for s in stored_at_kill), f"no kill landed mid-load: {stored_at_kill}"


@pytest.mark.slow
def test_kill9_of_the_bridge_child_loses_nothing_and_the_edge_starts_a_new_one(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The child holds the broker session and PUBACKs what the edge committed: when it dies,
    what it had forwarded but not yet acknowledged comes again and is recognised."""
    rng = random.Random(99)
    args = ("--mqtt-url", mosquitto.url, "--http-port", "0", "--edge-id", "child-crash")
    edge = EdgeProcess(tmp_path / "edge", *args).start()
    pub = Publisher(mosquitto, rate=4000)
    pub.start()
    kills, stored_at_kill, killed_pids = 0, [], set()
    while pub.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.4, 1.2))
        wait_for(lambda: len(bridge_children(edge)) == 1, timeout=10)
        (child,) = bridge_children(edge)
        assert child.pid not in killed_pids
        child.kill()
        child.wait(5)
        killed_pids.add(child.pid)
        kills += 1
        stored_at_kill.append(db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0])
        if kills >= 5:
            break
    pub.join(60)
    assert not pub.is_alive()
    wait_for(lambda: len(pub.acked) == TOTAL, timeout=60)
    wait_for(lambda: db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0] >= TOTAL, timeout=30)
    time.sleep(1.0)
    with urllib.request.urlopen(edge.http_url + "/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        metrics = resp.read().decode()
    assert f"edgekite_bridge_process_restarts_total {float(kills)}" in metrics
    assert edge.proc is not None and edge.proc.poll() is None, "the edge itself never went down"
    assert edge.terminate() == 0
    assert_stored_exactly_once(edge, pub)
    assert any(0 < s < TOTAL for s in stored_at_kill), f"no kill landed mid-load: {stored_at_kill}"


class ReconnectingPublisher(threading.Thread):
    """A device on the edge's embedded broker: paho resends unacked QoS 1 messages after reconnecting."""

    def __init__(self, port: int, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="device-publisher", clean_session=False
        )
        self.client.max_inflight_messages_set(500)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.on_publish = self._on_publish
        self.acked_mids: set[int] = set()
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.total, self.rate, self.port = total, rate, port
        self._lock = threading.Lock()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._lock:
            self.acked_mids.add(mid)

    def run(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        start = time.monotonic()
        for n in range(self.total):
            body: dict[str, object] = {
                "source": {"type": "edge_device"},
                "event": {"category": "iot", "type": "motion", "data": {"n": n}},
            }
            if n % MINIMAL_EVERY:
                body["event_id"] = str(uuid.uuid4())
            self.infos.append(self.client.publish(f"ek/v1/pir-{n % 5}/events", orjson.dumps(body), qos=1))
            ahead = n / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def all_acked(self) -> bool:
        with self._lock:
            return len(self.acked_mids) >= self.total


@pytest.mark.slow
def test_kill9_with_the_embedded_broker_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """The embedded broker PUBACKs only after commit, so a crash loses nothing a device was told is safe."""
    from tests.conftest import free_port

    rng = random.Random(7)
    total = 12_000
    port = free_port()
    data = tmp_path / "edge"
    args = ("--mqtt-port", str(port), "--http-port", "0", "--edge-id", "embedded")
    edge = EdgeProcess(data, *args).start()
    pub = ReconnectingPublisher(port, total, rate=3000)
    pub.start()
    kills, acked_at_kill, stored_at_kill = 0, [], []
    while pub.is_alive() or kills < 3:
        time.sleep(rng.uniform(0.5, 1.2))
        with pub._lock:
            acked_now = len(pub.acked_mids)
        edge.kill9()
        kills += 1
        acked_at_kill.append(acked_now)
        stored_at_kill.append(db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0])
        edge = EdgeProcess(data, *args).start()
        if kills >= 5:
            break
    pub.join(60)
    wait_for(pub.all_acked, timeout=60)
    pub.client.loop_stop()
    assert edge.terminate() == 0
    # At every kill, everything acknowledged so far was already in SQLite.
    assert all(s >= a for s, a in zip(stored_at_kill, acked_at_kill, strict=True)), (
        stored_at_kill,
        acked_at_kill,
    )
    rows = db_rows(edge.db_path, "SELECT json_extract(ek_json(payload_json), '$.n') FROM events")
    ns = [r[0] for r in rows]
    assert len(ns) == len(set(ns)), f"{len(ns) - len(set(ns))} events stored twice"
    assert set(ns) == set(range(total))
    assert any(0 < s < total for s in stored_at_kill), stored_at_kill

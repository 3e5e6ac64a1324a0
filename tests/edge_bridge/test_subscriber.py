"""The bridge against a real Mosquitto: what devices publish ends up in SQLite, right and once."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from edge_bridge.inbound import InboundRouter
from edge_bridge.subscriber import Subscriber, make_subscriber
from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore
from tests.conftest import Mosquitto, db_rows, wait_for


@dataclass
class Bridge:
    config: EdgeConfig
    store: EdgeStore
    metrics: EdgeMetrics
    sub: Subscriber

    def count(self, where: str = "1") -> int:
        return int(db_rows(self.config.db_path, f"SELECT count(*) FROM events WHERE {where}")[0][0])

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def stop(self) -> None:
        self.sub.stop()
        self.store.close()


@pytest.fixture(params=[True, False], ids=["child-process", "thread"])
def start_bridge(
    request: pytest.FixtureRequest, mosquitto: Mosquitto, make_config: Callable[..., EdgeConfig]
) -> Iterator[Callable[..., Bridge]]:
    """Every behaviour below holds in both bridge modes (``mqtt.bridge_process``)."""
    started: list[Bridge] = []

    def start(**sections: object) -> Bridge:
        mqtt_section = {
            "url": mosquitto.url,
            "bridge_process": request.param,
            **dict(sections.pop("mqtt", {})),  # type: ignore[call-overload]
        }
        cfg = make_config(mqtt=mqtt_section, **sections)
        metrics = EdgeMetrics()
        store = EdgeStore(cfg, metrics).open()
        sub = make_subscriber(cfg, store, metrics, InboundRouter(cfg), url=mosquitto.url)
        sub.start()
        assert sub.wait_connected(10), sub.last_connect_error
        bridge = Bridge(cfg, store, metrics, sub)
        started.append(bridge)
        return bridge

    yield start
    for b in started:
        if b.sub.connected:
            b.stop()


def mosquitto_pub(
    broker: Mosquitto, topic: str, *, message: bytes | None = None, file: Path | None = None
) -> None:
    args = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic]
    if file is not None:
        args += ["-f", str(file)]
    else:
        args += ["-s"]
    subprocess.run(args, input=message if file is None else None, check=True, timeout=10)


def paho_publisher(broker: Mosquitto) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(500)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_mosquitto_pub_full_envelope_lands_with_every_field(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    event_id = "0190a5c2-7c3e-7b3a-9a43-1c2d3e4f5a6b"
    envelope = {
        "event_id": event_id,
        "observed_at": "2026-11-23T10:30:00.000Z",
        "source": {
            "type": "edge_device",
            "id": "cam-barn-01",
            "version": "2.1.0",
            "metadata": {"site_id": "farm-17"},
        },
        "event": {
            "category": "iot",
            "type": "person_detected",
            "severity": "warn",
            "data": {
                "camera_id": "barn",
                "confidence": 0.94,
                "bbox": {"x": 100, "y": 200, "w": 50, "h": 120},
            },
        },
        "correlation": {"correlation_id": "corr-1", "incident_id": "inc-9"},
        "attachments": [
            {
                "kind": "thumbnail",
                "uri": "file:///media/det_001.jpg",
                "sha256": "0f" * 32,
                "size_bytes": 45000,
            }
        ],
        "privacy": {"pii": False, "retention_class": "long"},
        "sync": {"source_seq": 77},
    }
    mosquitto_pub(mosquitto, "ek/v1/cam-barn-01/events", message=orjson.dumps(envelope))
    wait_for(lambda: bridge.count() == 1)
    (row,) = db_rows(
        bridge.config.db_path,
        "SELECT event_id, observed_at, received_at, source_type, source_id, source_seq, category, type, "
        "severity, correlation_id, ek_json(payload_json), ek_json(attachments_json), pii, retention_class, "
        "ek_json(meta_json), flags, "
        "synced FROM events",
    )
    assert uuid.UUID(bytes=row[0]) == uuid.UUID(event_id)
    assert row[1] == 1_795_429_800_000
    assert abs(row[2] - bridge.store.now_ms()) < 10_000
    assert row[3:10] == ("edge_device", "cam-barn-01", 77, "iot", "person_detected", "warn", "corr-1")
    assert orjson.loads(row[10]) == envelope["event"]["data"]  # type: ignore[index]
    assert orjson.loads(row[11]) == envelope["attachments"]
    assert row[12:14] == (0, "long")
    assert orjson.loads(row[14]) == {
        "source_version": "2.1.0",
        "source_metadata": {"site_id": "farm-17"},
        "incident_id": "inc-9",
    }
    assert row[15:] == (0, 0)


def test_minimal_form_from_mosquitto_pub_is_filled_in(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    for _ in range(3):
        mosquitto_pub(
            mosquitto,
            "ek/v1/sensor-tank-level/events",
            message=b'{"source":{"type":"edge_device"},"event":{"category":"iot","type":"sensor_reading","data":{"value":71.5}}}',
        )
    wait_for(lambda: bridge.count() == 3)
    rows = db_rows(
        bridge.config.db_path,
        "SELECT event_id, source_id, source_seq, observed_at, received_at FROM events ORDER BY rowid",
    )
    assert len({r[0] for r in rows}) == 3
    assert all(uuid.UUID(bytes=r[0]).version == 7 for r in rows)
    assert [r[1:3] for r in rows] == [
        ("sensor-tank-level", 1),
        ("sensor-tank-level", 2),
        ("sensor-tank-level", 3),
    ]
    assert all(r[3] == r[4] for r in rows), "observed_at defaults to received_at"


def test_paho_publisher_load_is_stored_exactly_once(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    pub = paho_publisher(mosquitto)
    ids = []
    infos = []
    for i in range(2000):
        eid = str(uuid.uuid4())
        ids.append(eid)
        env = {
            "event_id": eid,
            "source": {"type": "server"},
            "event": {"category": "app", "type": "job_done", "data": {"i": i}},
        }
        infos.append(pub.publish(f"ek/v1/worker-{i % 7}/events", orjson.dumps(env), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    # replay the first 100: a producer retry after a lost ack
    for i in range(100):
        env = {
            "event_id": ids[i],
            "source": {"type": "server"},
            "event": {"category": "app", "type": "job_done", "data": {"i": i}},
        }
        pub.publish(f"ek/v1/worker-{i % 7}/events", orjson.dumps(env), qos=1).wait_for_publish(10)
    wait_for(lambda: bridge.metric("edgekite_events_duplicate_total") == 100)
    pub.loop_stop()
    assert bridge.count() == 2000
    stored = {
        str(uuid.UUID(bytes=r[0])) for r in db_rows(bridge.config.db_path, "SELECT event_id FROM events")
    }
    assert stored == set(ids)
    assert bridge.metric("edgekite_events_stored_total") == 2000
    assert db_rows(bridge.config.db_path, "SELECT sum(count) FROM hourly_counts")[0][0] == 2000
    seqs = db_rows(
        bridge.config.db_path, "SELECT source_id, max(source_seq), count(*) FROM events GROUP BY 1"
    )
    assert all(mx == n for _, mx, n in seqs), "per-source sequence is gapless for edge-assigned seqs"


def test_garbage_is_dead_lettered_and_good_events_between_still_land(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    bridge = start_bridge()
    topic = "ek/v1/cam-1/events"

    def good(n: int) -> bytes:
        return orjson.dumps(
            {
                "source": {"type": "edge_device"},
                "event": {"category": "iot", "type": "motion", "data": {"n": n}},
            }
        )

    big = tmp_path / "big.json"
    big.write_bytes(
        b'{"source":{"type":"edge_device"},"event":{"category":"iot","type":"x","data":{"p":"'
        + b"a" * 1024 * 1024
        + b'"}}}'
    )
    binary = tmp_path / "bin"
    binary.write_bytes(bytes(range(256)) * 4)
    garbage: list[tuple[bytes | Path, str]] = [
        (b"{this is not json", "invalid_json"),
        (binary, "invalid_json"),
        (b'{"source":{"type":"edge_device"},"event":{"category":"iot","type":42}}', "invalid_envelope"),
        (big, "too_large"),
        (
            b'{"source":{"type":"edge_device"},"event":{"category":"iot","type":"x","data":'
            + b'{"a":' * 1000
            + b"1"
            + b"}" * 1000
            + b"}}",
            "too_deep",
        ),
        (b'{"source":{"type":"edge_device"},"event":{"category":"weather","type":"x"}}', "invalid_envelope"),
        (
            b'{"source":{"type":"edge_device"},"observed_at":"last tuesday",'
            b'"event":{"category":"iot","type":"x"}}',
            "invalid_envelope",
        ),
    ]
    for n, (bad, _) in enumerate(garbage):
        mosquitto_pub(mosquitto, topic, message=good(n))
        if isinstance(bad, Path):
            mosquitto_pub(mosquitto, topic, file=bad)
        else:
            mosquitto_pub(mosquitto, topic, message=bad)
    mosquitto_pub(mosquitto, topic, message=good(99))
    mosquitto_pub(mosquitto, "ek/v1/bad+id/events".replace("+", "%"), message=good(100))
    wait_for(
        lambda: db_rows(bridge.config.db_path, "SELECT count(*) FROM dead_letter")[0][0] == len(garbage) + 1
    )
    assert bridge.count() == len(garbage) + 1
    codes = [r[0] for r in db_rows(bridge.config.db_path, "SELECT code FROM dead_letter ORDER BY id")]
    assert codes == [code for _, code in garbage] + ["bad_topic"]
    reasons = [r[0] for r in db_rows(bridge.config.db_path, "SELECT reason FROM dead_letter ORDER BY id")]
    assert "event.type" in reasons[2] and "1048" in reasons[3] and "observed_at" in reasons[6]
    assert bridge.metric("edgekite_events_rejected_total", reason="invalid_envelope") == 3
    assert bridge.metric("edgekite_events_rejected_total", reason="too_large") == 1
    assert bridge.sub.connected, "the bridge never dies of input"


def test_persistent_session_receives_what_was_published_while_away(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    bridge.stop()
    pub = paho_publisher(mosquitto)
    for i in range(300):
        env = {
            "source": {"type": "edge_device"},
            "event": {"category": "iot", "type": "motion", "data": {"i": i}},
            "event_id": str(uuid.uuid4()),
        }
        pub.publish("ek/v1/cam-2/events", orjson.dumps(env), qos=1).wait_for_publish(5)
    pub.loop_stop()
    again = start_bridge()
    wait_for(lambda: again.count() == 300)


def test_mapped_foreign_topic_becomes_envelopes(
    mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge(
        mappings=[
            {
                "filter": "frigate/events",
                "source_id": "frigate-{after.camera}",
                "type": "{after.label}_detected",
                "event_id": "{after.id}:{type}",
                "observed_at_field": "after.start_time",
                "observed_at_unit": "s",
            },
            {"filter": "zigbee/+/temperature", "source_id": "{topic[1]}", "type": "sensor_reading"},
        ]
    )
    frigate = {
        "type": "new",
        "after": {
            "id": "1700000000.5-abc",
            "camera": "gate",
            "label": "person",
            "top_score": 0.8,
            "start_time": 1700000000.5,
        },
    }
    mosquitto_pub(mosquitto, "frigate/events", message=orjson.dumps(frigate))
    mosquitto_pub(mosquitto, "frigate/events", message=orjson.dumps(frigate))  # Frigate resends: deduplicated
    mosquitto_pub(mosquitto, "zigbee/greenhouse-1/temperature", message=b"21.5")
    mosquitto_pub(mosquitto, "frigate/events", message=b'{"type":"new"}')  # lacks after.camera
    wait_for(lambda: bridge.count() == 2 and bridge.metric("edgekite_events_duplicate_total") == 1)
    rows = dict(
        db_rows(
            bridge.config.db_path,
            "SELECT source_id, type || ' ' || observed_at || ' ' || ek_json(payload_json) FROM events",
        )
    )
    assert rows["frigate-gate"].startswith("person_detected 1700000000500 ")
    assert rows["greenhouse-1"].startswith("sensor_reading ") and rows["greenhouse-1"].endswith(
        '{"value":21.5}'
    )
    wait_for(lambda: db_rows(bridge.config.db_path, "SELECT code FROM dead_letter") == [("mapping_failed",)])


def test_writer_backpressure_bounds_memory(mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]) -> None:
    """A stalled writer stops the bridge reading; nothing is lost and the queue never exceeds its bound."""
    bridge = start_bridge(store={"queue_max_messages": 50}, mqtt={"receive_maximum": 100})
    blocker = __import__("sqlite3").connect(bridge.config.db_path, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the writer cannot commit
    pub = paho_publisher(mosquitto)
    infos = [
        pub.publish(
            "ek/v1/cam-3/events",
            orjson.dumps(
                {
                    "event_id": str(uuid.uuid4()),
                    "source": {"type": "edge_device"},
                    "event": {"category": "iot", "type": "m"},
                }
            ),
            qos=1,
        )
        for _ in range(1000)
    ]
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, bridge.store.queue_depth)
            stop.wait(0.01)

    w = threading.Thread(target=watch)
    w.start()
    stop.wait(1.5)
    assert bridge.count() == 0
    blocker.execute("ROLLBACK")
    blocker.close()
    for info in infos:
        info.wait_for_publish(20)
    wait_for(lambda: bridge.count() == 1000, timeout=30)
    stop.set()
    w.join()
    pub.loop_stop()
    assert peak <= 50


def test_stop_acknowledges_everything_it_stored_so_nothing_comes_again(
    request: pytest.FixtureRequest, mosquitto: Mosquitto, start_bridge: Callable[..., Bridge]
) -> None:
    """stop() commits what it holds and sends those PUBACKs before leaving: the next session on
    the same client id gets no redelivery (a copy would show as a counted duplicate)."""
    N = 10_000  # enough that the stop lands mid-stream even when the bridge keeps pace
    bridge = start_bridge()
    pub = paho_publisher(mosquitto)
    infos = [
        pub.publish(
            "ek/v1/cam-4/events",
            orjson.dumps(
                {
                    "event_id": str(uuid.uuid4()),
                    "source": {"type": "edge_device"},
                    "event": {"category": "iot", "type": "motion", "data": {"i": i}},
                }
            ),
            qos=1,
        )
        for i in range(N)
    ]
    wait_for(lambda: bridge.count() >= 200, timeout=20)
    bridge.stop()  # mid-stream: some stored, some still queued at the broker
    stored_before = bridge.count()
    assert stored_before < N, "the stop should land mid-stream"
    for info in infos:
        info.wait_for_publish(20)
    pub.loop_stop()
    again = start_bridge()
    wait_for(lambda: again.count() == N, timeout=60)
    time.sleep(1.0)  # a late redelivery would still be counted now
    assert again.metric("edgekite_events_duplicate_total") == 0, "a stored message came again"
    assert again.count() == N

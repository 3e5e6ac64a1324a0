"""The one command: `edgekite edge` on embedded defaults, `edgekite schema`, clean shutdown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from tests.conftest import EdgeProcess, db_rows, free_port, wait_for


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback URL built by the test
        return resp.status, resp.read()


def test_schema_prints_the_envelope_json_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgekite.cli", "schema"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    schema = json.loads(out.stdout)
    assert schema["title"] == "EdgeKite event envelope"
    assert "event_id" in schema["properties"]


def test_edge_on_embedded_defaults_ingests_serves_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    mqtt_port = free_port()
    edge = EdgeProcess(tmp_path / "data", "--mqtt-port", str(mqtt_port), "--http-port", "0").start()
    match = re.search(r"HTTP (http://\S+)", edge.ready_line)
    assert match, edge.ready_line
    base = match.group(1)
    assert f"MQTT mqtt://0.0.0.0:{mqtt_port}" in edge.ready_line

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cli-test")
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    for i in range(200):
        env = {
            "event_id": str(uuid.uuid4()),
            "source": {"type": "edge_device"},
            "event": {"category": "iot", "type": "door_opened", "data": {"i": i}},
        }
        client.publish("ek/v1/door-1/events", orjson.dumps(env), qos=1).wait_for_publish(5)
    client.publish("ek/v1/door-1/events", b"garbage", qos=1).wait_for_publish(5)
    client.loop_stop()
    # Acknowledged means committed: the rows are there the moment the PUBACKs came back.
    assert db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0] == 200

    status, body = http_get(f"{base}/metrics")
    text = body.decode()
    assert status == 200
    assert "edgekite_events_stored_total 200.0" in text
    assert 'edgekite_events_rejected_total{reason="invalid_json"} 1.0' in text
    status, body = http_get(f"{base}/api/health")
    health = json.loads(body)
    assert (status, health["status"], health["mqtt_connected"]) == (200, "ok", True)
    # The HLL sketches are loaded without numpy (edgekite.hll): ~11 MB the edge does not map.
    assert edge.proc is not None
    assert "numpy" not in Path(f"/proc/{edge.proc.pid}/maps").read_text()
    assert edge.terminate() == 0
    wait_for(
        lambda: (
            not (edge.db_path.parent / "edge.db-wal").exists()
            or (edge.db_path.parent / "edge.db-wal").stat().st_size == 0
        )
    )


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[mqtt]\nreceive_maximum = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "edgekite.cli", "edge", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "bad configuration" in out.stderr and "receive_maximum" in out.stderr


def test_the_edge_process_does_not_import_paho_or_the_simulator() -> None:
    """With the default bridge child, the edge process holds no broker session of its own:
    paho and the simulator stay out of it (~1 MB of its idle RSS)."""
    code = (
        "import sys\n"
        "from edgekite.cli import build_parser\n"
        "build_parser().parse_args(['edge'])\n"
        "import edgekite.edge_node, edge_bridge.subscriber, edge_api.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'paho' or m == 'edgekite.simulate'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"

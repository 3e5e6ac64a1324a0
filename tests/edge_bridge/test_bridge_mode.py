"""``mqtt.bridge_process = "auto"``: a child process only where a second CPU can run it."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.publish as publish
import psutil
import pytest

from tests.conftest import EdgeProcess, Mosquitto, db_rows, wait_for


def bridge_children(edge: EdgeProcess) -> list[psutil.Process]:
    assert edge.proc is not None
    return [
        p
        for p in psutil.Process(edge.proc.pid).children()
        if "edge_bridge.bridge_process" in " ".join(p.cmdline())
    ]


def publish_and_count(mosquitto: Mosquitto, edge: EdgeProcess, n: int) -> int:
    envelopes = [
        orjson.dumps(
            {
                "source": {"type": "edge_device"},
                "event": {"category": "iot", "type": "ping", "data": {"n": i}},
            }
        )
        for i in range(n)
    ]
    publish.multiple(
        [{"topic": "ek/v1/pi-zero/events", "payload": e, "qos": 1} for e in envelopes],
        hostname=mosquitto.host,
        port=mosquitto.port,
    )
    return wait_for(lambda: (c := db_rows(edge.db_path, "SELECT count(*) FROM events")[0][0]) == n and c)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to compare with 1")
def test_on_one_cpu_the_bridge_runs_in_the_edge_process_and_events_still_land(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # the edge inherits it, as under `taskset -c 0`
    try:
        edge = EdgeProcess(tmp_path / "one", "--mqtt-url", mosquitto.url, "--http-port", "0").start()
    finally:
        os.sched_setaffinity(0, before)
    assert bridge_children(edge) == []
    assert publish_and_count(mosquitto, edge, 50) == 50
    assert "the MQTT bridge runs in the edge process" in edge.log_path.read_text()
    health = api(edge, "/api/health")
    # paho and the writer share one GIL here: a deeper queue would only hold more rows
    assert (health["mqtt_bridge"], health["ingest_queue_max_bytes"]) == ("edge_process", 1024**2)
    proc = api(edge, "/api/resources")["process"]
    assert proc["helper_processes"] == [] and proc["total_rss_bytes"] == proc["rss_bytes"]
    assert edge.terminate() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_with_two_cpus_the_bridge_has_its_own_process(mosquitto: Mosquitto, tmp_path: Path) -> None:
    edge = EdgeProcess(tmp_path / "two", "--mqtt-url", mosquitto.url, "--http-port", "0").start()
    (child,) = wait_for(lambda: bridge_children(edge))
    assert publish_and_count(mosquitto, edge, 50) == 50
    health = api(edge, "/api/health")
    assert (health["mqtt_bridge"], health["ingest_queue_max_bytes"]) == ("child_process", 4 * 1024**2)
    helpers = api(edge, "/api/resources")["process"]["helper_processes"]
    assert [(h["pid"], h["kind"]) for h in helpers] == [(child.pid, "mqtt_bridge")]
    assert edge.terminate() == 0


def api(edge: EdgeProcess, path: str) -> Any:
    with urllib.request.urlopen(edge.http_url.rstrip("/") + path, timeout=5) as resp:  # noqa: S310 - loopback
        return orjson.loads(resp.read())

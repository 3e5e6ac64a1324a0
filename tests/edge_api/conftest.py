"""A real edge (subprocess, embedded broker) filled through MQTT by the real bridge."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from edgekite.simulate import TrafficGenerator
from tests.conftest import EdgeProcess, free_port

SIM_EVENTS = 3000
T0 = 1_795_400_000_000  # a fixed hour in the past day of "now" is not needed: incidents use explicit times


@dataclass
class Edge:
    proc: EdgeProcess
    base: str
    mqtt_port: int
    published: list[tuple[str, dict[str, Any]]]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(self.base + path, headers=headers)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return request(self.base + path, body, headers=headers)


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310 - loopback test URL
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fill-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()


def start_edge(tmp: Path, env: dict[str, str] | None = None) -> tuple[EdgeProcess, str, int]:
    port = free_port()
    proc = EdgeProcess(tmp / "data", "--mqtt-port", str(port), "--http-port", "0", env=env).start()
    assert proc.http_url, proc.ready_line
    return proc, proc.http_url, port


@pytest.fixture(scope="module")
def filled_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    proc, base, port = start_edge(tmp_path_factory.mktemp("api"))
    gen = TrafficGenerator(seed=42)
    published = gen.events(SIM_EVENTS)
    publish_all(port, [(f"ek/v1/{sid}/events", orjson.dumps(env)) for sid, env in published])
    edge = Edge(proc, base, port, published)
    yield edge
    proc.terminate()

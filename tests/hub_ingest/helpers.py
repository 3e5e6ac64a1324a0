"""Building batches the way an edge does (sync_protocol.encode_batch + sign), for hub tests."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekite.config import HubConfig, load_hub_config
from edgekite.simulate import TrafficGenerator
from edgekite.sync_protocol import (
    CONTENT_TYPE,
    SIGNATURE_HEADER,
    SIGNATURE_PROPERTY,
    Ack,
    BatchHeader,
    encode_batch,
    sign,
)
from edgekite.topics import hub_ack_topic, hub_batch_topic, hub_status_topic

KEY_A = "edge-a-key-0123456789abcdef"
KEY_B = "edge-b-key-0123456789abcdef"


def envelopes(n: int, seed: int = 1, received_at: int | None = None) -> list[dict[str, Any]]:
    """Simulator-like web + IoT envelopes as the edge forwards them (event_id and received_at set)."""
    now = received_at if received_at is not None else int(time.time() * 1000)
    out = []
    for _, env in TrafficGenerator(seed).events(n):
        env["received_at"] = now
        out.append(env)
    return out


def batch(
    edge_id: str,
    batch_id: str,
    events: list[Any],
    *,
    first_seq: int = 1,
    backlog: int = 0,
    header_edge: str | None = None,
) -> bytes:
    header = BatchHeader(
        edge_id=header_edge or edge_id,
        batch_id=batch_id,
        first_seq=first_seq,
        last_seq=first_seq + max(len(events), 1) - 1,
        created_at=int(time.time() * 1000),
        count=len(events),
        backlog=backlog,
    )
    return encode_batch(header, [orjson.dumps(e) for e in events])


def hub_config(data_dir: Path, **sections: Any) -> HubConfig:
    over: dict[str, Any] = {"hub": {"data_dir": str(data_dir)}, "http": {"port": 0}}
    for k, v in sections.items():
        over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) and k != "edges" else v
    return load_hub_config(environ={}, overrides=over)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON or text body) of one request; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode()


def post_batch(
    base: str,
    payload: bytes,
    *,
    key: str | None = None,
    edge: str | None = None,
    signed_with: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": CONTENT_TYPE}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if edge is not None:
        headers["X-EK-Edge"] = edge
    if signed_with is not None:
        headers[SIGNATURE_HEADER] = sign(signed_with, payload)
    return http("POST", f"{base}/api/ingest/batch", payload, headers)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample from Prometheus text: metric(text, 'edgekite_hub_batches_refused_total', 'reason="x"')."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


class FakeEdge:
    """The edge's side of the hub protocol, with paho: publish signed batches, collect acks."""

    def __init__(self, broker: Any, edge_id: str) -> None:
        self.edge_id = edge_id
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.status: queue.Queue[bytes] = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{edge_id}", protocol=mqtt.MQTTv5)
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        c.subscribe([(hub_ack_topic(edge_id), 1), (hub_status_topic(), 1)])
        time.sleep(0.2)
        self.client = c

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == hub_status_topic():
            self.status.put(bytes(msg.payload))
        else:
            self.acks.put(Ack.model_validate(orjson.loads(msg.payload)))

    def send(
        self, payload: bytes, *, key: str | None = None, topic_edge: str | None = None, wait: bool = True
    ) -> mqtt.MQTTMessageInfo:
        """Publish one batch; ``wait=False`` returns at once (a burst reaches the broker together)."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if key is not None:
            props.UserProperty = (SIGNATURE_PROPERTY, sign(key, payload))
        info = self.client.publish(
            hub_batch_topic(topic_edge or self.edge_id), payload, qos=1, properties=props
        )
        if wait:
            info.wait_for_publish(10)
        return info

    def collect(self, n: int, timeout: float = 30.0) -> list[Ack]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out.append(self.acks.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

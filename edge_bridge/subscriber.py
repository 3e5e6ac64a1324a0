"""The MQTT source: a persistent QoS 1 subscription whose acks wait for the SQLite commit.

paho-mqtt 2.x is used directly, not through aiomqtt: aiomqtt (2.5) acknowledges messages
itself and drops them when its queue is full, and both break "acknowledged means stored".
paho's ``manual_ack`` lets the writer send each PUBACK after the transaction holding the
message commits. paho's network loop runs in its own thread; when the store's queue is
full, ``on_message`` blocks, the socket stops being read, and the broker keeps the backlog.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_bridge.inbound import InboundRouter, rejection_summary
from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, IngestResult
from edgekite.store.queue import QueueClosedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"unsupported broker URL scheme {parsed.scheme!r} (use mqtt:// or mqtts://)")
        tls = parsed.scheme in ("mqtts", "ssl")
        return cls(parsed.hostname or "127.0.0.1", parsed.port or (8883 if tls else 1883), tls)


class MqttSubscriber:
    """Subscribes the edge to its broker. ``start()`` returns at once; ``stop()`` drains."""

    def __init__(
        self, config: EdgeConfig, store: EdgeStore, metrics: EdgeMetrics, router: InboundRouter, *, url: str
    ) -> None:
        self._cfg = config
        self._store = store
        self._metrics = metrics
        self._router = router
        self._addr = BrokerAddress.parse(url)
        self._generation = 0  # bumped per connection; acks for an older connection are dropped
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self.last_connect_error: str | None = None
        # Labelled children resolved once: a label lookup per message is measurable here.
        self._m_messages = metrics.messages_received.labels("mqtt")
        self._m_events = metrics.events_received.labels("mqtt")
        mc = config.mqtt
        self._v5 = mc.protocol == "5" or (mc.protocol == "auto" and bool(config.mqtt.url))
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mc.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        if mc.username is not None:
            self._client.username_pw_set(mc.username, mc.password)
        if self._addr.tls:
            self._client.tls_set(
                ca_certs=str(mc.ca_file) if mc.ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        mc = self._cfg.mqtt
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = mc.session_expiry_secs
            props.ReceiveMaximum = mc.receive_maximum
        self._client.connect_async(
            self._addr.host,
            self._addr.port,
            keepalive=mc.keepalive_secs,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop reading, let the writer commit what it holds (acks go out), then disconnect."""
        self._stopping.set()
        deadline = time.monotonic() + drain_timeout
        while self._store.queue_depth and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # let the last completion callbacks queue their PUBACKs
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)

    # -- paho callbacks (paho's thread) -----------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.last_connect_error = f"broker refused the connection: {reason}"
            log.error("MQTT %s:%d refused the bridge: %s", self._addr.host, self._addr.port, reason)
            return
        self._generation += 1
        self.last_connect_error = None
        self._metrics.mqtt_reconnects.inc()
        filters = self._router.filters
        client.subscribe([(f, 1) for f in filters])
        log.info(
            "bridge connected to %s:%d (MQTT %s, session present: %s), subscribed to %s",
            self._addr.host,
            self._addr.port,
            "5" if self._v5 else "3.1.1",
            flags.session_present,
            filters,
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.last_connect_error = f"broker refused the subscription: {', '.join(refused)}"
            log.error("%s (check the broker's ACL for the bridge user)", self.last_connect_error)
            return
        # Only now is the bridge really listening: a new session queues nothing before this.
        self._connected.set()
        self._metrics.mqtt_connected.set(1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
        if not self._stopping.is_set():
            log.warning("bridge lost the broker (%s); paho reconnects with backoff", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not acknowledged: the broker keeps it for our session
        self._m_messages.inc()
        item = self._router.build_item(msg.topic, bytes(msg.payload), bool(msg.dup), self._store.now_ms())
        n = len(item.decoded.events) + len(item.decoded.rejections)
        self._m_events.inc(n)
        if item.decoded.rejections:
            log.info("rejected from %s: %s", msg.topic[:200], rejection_summary(item.decoded))
        mid, qos, generation = msg.mid, msg.qos, self._generation

        def done(result: IngestResult) -> None:
            if result.committed and qos > 0 and generation == self._generation:
                client.ack(mid, qos)

        item.done = done
        try:
            while not self._store.submit(item, timeout=0.5):
                if self._stopping.is_set():
                    return
        except QueueClosedError:
            return

"""The bridge's MQTT session: a persistent QoS 1 subscription whose PUBACKs the caller sends.

paho-mqtt 2.x is used directly, not through aiomqtt: aiomqtt (2.5) acknowledges messages
itself and drops them when its queue is full, and both break "acknowledged means stored".
paho's ``manual_ack`` lets the caller send each PUBACK once the transaction holding the
message has committed. paho's network loop runs in its own thread; when ``on_message``
blocks (the store is full), the socket stops being read and the broker keeps the backlog.

This module knows nothing of SQLite: the same receiver runs inside the edge process (thread
mode) or in the bridge's child process, which forwards decoded messages to the writer.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekite.broker_url import BrokerAddress
from edgekite.paho_client import ReceiverClient

if TYPE_CHECKING:  # annotations only: the bridge's child process runs without pydantic
    from edgekite.config import EdgeConfig

log = logging.getLogger(__name__)

# (topic, payload, dup, mid, qos, generation) -> None; may block (backpressure).
MessageHandler = Callable[[str, bytes, bool, int, int, int], None]
# (connected, error or None, new connection) -> None
StatusHandler = Callable[[bool, str | None, bool], None]


class MqttReceiver:
    """One broker session. ``generation`` changes per connection: a PUBACK for a message of an
    earlier connection must not be sent (its packet id may now name another message)."""

    def __init__(
        self,
        config: EdgeConfig,
        filters: list[str],
        *,
        url: str,
        on_message: MessageHandler,
        on_status: StatusHandler,
        generation_base: int = 0,
    ) -> None:
        self._cfg = config
        self._filters = filters
        self._addr = BrokerAddress.parse(url, what="mqtt.url")
        self._handle = on_message
        self._status = on_status
        self.generation = generation_base
        self.reading = threading.Event()
        self.reading.set()
        mc = config.mqtt
        self._v5 = mc.protocol == "5" or (mc.protocol == "auto" and bool(config.mqtt.url))
        self._client = ReceiverClient(
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
        self._client.on_message = self._on_message  # QoS 2, or a paho without the fast path
        self._client.fast_on_publish = self._on_publish

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

    def ack(self, generation: int, mid: int, qos: int) -> None:
        """PUBACK a committed message, unless it came on an earlier connection (the broker
        redelivers those, and the store counts the copy as a duplicate)."""
        if qos > 0 and generation == self.generation:
            self._client.ack(mid, qos)

    def ack_many(self, generation: int, mids: list[int]) -> None:
        """PUBACK the QoS 1 messages of one committed batch in one write."""
        if mids and generation == self.generation:
            self._client.ack_many(mids)

    def stop_reading(self) -> None:
        """Messages from now on are left unacknowledged: the broker keeps them for our session."""
        self.reading.clear()

    def disconnect(self, timeout: float = 10.0) -> None:
        """Leave the broker after the PUBACKs already queued have gone out (``ReceiverClient.leave``)."""
        self._client.leave(timeout)

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
            error = f"broker refused the connection: {reason}"
            log.error("MQTT %s:%d refused the bridge: %s", self._addr.host, self._addr.port, reason)
            self._status(False, error, False)
            return
        self.generation += 1
        client.subscribe([(f, 1) for f in self._filters])
        log.info(
            "bridge connected to %s:%d (MQTT %s, session present: %s), subscribed to %s",
            self._addr.host,
            self._addr.port,
            "5" if self._v5 else "3.1.1",
            flags.session_present,
            self._filters,
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
            error = f"broker refused the subscription: {', '.join(refused)}"
            log.error("%s (check the broker's ACL for the bridge user)", error)
            self._status(False, error, False)
            return
        # Only now is the bridge really listening: a new session queues nothing before this.
        self._status(True, None, True)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._status(False, None, False)
        if self.reading.is_set():
            log.warning("bridge lost the broker (%s); paho reconnects with backoff", reason)

    def _on_publish(self, topic: str, payload: bytes, dup: bool, mid: int, qos: int) -> None:
        if not self.reading.is_set():
            return  # not acknowledged: the broker keeps it for our session
        self._handle(topic, payload, dup, mid, qos, self.generation)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self.reading.is_set():
            return
        self._handle(msg.topic, bytes(msg.payload), bool(msg.dup), msg.mid, msg.qos, self.generation)


__all__ = ["MessageHandler", "MqttReceiver", "StatusHandler"]

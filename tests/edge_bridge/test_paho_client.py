"""The bridge's paho client against a real Mosquitto: its fast receive path delivers exactly what
paho would, and its batched PUBACKs settle the session exactly as one ``ack()`` per message."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_bridge.receiver import MqttReceiver
from edgekite import paho_client
from edgekite.config import EdgeConfig
from tests.conftest import Mosquitto, wait_for

TOPIC_FILTER = "ek/v1/+/events"

pytestmark = pytest.mark.skipif(not paho_client.INTERNALS_OK, reason="this paho lacks the internals used")


@dataclass
class Received:
    messages: list[tuple[str, bytes, bool, int, int, int]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    def on_message(self, topic: str, payload: bytes, dup: bool, mid: int, qos: int, generation: int) -> None:
        self.messages.append((topic, payload, dup, mid, qos, generation))

    def on_status(self, connected: bool, error: str | None, new: bool) -> None:
        if connected:
            self.connected.set()


@pytest.fixture
def open_receiver(
    mosquitto: Mosquitto, make_config: Callable[..., EdgeConfig]
) -> Iterator[Callable[..., tuple[MqttReceiver, Received]]]:
    opened: list[MqttReceiver] = []

    def open_(protocol: str = "5", client_id: str = "bridge-under-test") -> tuple[MqttReceiver, Received]:
        cfg = make_config(mqtt={"url": mosquitto.url, "protocol": protocol, "client_id": client_id})
        got = Received()
        rx = MqttReceiver(
            cfg, [TOPIC_FILTER], url=mosquitto.url, on_message=got.on_message, on_status=got.on_status
        )
        rx.start()
        opened.append(rx)
        assert got.connected.wait(10), "the receiver did not subscribe"
        return rx, got

    yield open_
    for rx in opened:
        rx.disconnect(timeout=2)


def publisher(broker: Mosquitto, protocol: int = mqtt.MQTTv5) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, items: list[tuple[str, bytes, Properties | None]]) -> None:
    infos = [client.publish(t, p, qos=1, properties=props) for t, p, props in items]
    for info in infos:
        info.wait_for_publish(10)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_delivers_topic_payload_and_packet_id_of_every_message_in_order(
    mosquitto: Mosquitto, open_receiver: Callable[..., tuple[MqttReceiver, Received]], protocol: str
) -> None:
    _, got = open_receiver(protocol)
    # Sizes straddle the 64 KiB read buffer and the remaining-length encodings (1 to 3 bytes).
    sizes = [0, 1, 126, 127, 128, 16_383, 16_384, 65_535, 65_536, 200_000, *range(1, 2000, 7)]
    items = [(f"ek/v1/dev-{i % 5}/events", os.urandom(n), None) for i, n in enumerate(sizes)]
    pub = publisher(mosquitto, mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    try:
        publish_all(pub, items)
    finally:
        pub.loop_stop()
        pub.disconnect()
    wait_for(lambda: len(got.messages) >= len(items))
    assert [(t, p) for t, p, *_ in got.messages] == [(t, p) for t, p, _ in items]
    assert all(qos == 1 and not dup and 1 <= mid <= 65535 for _, _, dup, mid, qos, _ in got.messages)
    assert len({mid for _, _, _, mid, _, _ in got.messages}) == len(items)  # none acked yet: all distinct


def test_skips_publish_properties_it_does_not_use(
    mosquitto: Mosquitto, open_receiver: Callable[..., tuple[MqttReceiver, Received]]
) -> None:
    """A device may attach MQTT 5 properties; the payload must not start with their bytes."""
    _, got = open_receiver("5")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("firmware", "1.2.3"), ("x" * 300, "y" * 300)]
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 3600
    pub = publisher(mosquitto)
    try:
        publish_all(pub, [("ek/v1/cam-1/events", b'{"a": 1}', props), ("ek/v1/cam-1/events", b"[]", None)])
    finally:
        pub.loop_stop()
        pub.disconnect()
    wait_for(lambda: len(got.messages) >= 2)
    assert [(t, p) for t, p, *_ in got.messages] == [
        ("ek/v1/cam-1/events", b'{"a": 1}'),
        ("ek/v1/cam-1/events", b"[]"),
    ]


def test_batched_pubacks_settle_the_session_so_nothing_is_delivered_again(
    mosquitto: Mosquitto, open_receiver: Callable[..., tuple[MqttReceiver, Received]]
) -> None:
    rx, got = open_receiver("5", client_id="bridge-acks")
    n = 3000
    pub = publisher(mosquitto)
    try:
        publish_all(pub, [("ek/v1/s/events", str(i).encode(), None) for i in range(n)])
        wait_for(lambda: len(got.messages) >= 2000)  # the Receive Maximum window, unacked
        acked_upto = 0
        while acked_upto < n:
            wait_for(lambda upto=acked_upto: len(got.messages) > upto)  # type: ignore[misc]
            batch = got.messages[acked_upto : acked_upto + 250]
            rx.ack_many(batch[0][5], [mid for _, _, _, mid, _, _ in batch])
            acked_upto += len(batch)
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert [int(p) for _, p, *_ in got.messages] == list(range(n))
    rx.disconnect()

    # Same client id, persistent session: a fresh message comes, nothing old comes again.
    _, got2 = open_receiver("5", client_id="bridge-acks")
    pub = publisher(mosquitto)
    try:
        publish_all(pub, [("ek/v1/s/events", b"after", None)])
    finally:
        pub.loop_stop()
        pub.disconnect()
    wait_for(lambda: got2.messages)
    assert [p for _, p, *_ in got2.messages] == [b"after"]


def test_acks_of_an_earlier_connection_are_not_sent_and_its_messages_come_again(
    mosquitto: Mosquitto, open_receiver: Callable[..., tuple[MqttReceiver, Received]]
) -> None:
    rx, got = open_receiver("5", client_id="bridge-stale")
    pub = publisher(mosquitto)
    try:
        publish_all(pub, [("ek/v1/s/events", str(i).encode(), None) for i in range(20)])
        wait_for(lambda: len(got.messages) >= 20)
        old_generation = rx.generation
        # Cut the TCP connection under paho: it reconnects, with unread bytes possibly buffered.
        sock = rx._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: rx.generation > old_generation)
        rx.ack_many(old_generation, [mid for _, _, _, mid, _, _ in got.messages[:20]])  # ignored
        wait_for(lambda: len(got.messages) >= 40)  # all 20 redelivered on the new connection
    finally:
        pub.loop_stop()
        pub.disconnect()
    again = got.messages[20:40]
    assert sorted(int(p) for _, p, *_ in again) == list(range(20))
    assert all(g == rx.generation and dup for _, _, dup, _, _, g in again)


def test_unread_bytes_of_a_closed_connection_are_never_read_as_the_next_ones() -> None:
    client = paho_client.ReceiverClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client._rbuf, client._rpos = b"\x30\x05\x00\x01a{}", 0  # a PUBLISH the old socket had sent
    client._sock_close()
    with pytest.raises(ConnectionError):
        client._sock_recv(1)  # no socket: nothing may come out of the old buffer


def test_pubacks_sent_just_before_leaving_reach_the_broker_while_it_is_still_sending(
    mosquitto: Mosquitto, open_receiver: Callable[..., tuple[MqttReceiver, Received]]
) -> None:
    """A stop mid-stream: the broker is still sending when the bridge acks what it stored and
    leaves. Closing with unread bytes would reset the connection and the broker would drop the
    PUBACKs it had not read yet; those stored messages would then come again."""
    rx, got = open_receiver("5", client_id="bridge-leaving")
    pub = publisher(mosquitto)
    try:
        infos = [pub.publish("ek/v1/s/events", b"%d" % i + b" " * 200, qos=1) for i in range(12_000)]
        wait_for(lambda: len(got.messages) >= 1500)  # unacknowledged, Receive Maximum is 2000
        rx.stop_reading()  # from here on nothing is stored (nor acknowledged)
        stored = list(got.messages)
        rx.ack_many(stored[0][5], [mid for _, _, _, mid, _, _ in stored])  # one burst, then leave
        rx.disconnect()
        stored_payloads = {p for _, p, *_ in stored}
        for info in infos:
            info.wait_for_publish(30)
        _, again = open_receiver("5", client_id="bridge-leaving")
        # The rest arrives (unacknowledged, as a test receiver does not ack): one window of it.
        wait_for(lambda: len(again.messages) >= 1900, timeout=30)
        time.sleep(0.5)
    finally:
        pub.loop_stop()
        pub.disconnect()
    came_again = [p for _, p, *_ in again.messages if p in stored_payloads]
    assert came_again == [], f"{len(came_again)} of {len(stored)} acknowledged messages came again"

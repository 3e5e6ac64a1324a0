"""EmbeddedBroker (broker/embedded.py) with real paho-mqtt clients: the commit gate, routing,
the size limit, password logins, and the refusal to start on an amqtt it was not verified on.

The broker runs in the test's event loop; the paho clients run their network loops in threads,
so every blocking paho call goes through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from broker.embedded import (
    AmqttCompatibilityError,
    EmbeddedBroker,
    check_amqtt_internals,
    password_file_line,
    run_broker,
)

TIMEOUT_SECS = 5.0
EVENTS = "ek/v1/+/events"
CAM1_EVENTS = "ek/v1/cam1/events"

Inbox = queue.Queue[mqtt.MQTTMessage]
MqttConnect = Callable[..., tuple[mqtt.Client, Inbox]]


class RecordingHook:
    """An ingest hook that records its calls and can be told to wait, take time or fail."""

    def __init__(
        self, *, release: asyncio.Event | None = None, delay_secs: float = 0.0, failures: int = 0
    ) -> None:
        self.calls: list[tuple[str, bytes, bool]] = []
        self.entered = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self._release = release
        self._delay_secs = delay_secs
        self._failures_left = failures

    async def __call__(self, topic: str, payload: bytes, dup: bool) -> None:
        self.calls.append((topic, payload, dup))
        self.entered.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._release is not None:
                await self._release.wait()
            if self._delay_secs:
                await asyncio.sleep(self._delay_secs)
            if self._failures_left:
                self._failures_left -= 1
                msg = "disk full"
                raise OSError(msg)
        finally:
            self.in_flight -= 1


async def connect(
    mqtt_connect: MqttConnect, broker: EmbeddedBroker, client_id: str, **kwargs: Any
) -> tuple[mqtt.Client, Inbox]:
    return await asyncio.to_thread(mqtt_connect, broker.port, client_id, **kwargs)


async def next_message(inbox: Inbox) -> mqtt.MQTTMessage:
    return await asyncio.to_thread(inbox.get, timeout=TIMEOUT_SECS)


async def acknowledged(*infos: mqtt.MQTTMessageInfo) -> bool:
    """Wait (up to TIMEOUT_SECS each) for the broker to acknowledge these publishes."""

    def wait() -> bool:
        for info in infos:
            info.wait_for_publish(TIMEOUT_SECS)
        return all(info.is_published() for info in infos)

    return await asyncio.to_thread(wait)


def on_disconnect_event(client: mqtt.Client) -> threading.Event:
    disconnected = threading.Event()
    client.on_disconnect = lambda *_args: disconnected.set()
    return disconnected


@pytest.mark.asyncio
async def test_plain_publish_subscribe_on_a_free_port(mqtt_connect: MqttConnect) -> None:
    async with EmbeddedBroker(port=0) as broker:
        assert broker.port != 0
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        _, inbox = await connect(mqtt_connect, broker, "sub", subscribe="plain/topic")
        publisher, _ = await connect(mqtt_connect, broker, "pub")

        info = publisher.publish("plain/topic", b"hello", qos=1)

        message = await next_message(inbox)
        assert (message.topic, message.payload) == ("plain/topic", b"hello")
        assert await acknowledged(info)


@pytest.mark.asyncio
@pytest.mark.parametrize("qos", [1, 2])
async def test_acknowledgement_waits_for_the_commit(mqtt_connect: MqttConnect, qos: int) -> None:
    release = asyncio.Event()
    hook = RecordingHook(release=release)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook) as broker:
        publisher, _ = await connect(mqtt_connect, broker, "cam1")
        on_publish_called = threading.Event()
        publisher.on_publish = lambda *_args: on_publish_called.set()

        info = publisher.publish(CAM1_EVENTS, b"e1", qos=qos)
        async with asyncio.timeout(TIMEOUT_SECS):
            await hook.entered.wait()
        await asyncio.sleep(0.2)  # ample time for a PUBACK/PUBREC to arrive, were one sent now
        assert not on_publish_called.is_set()
        assert not info.is_published()

        release.set()  # the commit completes
        assert await acknowledged(info), "no acknowledgement after the commit"
        assert on_publish_called.is_set()
        assert hook.calls == [(CAM1_EVENTS, b"e1", False)]
        assert broker.stats.ingested == 1


@pytest.mark.asyncio
async def test_failed_commit_is_not_acknowledged(mqtt_connect: MqttConnect) -> None:
    hook = RecordingHook(failures=1_000)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook) as broker:
        publisher, _ = await connect(mqtt_connect, broker, "cam1")
        disconnected = on_disconnect_event(publisher)

        info = publisher.publish(CAM1_EVENTS, b"e1", qos=1)

        assert await asyncio.to_thread(disconnected.wait, TIMEOUT_SECS), (
            "the broker should close the connection"
        )
        assert not info.is_published()
        assert hook.calls[0] == (CAM1_EVENTS, b"e1", False)
        assert broker.stats.ingest_failures >= 1
        assert broker.stats.ingested == 0
        publisher.disconnect()  # stop paho resending into the failing hook


@pytest.mark.asyncio
async def test_client_resends_after_a_failed_commit_and_it_is_routed_once(mqtt_connect: MqttConnect) -> None:
    hook = RecordingHook(failures=1)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook) as broker:
        _, inbox = await connect(mqtt_connect, broker, "dashboard", subscribe=EVENTS)
        publisher, _ = await connect(mqtt_connect, broker, "cam1", clean_start=False)

        info = publisher.publish(CAM1_EVENTS, b"e1", qos=1)

        # paho reconnects and resends the unacknowledged message, now with DUP set.
        assert await acknowledged(info), "no PUBACK for the resent message"
        assert hook.calls == [(CAM1_EVENTS, b"e1", False), (CAM1_EVENTS, b"e1", True)]
        assert (await next_message(inbox)).payload == b"e1"
        assert inbox.empty()  # the failed attempt was never routed


@pytest.mark.asyncio
async def test_commits_of_one_publishers_messages_run_concurrently(mqtt_connect: MqttConnect) -> None:
    hook = RecordingHook(delay_secs=0.02)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook) as broker:
        publisher, _ = await connect(mqtt_connect, broker, "cam1", max_inflight=200)

        infos = [publisher.publish(CAM1_EVENTS, str(n).encode(), qos=1) for n in range(200)]

        assert await acknowledged(*infos)
        assert sorted(int(payload) for _, payload, _ in hook.calls) == list(range(200))
        assert hook.max_in_flight > 1, "hooks ran one at a time: the edge could not batch commits"
        assert broker.stats.ingested == 200


async def publish_from_two_cameras(
    mqtt_connect: MqttConnect, broker: EmbeddedBroker, n: int, *, qos: int
) -> list[mqtt.MQTTMessageInfo]:
    """cam1 and cam2 each publish n messages at once (their windows hold all n), interleaved."""
    cam1, _ = await connect(mqtt_connect, broker, "cam1", max_inflight=n)
    cam2, _ = await connect(mqtt_connect, broker, "cam2", max_inflight=n)
    return [
        client.publish(f"ek/v1/{name}/events", f"{name}-{i}".encode(), qos=qos)
        for i in range(n)
        for client, name in ((cam1, "cam1"), (cam2, "cam2"))
    ]


@pytest.mark.asyncio
async def test_messages_waiting_for_their_commit_are_bounded_across_clients(
    mqtt_connect: MqttConnect,
) -> None:
    """Two clients with 100-message windows, commits held: the broker parks 10 (11 if the
    other connection was mid-packet), reads no more until they commit, then acknowledges all."""
    release = asyncio.Event()
    hook = RecordingHook(release=release)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook, max_in_flight=10) as broker:
        infos = await publish_from_two_cameras(mqtt_connect, broker, 100, qos=1)
        await asyncio.wait_for(hook.entered.wait(), TIMEOUT_SECS)
        await asyncio.sleep(0.5)  # time enough for amqtt to read far more, were it allowed
        # The bound plus at most one packet per other connection read past the check meanwhile.
        assert 10 <= hook.in_flight <= 11
        assert len(hook.calls) == hook.in_flight
        release.set()
        assert await acknowledged(*infos)
        assert len(hook.calls) == 200 and len({payload for _, payload, _ in hook.calls}) == 200
        assert hook.max_in_flight <= 11
        assert broker.stats.max_in_flight_seen == hook.max_in_flight
        assert broker.stats.ingested == 200


@pytest.mark.asyncio
@pytest.mark.timeout(30)  # a deadlock here would also hold up the broker's shutdown
async def test_qos2_flows_complete_under_a_tight_bound(mqtt_connect: MqttConnect) -> None:
    """The bound counts messages awaiting their commit, not QoS 2 ones awaiting the client's
    PUBREL: reads blocked on those would wait for a packet only a read can bring."""
    hook = RecordingHook(delay_secs=0.005)
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook, max_in_flight=1) as broker:
        infos = await publish_from_two_cameras(mqtt_connect, broker, 20, qos=2)
        # A deadlock would otherwise take 40 x TIMEOUT_SECS to show.
        assert await asyncio.wait_for(acknowledged(*infos), 2 * TIMEOUT_SECS)
        assert broker.stats.ingested == 40 and broker.stats.max_in_flight_seen <= 2


@pytest.mark.asyncio
async def test_subscribers_receive_ingested_messages_and_others_are_untouched(
    mqtt_connect: MqttConnect,
) -> None:
    hook = RecordingHook()
    async with EmbeddedBroker(port=0, ingest_filters=[EVENTS], ingest=hook) as broker:
        _, inbox = await connect(mqtt_connect, broker, "dashboard", subscribe="#")
        publisher, _ = await connect(mqtt_connect, broker, "cam1")

        publisher.publish(CAM1_EVENTS, b"qos1 event", qos=1)
        publisher.publish(CAM1_EVENTS, b"qos0 event", qos=0)
        publisher.publish("site/lights/status", b"not an event", qos=1)

        received = {(m.topic, m.payload) for m in [await next_message(inbox) for _ in range(3)]}
        assert received == {
            (CAM1_EVENTS, b"qos1 event"),
            (CAM1_EVENTS, b"qos0 event"),
            ("site/lights/status", b"not an event"),
        }
        assert sorted(hook.calls) == [
            (CAM1_EVENTS, b"qos0 event", False),
            (CAM1_EVENTS, b"qos1 event", False),
        ]


@pytest.mark.asyncio
async def test_oversize_publish_is_rejected(mqtt_connect: MqttConnect) -> None:
    limit = 1024
    hook = RecordingHook()
    async with EmbeddedBroker(
        port=0, ingest_filters=[EVENTS], ingest=hook, max_message_bytes=limit
    ) as broker:
        _, inbox = await connect(mqtt_connect, broker, "dashboard", subscribe=EVENTS)
        publisher, _ = await connect(mqtt_connect, broker, "cam1")
        disconnected = on_disconnect_event(publisher)

        at_limit = publisher.publish(CAM1_EVENTS, b"x" * limit, qos=1)
        assert await acknowledged(at_limit), "a message of exactly max_message_bytes is fine"
        too_big = publisher.publish(CAM1_EVENTS, b"y" * (limit + 1), qos=1)

        assert await asyncio.to_thread(disconnected.wait, TIMEOUT_SECS), (
            "the broker should close the connection"
        )
        publisher.disconnect()  # stop paho resending it
        assert broker.rejected_oversize >= 1
        assert not too_big.is_published()
        assert hook.calls == [(CAM1_EVENTS, b"x" * limit, False)]
        assert (await next_message(inbox)).payload == b"x" * limit
        assert inbox.empty()


@pytest.mark.asyncio
async def test_password_file_requires_a_valid_login(tmp_path: Path, mqtt_connect: MqttConnect) -> None:
    password_file = tmp_path / "passwd"
    password_file.write_text(password_file_line("cam1", "s3cret") + "\n")
    async with EmbeddedBroker(port=0, password_file=password_file) as broker:
        await connect(mqtt_connect, broker, "cam1", username="cam1", password="s3cret")
        for credentials in (
            {"username": "cam1", "password": "wrong"},
            {"username": "cam2", "password": "s3cret"},
            {},
        ):
            with pytest.raises(ConnectionRefusedError):
                await connect(mqtt_connect, broker, "intruder", **credentials)


@pytest.mark.asyncio
async def test_refuses_to_start_if_amqtt_internals_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    check_amqtt_internals()  # the installed amqtt is the verified one

    async def handle_publish(self: BrokerProtocolHandler, publish_packet: object) -> None:
        """Stands in for a future amqtt that handles PUBLISH differently."""

    monkeypatch.setattr(BrokerProtocolHandler, "handle_publish", handle_publish)
    with pytest.raises(AmqttCompatibilityError, match="overrides handle_publish"):
        async with EmbeddedBroker(port=0):
            pass


def test_rejects_invalid_configuration() -> None:
    hook = RecordingHook()
    with pytest.raises(ValueError, match="topic filter"):
        EmbeddedBroker(ingest_filters=["ek/#/events"], ingest=hook)
    with pytest.raises(ValueError, match="ingest_filters"):
        EmbeddedBroker(ingest=hook)
    with pytest.raises(ValueError, match="max_message_bytes"):
        EmbeddedBroker(max_message_bytes=0)
    with pytest.raises(ValueError, match="username"):
        password_file_line("a:b", "secret")


@pytest.mark.asyncio
async def test_run_broker_serves_until_cancelled(unused_tcp_port: int, mqtt_connect: MqttConnect) -> None:
    task = asyncio.create_task(run_broker("127.0.0.1", unused_tcp_port), name="run_broker")

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async with asyncio.timeout(TIMEOUT_SECS):
        while not await listening():  # noqa: ASYNC110  # another task opens the port; nothing to await
            await asyncio.sleep(0.01)
    client, _ = await asyncio.to_thread(mqtt_connect, unused_tcp_port, "cli-check")
    assert await acknowledged(client.publish("any/topic", b"x", qos=1))

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await listening()

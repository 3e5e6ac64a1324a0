"""The embedded amqtt broker, with a commit gate in front of its acknowledgements.

The edge's zero-setup default runs amqtt inside the edge process. Out of the box amqtt answers
an incoming QoS 1 PUBLISH with PUBACK as soon as it has put the message on an in-memory queue
(amqtt 0.12.1, `ProtocolHandler._handle_qos1_message_flow`, INCOMING branch), so a `kill -9` of
the edge would lose messages that amqtt had acknowledged but the edge had not yet committed to
SQLite. EdgeKite promises the opposite (DESIGN.md, guarantee 1: a message is acknowledged to its
producer only after it is committed), hence the commit gate:

* An incoming PUBLISH whose topic matches one of `ingest_filters` is first handed to the
  `IngestHook`. Only once the hook has returned (the message is committed) does amqtt's own flow
  run: it queues the message for routing to subscribers and sends PUBACK (QoS 1) or PUBREC
  (QoS 2, so the whole QoS 2 handshake starts after the commit).
* If the hook raises, nothing is acknowledged and the client's connection is closed, so the
  client sends the message again (DUP set) when it reconnects; the edge dedups by `event_id`.
* amqtt runs each incoming PUBLISH in a task of its own, so hooks for different messages run
  concurrently and the edge can commit many of them in one SQLite transaction.
* QoS 0 messages on ingest topics go through the hook too (awaited in the publish task), but
  QoS 0 has no acknowledgement to hold back: a failing hook is logged and counted, and the
  message is still routed.

How the gate is attached (verified against amqtt 0.12.1)
--------------------------------------------------------
amqtt offers no extension point that runs before PUBACK: its plugin events fire either from the
reader loop, which must not block, or after the acknowledgement. So the gate subclasses two
amqtt classes and copies none of amqtt's protocol logic:

* `_GatedBroker(Broker)` overrides `_initialize_client_session` (private). It lets amqtt read and
  validate CONNECT, then swaps the fresh, not yet attached `BrokerProtocolHandler` that amqtt
  created for a `_GatedHandler` before amqtt attaches it to the session.
* `_GatedHandler(BrokerProtocolHandler)` overrides `handle_publish`, the per-PUBLISH task that
  `ProtocolHandler._reader_loop` starts and from which amqtt's QoS flows send PUBACK/PUBREC; it
  also wraps the reader in `attach` so that an oversized payload is refused before it is
  buffered, and closes the socket first in `stop` so that a broker shutdown cannot hang.

`check_amqtt_internals` re-checks each of those facts when a broker starts and raises
`AmqttCompatibilityError` if one no longer holds, rather than let a new amqtt silently
acknowledge uncommitted messages again. A different amqtt version on its own only logs a
warning: the structural checks are what decide.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final

import amqtt.broker
import amqtt.mqtt.protocol.broker_handler
import amqtt.mqtt.protocol.handler
from amqtt.adapters import ReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker, BrokerContext
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, BrokerError, PluginError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.plugins.manager import PluginManager
from amqtt.session import Session
from paho.mqtt.client import topic_matches_sub
from pwdlib.hashers.argon2 import Argon2Hasher

__all__ = [
    "AMQTT_VERIFIED_VERSION",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AmqttCompatibilityError",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "IngestHook",
    "IngestStats",
    "check_amqtt_internals",
    "hash_password",
    "password_file_line",
    "run_broker",
]

log = logging.getLogger(__name__)

IngestHook = Callable[[str, bytes, bool], Awaitable[None]]
"""`(topic, payload, dup_flag)`: returns once the message is committed, raises if it is not."""

AMQTT_VERIFIED_VERSION: Final = "0.12.1"
"""The amqtt release whose internals the commit gate was read against and tested with."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_576 + 1024
"""A 1 MiB payload plus room for an envelope around it; the Mosquitto config uses the same."""

DEFAULT_MAX_IN_FLIGHT: Final = 250
"""Messages waiting for their commit at once, over all connections; more wait in the sockets."""

SESSION_EXPIRY_SECS: Final = 24 * 3600
"""How long amqtt keeps a disconnected, authenticated clean_session=0 client's session (and the
messages queued for it, which amqtt holds in memory without a bound). Anonymous sessions are
dropped at disconnect by amqtt anyway."""


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started as configured (port taken, bad password file)."""


class AmqttCompatibilityError(EmbeddedBrokerError):
    """The installed amqtt no longer works the way the commit gate relies on.

    Raised at start instead of running a broker that could acknowledge uncommitted messages.
    """


@dataclass
class IngestStats:
    """Counters for `/metrics`; plain ints because only the broker's event loop updates them."""

    ingested: int = 0
    """Messages on ingest topics whose hook returned (committed)."""
    ingest_failures: int = 0
    """Hook calls that raised; for QoS 1/2 each one also closed the client's connection."""
    rejected_oversize: int = 0
    """Publishes refused for being larger than `max_message_bytes` (connection closed)."""
    max_in_flight_seen: int = 0
    """Most messages that were waiting for their commit at once (`max_in_flight`, plus at most
    one per other connection)."""


class _CommitGate:
    """What every connection's handler needs to know: which topics to ingest, how, and limits."""

    def __init__(
        self,
        filters: tuple[str, ...],
        ingest: IngestHook | None,
        max_message_bytes: int,
        stats: IngestStats,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.filters = filters
        self.ingest = ingest
        self.max_message_bytes = max_message_bytes
        self.stats = stats
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.room = asyncio.Event()  # set while in_flight < max_in_flight (binds its loop on first wait)
        self.room.set()

    async def wait_for_room(self) -> None:
        """Hold a connection's reads while `max_in_flight` messages wait for their commit.

        amqtt starts a task per PUBLISH and reads on, so a client's window (mosquitto_pub -M
        1000, eight of them) became thousands of parked messages at ~10 KB each: 62 -> 139 MB.
        Waiting here, before amqtt reads more, leaves the rest in the sockets (TCP pushes back).
        """
        while not self.room.is_set():
            await self.room.wait()

    def enter(self) -> None:
        self.in_flight += 1
        self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, self.in_flight)
        if self.in_flight >= self.max_in_flight:
            self.room.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight < self.max_in_flight:
            self.room.set()

    def applies_to(self, topic: str) -> bool:
        """Whether a PUBLISH on `topic` must be committed before amqtt acknowledges it.

        Topics amqtt itself refuses after acknowledging (wildcards, a leading `$`, empty) are
        left to amqtt: they are not events, and amqtt closes such a client's connection.
        """
        if self.ingest is None or not topic or topic.startswith("$") or "+" in topic or "#" in topic:
            return False
        return any(topic_matches_sub(topic_filter, topic) for topic_filter in self.filters)

    def count_oversize(self, client_id: str | None, size: int) -> None:
        self.stats.rejected_oversize += 1
        log.warning(
            "refused a %d-byte publish from client %r (max_message_bytes=%d); closing its connection",
            size,
            client_id,
            self.max_message_bytes,
        )


class _OversizePacketError(Exception):
    """Ends amqtt's reader loop for a connection that sent a payload over the limit.

    Deliberately not an amqtt `MQTTError`: the reader loop skips those and keeps reading, which
    would resume mid-packet. Any other exception ends the loop and closes the connection.
    """


class _BoundedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """Refuses to read a packet field larger than the message limit, before buffering it.

    amqtt reads a PUBLISH payload with one `read(n)` of the payload's length (0.12.1,
    `PublishPayload.from_stream`), so this stops a client from making the broker allocate up to
    the 256 MB MQTT allows. If amqtt ever reads in smaller pieces, this guard stops firing and
    the exact size check in `_GatedHandler.handle_publish` still rejects the message.
    """

    def __init__(self, inner: ReaderAdapter, gate: _CommitGate, client_id: str | None) -> None:
        self._inner = inner
        self._gate = gate
        self._client_id = client_id

    async def read(self, n: int = -1) -> bytes:
        if not self._gate.room.is_set():  # several reads per packet: no coroutine when there is room
            await self._gate.wait_for_room()
        if n > self._gate.max_message_bytes:
            self._gate.count_oversize(self._client_id, n)
            msg = f"{n}-byte field exceeds max_message_bytes={self._gate.max_message_bytes}"
            raise _OversizePacketError(msg)
        data: bytes = await self._inner.read(n)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _GatedHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker-side protocol handler, with the commit gate before each acknowledgement."""

    def __init__(self, plugins_manager: PluginManager[BrokerContext], gate: _CommitGate) -> None:
        super().__init__(plugins_manager)
        self._gate = gate

    def attach(self, session: Session, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        super().attach(session, _BoundedReader(reader, self._gate, session.client_id), writer)

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        """Commit (if the topic is ingested), then let amqtt route and acknowledge the message.

        Runs in the task amqtt's reader loop starts for this PUBLISH, so it may wait for the
        commit without holding up the client's other messages.
        """
        topic: str | None = publish_packet.topic_name
        data: bytes | bytearray | None = publish_packet.data
        if topic is not None and data is not None:
            if len(data) > self._gate.max_message_bytes:
                self._gate.count_oversize(self._client_id(), len(data))
                await self._close_connection()
                return
            if self._gate.applies_to(topic):
                # Counted until committed, not until acknowledged: a QoS 2 flow then waits for
                # the client's PUBREL, which only a read (held while the gate is full) brings.
                self._gate.enter()
                try:
                    committed = await self._ingest(topic, bytes(data), publish_packet)
                finally:
                    self._gate.leave()
                if not committed:
                    return
        await super().handle_publish(publish_packet)

    async def _ingest(self, topic: str, payload: bytes, publish_packet: PublishPacket) -> bool:
        """Run the ingest hook; return whether amqtt may go on to route and acknowledge."""
        hook = self._gate.ingest
        if hook is None:  # applies_to() said yes, so this cannot happen; keeps mypy honest
            return True
        qos: int = publish_packet.qos or 0
        try:
            await hook(topic, payload, bool(publish_packet.dup_flag))
        except Exception:  # any failure means "not committed"; CancelledError still propagates
            self._gate.stats.ingest_failures += 1
            if qos == 0:
                log.warning(
                    "ingest hook failed for a QoS 0 message on %r from client %r; routed anyway",
                    topic,
                    self._client_id(),
                    exc_info=True,
                )
                return True
            log.warning(
                "ingest hook failed for a QoS %d message on %r from client %r: not acknowledged; "
                "closing the connection so the client resends it",
                qos,
                topic,
                self._client_id(),
                exc_info=True,
            )
            await self._close_connection()
            return False
        self._gate.stats.ingested += 1
        return True

    async def stop(self) -> None:
        """Close the socket before amqtt stops the handler, so that stopping cannot hang.

        amqtt's stop() cancels the reader task and waits for it to finish. The reader reads
        through asyncio.wait_for, which on Python 3.11 swallows a cancellation that arrives
        just as data does; the reader then waits on the open socket for as long as the client
        stays connected, and with it the broker's shutdown (seen in tests/broker). With the
        socket closed, the reader ends on EOF either way.
        """
        self._abort_connection()
        await super().stop()

    def _client_id(self) -> str | None:
        session: Session | None = self.session
        return session.client_id if session is not None else None

    async def _close_connection(self) -> None:
        """Drop the client's connection; amqtt's reader loop then sees EOF and ends the session.

        Ending it through EOF rather than by cancelling the reader task lets amqtt run its own
        disconnect path (will message, session state, plugin events).
        """
        if not self._abort_connection():
            writer: WriterAdapter | None = self.writer
            if writer is not None:
                try:
                    await writer.close()
                except OSError:  # the peer went away first: nothing left to close
                    log.debug("connection of client %r was already closed", self._client_id())

    def _abort_connection(self) -> bool:
        """Close the TCP connection at once, without first flushing what is queued to send.

        Not `writer.close()`: that drains first and waits forever for a client that stopped
        reading. What is lost is at most a few acknowledgements, which the client answers by
        resending, and the edge dedups. Uses the asyncio writer inside amqtt's
        `StreamWriterAdapter` (`_writer`, amqtt 0.12.1); returns False if there is none (another
        amqtt, a websocket listener), and the caller falls back to `writer.close()`.
        """
        stream_writer = getattr(self.writer, "_writer", None)
        transport = getattr(stream_writer, "transport", None)
        if not isinstance(transport, asyncio.WriteTransport):
            return False
        transport.abort()
        return True


class _GatedBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker, handing every new connection a `_GatedHandler`."""

    def __init__(self, config: BrokerConfig, gate: _CommitGate) -> None:
        super().__init__(config)
        self._gate = gate

    async def _initialize_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        remote_address: str,
        remote_port: int,
    ) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, session = await super()._initialize_client_session(
                reader, writer, remote_address, remote_port
            )
        except AMQTTError:
            # amqtt 0.12.1 leaves the socket open when a client disconnects before sending
            # CONNECT (a port probe, a health check); close it rather than leak it until GC.
            await writer.close()
            raise
        if type(handler) is not BrokerProtocolHandler or handler.session is not None:
            # amqtt attached or specialised the handler itself; replacing it would lose that.
            msg = f"amqtt returned an unexpected {type(handler).__name__} for a new connection"
            raise AmqttCompatibilityError(msg)
        return _GatedHandler(self.plugins_manager, self._gate), session


def _source(obj: Any, problems: list[str]) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        problems.append(f"cannot read the source of {getattr(obj, '__qualname__', obj)!r} to verify it")
        return ""


def _params(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


def check_amqtt_internals() -> None:
    """Verify that amqtt still works the way the commit gate relies on.

    Raises:
        AmqttCompatibilityError: listing every assumption that no longer holds.
    """
    problems: list[str] = []

    init_session = Broker._initialize_client_session  # the hook point itself
    if not inspect.iscoroutinefunction(init_session) or _params(init_session) != [
        "self",
        "reader",
        "writer",
        "remote_address",
        "remote_port",
    ]:
        problems.append("Broker._initialize_client_session changed signature")
    if "init_from_connect" not in _source(init_session, problems):
        problems.append(
            "Broker._initialize_client_session no longer creates the handler via init_from_connect"
        )

    if BrokerProtocolHandler.handle_publish is not ProtocolHandler.handle_publish:
        problems.append("BrokerProtocolHandler now overrides handle_publish")
    if not inspect.iscoroutinefunction(ProtocolHandler.handle_publish) or _params(
        ProtocolHandler.handle_publish
    ) != [
        "self",
        "publish_packet",
    ]:
        problems.append("ProtocolHandler.handle_publish changed signature")
    if "_handle_message_flow" not in _source(ProtocolHandler.handle_publish, problems):
        problems.append("ProtocolHandler.handle_publish no longer runs the QoS flow that acknowledges")
    if "create_task(self.handle_publish(packet))" not in _source(ProtocolHandler._reader_loop, problems):
        problems.append("the reader loop no longer runs each PUBLISH in its own handle_publish task")
    if "PubackPacket.build" not in _source(ProtocolHandler._handle_qos1_message_flow, problems):
        problems.append("the QoS 1 flow no longer sends PUBACK")
    if "PubrecPacket.build" not in _source(ProtocolHandler._handle_qos2_message_flow, problems):
        problems.append("the QoS 2 flow no longer sends PUBREC")
    modules: tuple[ModuleType, ...] = (
        amqtt.mqtt.protocol.handler,
        amqtt.mqtt.protocol.broker_handler,
        amqtt.broker,
    )
    if sum(_source(module, problems).count("PubackPacket.build(") for module in modules) != 1:
        problems.append("PUBACK is now sent from somewhere other than the QoS 1 flow")

    if _params(ProtocolHandler.attach) != ["self", "session", "reader", "writer"]:
        problems.append("ProtocolHandler.attach changed signature")
    if _params(BrokerProtocolHandler.__init__)[:2] != ["self", "plugins_manager"]:
        problems.append("BrokerProtocolHandler.__init__ changed signature")

    if "self._writer = writer" not in _source(StreamWriterAdapter.__init__, problems):
        # Not a safety problem, so only a warning: without it a client that stops reading can
        # hold up the close of its connection (see _GatedHandler._abort_connection).
        log.warning("amqtt's StreamWriterAdapter changed: connections are closed the slow way")

    version = importlib.metadata.version("amqtt")
    if problems:
        msg = (
            f"amqtt {version} differs from amqtt {AMQTT_VERIFIED_VERSION}, which the commit gate in "
            f"{__name__} was verified against: {'; '.join(problems)}. Re-verify the gate before using it."
        )
        raise AmqttCompatibilityError(msg)
    if version != AMQTT_VERIFIED_VERSION:
        log.warning(
            "amqtt %s is installed; the commit gate was verified against %s and its structural checks pass",
            version,
            AMQTT_VERIFIED_VERSION,
        )


def _validate_filter(topic_filter: str) -> None:
    """Refuse a filter that would silently match nothing (MQTT 3.1.1, section 4.7.1)."""
    levels = topic_filter.split("/")
    if not topic_filter or any(
        ("#" in level and (level != "#" or index != len(levels) - 1)) or ("+" in level and level != "+")
        for index, level in enumerate(levels)
    ):
        msg = f"invalid MQTT topic filter {topic_filter!r}"
        raise ValueError(msg)


def _pick_free_port(host: str) -> int:
    """Ask the OS for a free port, because amqtt cannot report the port it bound to.

    Another process could take the port before amqtt binds it; the start then fails loudly with
    `EmbeddedBrokerError` rather than listening somewhere unexpected.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address)
        port: int = probe.getsockname()[1]
        return port


def hash_password(password: str) -> str:
    """Hash a password for the embedded broker's password file.

    amqtt's `FileAuthPlugin` accepts Argon2 hashes (and deprecated SHA-512 crypt) only, not
    Mosquitto's `$7$` PBKDF2 hashes, so a `mosquitto_passwd` file cannot be reused here.
    """
    return Argon2Hasher().hash(password)


def password_file_line(username: str, password: str) -> str:
    """One `username:hash` line of the embedded broker's password file (no newline)."""
    if not username or ":" in username or username != username.strip():
        msg = f"username {username!r} cannot be stored in a password file"
        raise ValueError(msg)
    return f"{username}:{hash_password(password)}"


class EmbeddedBroker:
    """An amqtt MQTT 3.1.1 broker in this process, acknowledging ingest topics only once committed.

    An async context manager: it listens from `__aenter__` until `__aexit__`.

        async with EmbeddedBroker(port=0, ingest_filters=["ek/v1/+/events"], ingest=commit) as b:
            ...  # devices publish to b.url

    Args:
        host: address to listen on (IPv4 or a host name; amqtt 0.12.1 cannot bind IPv6 literals).
        port: TCP port; 0 picks a free one (see `port` / `url` after start).
        ingest_filters: MQTT topic filters (wildcards allowed) whose messages go through `ingest`.
        ingest: the commit hook; see the module docstring for what its result means.
        max_message_bytes: larger publishes are refused and their connection is closed, as
            Mosquitto's `max_packet_size` does, and counted in `stats.rejected_oversize`.
        password_file: `username:argon2-hash` lines (see `password_file_line`). When given,
            clients must log in with a listed user; otherwise anyone on the network may connect.
        max_in_flight: messages on ingest topics waiting for their commit at once, over all
            clients; while that many wait, the broker reads no more from any connection (a
            connection already past the check may add one packet: the bound is soft by at most
            one per connection).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        ingest_filters: Sequence[str] = (),
        ingest: IngestHook | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        password_file: Path | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        filters = tuple(ingest_filters)
        for topic_filter in filters:
            _validate_filter(topic_filter)
        if ingest is not None and not filters:
            msg = "an ingest hook without ingest_filters would never be called"
            raise ValueError(msg)
        if max_message_bytes < 1:
            msg = f"max_message_bytes must be positive, not {max_message_bytes}"
            raise ValueError(msg)
        if max_in_flight < 1:
            msg = f"max_in_flight must be positive, not {max_in_flight}"
            raise ValueError(msg)
        if not 0 <= port <= 65535:
            msg = f"invalid TCP port {port}"
            raise ValueError(msg)
        self._host = host
        self._requested_port = port
        self._port = port
        self._password_file = password_file
        self.stats = IngestStats()
        self._gate = _CommitGate(filters, ingest, max_message_bytes, self.stats, max_in_flight)
        self._broker: _GatedBroker | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port listened on (the picked one, once started, if 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """`mqtt://host:port` as listened on (a wildcard host such as 0.0.0.0 stays as it is)."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def rejected_oversize(self) -> int:
        """Publishes refused for exceeding `max_message_bytes` (also in `stats`)."""
        return self.stats.rejected_oversize

    def _config(self, port: int) -> BrokerConfig:
        # Plugins are listed explicitly so that amqtt's defaults (the $SYS tree publisher and the
        # per-packet/per-event loggers) stay off: they cost CPU on every packet of a small box.
        plugins: dict[str, dict[str, object]]
        if self._password_file is None:
            plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        else:
            # Only FileAuthPlugin: it answers "no" to unknown users and wrong passwords and "no
            # opinion" to clients without a username, which amqtt treats as a refusal.
            plugins = {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(self._password_file)}
            }
        return BrokerConfig(
            listeners={"default": ListenerConfig(type=ListenerType.TCP, bind=f"{self._host}:{port}")},
            plugins=plugins,
            session_expiry_interval=SESSION_EXPIRY_SECS,
        )

    async def __aenter__(self) -> EmbeddedBroker:
        if self._broker is not None:
            msg = "the embedded broker is already running"
            raise RuntimeError(msg)
        check_amqtt_internals()
        if self._password_file is not None and not self._password_file.is_file():
            msg = f"password file {self._password_file} does not exist"
            raise EmbeddedBrokerError(msg)
        port = self._requested_port or _pick_free_port(self._host)
        try:
            broker = _GatedBroker(self._config(port), self._gate)
            await broker.start()
        except (BrokerError, PluginError) as exc:
            msg = f"cannot start the embedded MQTT broker on {self._host}:{port}: {exc}"
            raise EmbeddedBrokerError(msg) from exc
        self._port = port
        self._broker = broker
        log.info(
            "embedded MQTT broker listening on %s (%s, ingest filters %s)",
            self.url,
            "password file" if self._password_file else "anonymous access",
            list(self._gate.filters),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
            log.info("embedded MQTT broker on %s stopped", self.url)


async def run_broker(host: str, port: int, password_file: Path | None = None) -> None:
    """Run a plain embedded broker until cancelled (the `edgekite broker` command).

    No ingest hook: an edge that runs its own broker in-process uses `EmbeddedBroker` with one.
    """
    async with EmbeddedBroker(host, port, password_file=password_file):
        await asyncio.get_running_loop().create_future()  # never set: runs until cancelled

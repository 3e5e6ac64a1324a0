"""How batches reach the hub: MQTT (the default) or HTTP (where only HTTPS goes out).

Both hand the hub's answer to ``on_ack`` and a failure to send to ``on_failure``, on the event
loop; the sync worker does not know which transport it drives. Neither keeps anything durable:
the outbox in edge.db is the state, a transport only carries bytes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import aiohttp
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from edge_bridge.backoff import Backoff
from edgekite import sync_protocol, topics
from edgekite.broker_url import BrokerAddress
from edgekite.config import SyncSection
from edgekite.sync_protocol import Ack

log = logging.getLogger(__name__)

OnAck = Callable[[Ack], None]
OnFailure = Callable[[str, str], None]  # (batch_id, reason)


class HubTransport(Protocol):
    name: str
    url: str
    last_error: str | None

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def send(self, batch_id: str, payload: bytes, signature: str | None) -> None:
        """Fire and return; the outcome arrives through on_ack or on_failure."""


def _tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


class MqttHubTransport:
    """paho-mqtt 2.x, MQTT 5, driven by our own network thread so reconnects use our backoff."""

    name = "mqtt"

    def __init__(
        self,
        cfg: SyncSection,
        edge_id: str,
        loop: asyncio.AbstractEventLoop,
        on_ack: OnAck,
        on_failure: OnFailure,
        on_hub_online: Callable[[], None],
    ) -> None:
        addr = BrokerAddress.parse(cfg.hub_mqtt_url, what="sync.hub_mqtt_url")
        self._tls, self._host, self._port = addr.tls, addr.host, addr.port
        self.url = addr.url
        self._cfg = cfg
        self._edge_id = edge_id
        self._loop = loop
        self._on_ack = on_ack
        self._on_failure = on_failure
        self._on_hub_online = on_hub_online
        self._batch_topic = topics.hub_batch_topic(edge_id)
        self._ack_topic = topics.hub_ack_topic(edge_id)
        self._status_topic = topics.hub_status_topic()
        self._backoff = Backoff(cfg.backoff_initial_secs, cfg.backoff_max_secs)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.hub_online: bool | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if self._tls or cfg.cert_file is not None:
            client.tls_set_context(_tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.max_queued_messages_set(0)
        self._mids: dict[int, str] = {}  # publish mid -> batch id, until the broker's PUBACK
        # PUBACKs that came in before send() recorded their mid (paho may read the PUBACK on
        # its thread before publish() has returned here): reason code by mid.
        self._early_pubacks: dict[int, ReasonCode] = {}
        self._mids_lock = threading.Lock()
        self._client = client

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._network, name="edgekite-sync-mqtt", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)
        self._ready.clear()

    def send(self, batch_id: str, payload: bytes, signature: str | None) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("ek-batch", batch_id)]
        if signature is not None:
            props.UserProperty = [("ek-batch", batch_id), (sync_protocol.SIGNATURE_PROPERTY, signature)]
        # Not under _mids_lock: paho calls on_publish holding its own _out_message_mutex, which
        # publish() needs too; holding ours across publish() deadlocked the event loop against
        # paho's thread whenever a PUBACK arrived during the next publish.
        info = self._client.publish(self._batch_topic, payload, qos=1, properties=props)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._mids_lock:
                early = self._early_pubacks.pop(info.mid, None)
                if early is None:
                    self._mids[info.mid] = batch_id
            if early is not None:
                self._puback(batch_id, early)
            return
        self._loop.call_soon_threadsafe(
            self._on_failure, batch_id, f"publish failed: {mqtt.error_string(info.rc)}"
        )

    # -- network thread -----------------------------------------------------------------------
    def _network(self) -> None:
        open_socket = False
        while not self._stop.is_set():
            if not open_socket:
                try:
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = 0
                    self._client.connect(
                        self._host, self._port, keepalive=30, clean_start=True, properties=props
                    )
                    open_socket = True
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._fail(f"cannot reach the hub broker {self.url}: {exc}")
                    continue
            rc = self._client.loop(timeout=0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS and not self._stop.is_set():
                open_socket = False
                self._ready.clear()
                self._fail(self.last_error or f"hub broker connection lost: {mqtt.error_string(rc)}")
        try:
            self._client.disconnect()
            self._client.loop(timeout=0.2)
        except (OSError, ValueError):  # already closed
            pass

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        delay = self._backoff.next_delay()
        log.warning("%s; next attempt in %.1fs", reason, delay)
        self._stop.wait(delay)

    # -- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.last_error = f"hub broker refused the connection: {reason}"
            log.error("%s (check sync.username/password or the client certificate)", self.last_error)
            return
        client.subscribe([(self._ack_topic, 1), (self._status_topic, 1)])

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
            # Without the ack topic no batch can ever complete: report it, keep retrying.
            self.last_error = f"hub broker refused the ack subscription: {', '.join(refused)} (ACL?)"
            log.error(self.last_error)
            client.disconnect()
            return
        self._backoff.reset()
        self.last_error = None
        self._ready.set()
        log.info("sync connected to the hub broker %s as %s", self.url, self._cfg.client_id)
        self._loop.call_soon_threadsafe(self._on_hub_online)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """The broker's PUBACK. A refusal (MQTT 5 reason code, e.g. an ACL) is reported at once,
        instead of surfacing only as a missing ack from the hub."""
        with self._mids_lock:
            batch_id = self._mids.pop(mid, None)
            if batch_id is None:
                if len(self._early_pubacks) > 10_000:  # never claimed: not ours to keep
                    self._early_pubacks.clear()
                self._early_pubacks[mid] = reason
                return
        self._puback(batch_id, reason)

    def _puback(self, batch_id: str, reason: ReasonCode) -> None:
        if reason.is_failure:
            self.last_error = (
                f"hub broker refused batch {batch_id} on {self._batch_topic}: {reason} "
                "(its ACL lets this login publish only under its own edge id)"
            )
            log.error(self.last_error)
            self._loop.call_soon_threadsafe(self._on_failure, batch_id, self.last_error)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._status_topic:
            try:
                online = bool(orjson.loads(msg.payload).get("online"))
            except (orjson.JSONDecodeError, AttributeError):
                return
            was, self.hub_online = self.hub_online, online
            if online and was is False:
                log.info("the hub is back online: resending now")
                self._loop.call_soon_threadsafe(self._on_hub_online)
            return
        try:
            ack = Ack.model_validate_json(msg.payload)
        except ValidationError as exc:
            log.warning("unreadable ack on %s: %s", msg.topic, exc.errors()[0]["msg"])
            return
        self._loop.call_soon_threadsafe(self._on_ack, ack)


class HttpHubTransport:
    """``POST <hub_url>/api/ingest/batch``; the response body is the ack."""

    name = "http"

    def __init__(
        self,
        cfg: SyncSection,
        edge_id: str,
        loop: asyncio.AbstractEventLoop,
        on_ack: OnAck,
        on_failure: OnFailure,
        on_hub_online: Callable[[], None],
    ) -> None:
        parsed = urlparse(cfg.hub_url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"sync.hub_url: unsupported scheme {parsed.scheme!r} (http:// or https://)")
        self.url = cfg.hub_url.rstrip("/") + "/api/ingest/batch"
        self._cfg = cfg
        self._edge_id = edge_id
        self._on_ack = on_ack
        self._on_failure = on_failure
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reachable = True
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Always worth a try once started: the worker's backoff spaces the attempts."""
        return self._session is not None

    @property
    def reachable(self) -> bool:
        return self._reachable

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self._cfg.ca_file is not None or self._cfg.cert_file is not None:
            ssl_ctx = _tls_context(self._cfg.ca_file, self._cfg.cert_file, self._cfg.key_file)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._cfg.ack_timeout_secs),
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=self._cfg.max_in_flight),
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(self, batch_id: str, payload: bytes, signature: str | None) -> None:
        task = asyncio.get_running_loop().create_task(self._post(batch_id, payload, signature))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, batch_id: str, payload: bytes, signature: str | None) -> None:
        assert self._session is not None
        headers = {"Content-Type": sync_protocol.CONTENT_TYPE, "X-EK-Edge": self._edge_id}
        if self._cfg.api_key:
            headers["Authorization"] = f"Bearer {self._cfg.api_key}"
        if signature is not None:
            headers[sync_protocol.SIGNATURE_HEADER] = signature
        try:
            async with self._session.post(self.url, data=payload, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._reachable = False
            self.last_error = f"cannot reach the hub at {self.url}: {exc or type(exc).__name__}"
            self._on_failure(batch_id, self.last_error)
            return
        self._reachable = True
        try:
            ack = Ack.model_validate_json(body)
        except ValidationError:
            self.last_error = f"hub answered HTTP {status} without an ack: {body[:200]!r}"
            self._on_failure(batch_id, self.last_error)
            return
        self.last_error = None  # the hub answered; what it said is the worker's to report
        self._on_ack(ack)


def make_transport(
    cfg: SyncSection,
    edge_id: str,
    loop: asyncio.AbstractEventLoop,
    on_ack: OnAck,
    on_failure: OnFailure,
    on_hub_online: Callable[[], None],
) -> HubTransport:
    cls: type[MqttHubTransport] | type[HttpHubTransport] = (
        MqttHubTransport if cfg.hub_mqtt_url else HttpHubTransport
    )
    return cls(cfg, edge_id, loop, on_ack, on_failure, on_hub_online)

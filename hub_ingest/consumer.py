"""MQTT consumers: a shared subscription to every edge's batches, acks only after the insert.

paho-mqtt 2.x is used directly (MQTT 5, ``manual_ack``): the PUBACK for a batch is sent only
after its rows are in ClickHouse and its ack is published, so a hub killed mid-batch has the
batch redelivered by the broker (persistent session: ``clean_start=False`` plus a session
expiry). Several consumers in one process (``mqtt.consumers``) split the load with other hub
processes through ``$share/<group>/...``.

A batch's PUBACK goes out only once the broker has PUBACKed the ack we published for it (a
per-consumer thread waits for that, in order): paho sends at most 20 QoS 1 publishes at a time
and queues the rest, so a PUBACK sent right after ``publish()`` could overtake its ack, and a
hub stopping then left batches consumed whose acks were never sent (the edge would only get
them answered, as duplicates, after its resend timeout).

Threads and processes: paho's network thread per consumer only hands messages on; one decode
thread submits each batch to ``BatchProcessor.submit_prepare`` (decode worker processes when the
processor has a ``DecodePool``, else that thread itself); prepared batches wait in the group's
``GroupCommitter``, which the store's single thread drains, several batches per
``commit_many`` when they queue up (one ledger lookup and one ledger insert per group; see
:mod:`hub_ingest.processor`). Decoding the next batches overlaps with inserting these.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekite.broker_url import BrokerAddress
from edgekite.config import HubMqttSection
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore
from edgekite.paho_client import ReceiverClient
from edgekite.sync_protocol import SIGNATURE_PROPERTY, Ack
from edgekite.topics import edge_id_from_batch_topic, hub_ack_topic, hub_batch_share_filter, hub_status_topic
from hub_ingest.processor import BatchProcessor, PreparedBatch

log = logging.getLogger(__name__)

ONLINE = orjson.dumps({"online": True})
OFFLINE = orjson.dumps({"online": False})


def signature_of(msg: mqtt.MQTTMessage) -> str | None:
    props = getattr(msg, "properties", None)
    for key, value in getattr(props, "UserProperty", None) or []:
        if key == SIGNATURE_PROPERTY:
            return str(value)
    return None


MAX_GROUP = 16  # batches per commit_many: bounds a group's latency, amortises the ledger


class GroupCommitter:
    """Prepared batches from every consumer, committed in groups on the store's thread.

    One drain job is scheduled at a time; it commits at most ``MAX_GROUP`` batches and, if more
    are waiting, schedules itself again behind whatever else the store thread has queued (the
    read API), so ingest never monopolises the store.
    """

    def __init__(self, processor: BatchProcessor, store: HubStore) -> None:
        self._processor = processor
        self._store = store
        self._queue: deque[tuple[PreparedBatch, Callable[[Ack | None], None]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, prepared: PreparedBatch, done: Callable[[Ack | None], None]) -> None:
        with self._lock:
            self._queue.append((prepared, done))
            if self._scheduled:
                return
            self._scheduled = True
        self._store.submit(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_GROUP))]
        acks: list[Ack | None]
        try:
            acks = list(self._processor.commit_many([p for p, _ in items]))
        except Exception:
            log.exception("unexpected error storing %d batches; not acknowledged", len(items))
            acks = [None] * len(items)
        for (_, done), ack in zip(items, acks, strict=True):
            done(ack)
        with self._lock:
            if not self._queue:
                self._scheduled = False
                return
        self._store.submit(self._drain)


class Consumer:
    """One MQTT session of the share group. ``start()`` returns at once; ``stop()`` drains."""

    def __init__(
        self,
        index: int,
        cfg: HubMqttSection,
        processor: BatchProcessor,
        committer: GroupCommitter,
        decoder: ThreadPoolExecutor,
        on_state: Callable[[], None],
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.client_id = f"{cfg.client_id}-{index}"
        self._processor = processor
        self._committer = committer
        self._decoder = decoder
        self._on_state = on_state
        self._addr = BrokerAddress.parse(cfg.url, what="mqtt.url")
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._generation = 0
        self._pending = 0
        self._pending_lock = threading.Lock()
        # (ack publish, then): ``then(published)`` runs once the broker has the ack, in order.
        self._after_ack: queue.SimpleQueue[tuple[mqtt.MQTTMessageInfo, int, Callable[[bool], None]] | None]
        self._after_ack = queue.SimpleQueue()
        self._ack_waiter: threading.Thread | None = None
        self.last_error: str | None = None
        # ReceiverClient: at disconnect it reads until the broker closes, so the PUBACKs of the
        # last batches are not lost to a connection reset (they would come again, as duplicates).
        client = ReceiverClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        username = cfg.username if cfg.username is not None else self._addr.username
        password = cfg.password if cfg.password is not None else self._addr.password
        if username is not None:
            client.username_pw_set(username, password)
        if self._addr.tls or cfg.cert_file is not None:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(hub_status_topic(), OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_secs
        props.ReceiveMaximum = self.cfg.receive_maximum
        self._client.connect_async(
            self._addr.host, self._addr.port, keepalive=30, clean_start=False, properties=props
        )
        self._ack_waiter = threading.Thread(
            target=self._puback_after_acks, name=f"hub-acks-{self.index}", daemon=True
        )
        self._ack_waiter.start()
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop_taking(self) -> None:
        """Take no more batches (those already in hand are still finished by :meth:`stop`)."""
        self._stopping.set()

    def stop(self, drain_timeout: float = 30.0, *, last: bool = True) -> None:
        """Stop taking batches, finish (store + ack) those in hand, then disconnect.

        Batches not yet in hand stay with the broker for this session (no PUBACK was sent).
        """
        self._stopping.set()
        deadline = time.monotonic() + drain_timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.02)
        if last and self._connected.is_set():
            info = self._client.publish(hub_status_topic(), OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2)
        self._client.leave(10)  # the PUBACKs already queued go out first
        self._connected.clear()
        self._after_ack.put(None)
        if self._ack_waiter is not None:
            self._ack_waiter.join(5)
        self._on_state()

    def _puback_after_acks(self) -> None:
        """Runs each batch's ``then`` once its ack is at the broker (or the connection it came on
        is gone: that batch is not PUBACKed, the broker redelivers it, the ledger answers it)."""
        while (item := self._after_ack.get()) is not None:
            info, generation, then = item
            published = False
            while generation == self._generation:
                if self._stopping.is_set() and not self._connected.is_set():
                    break  # stopping with the broker gone: it redelivers the batch later
                try:
                    info.wait_for_publish(0.5)
                    published = info.is_published()
                except (RuntimeError, ValueError):  # not queued by paho: the ack never went out
                    break
                if published:
                    break
            then(published)

    # -- paho callbacks (paho's thread) -------------------------------------------------------
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
            log.error("consumer %s: %s", self.client_id, self.last_error)
            return
        self._generation += 1
        self.last_error = None
        client.subscribe(hub_batch_share_filter(self.cfg.share_group), qos=1)
        client.publish(hub_status_topic(), ONLINE, qos=1, retain=True)
        log.info(
            "consumer %s connected to %s:%d (session present: %s)",
            self.client_id,
            self._addr.host,
            self._addr.port,
            flags.session_present,
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
            self.last_error = f"hub broker refused the subscription: {', '.join(refused)} (check its ACL)"
            log.error("consumer %s: %s", self.client_id, self.last_error)
            return
        self._connected.set()
        self._on_state()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._on_state()
        if not self._stopping.is_set():
            log.warning("consumer %s lost the hub broker (%s); reconnecting", self.client_id, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return  # not acknowledged: the broker redelivers it to our session later
        mid, qos, generation = msg.mid, msg.qos, self._generation
        topic = msg.topic
        payload = bytes(msg.payload)
        signature = signature_of(msg)
        with self._pending_lock:
            self._pending += 1

        def puback() -> None:
            if qos > 0 and generation == self._generation:
                client.ack(mid, qos)

        def release() -> None:
            with self._pending_lock:
                self._pending -= 1

        def after_ack(published: bool) -> None:
            try:
                if published:
                    puback()
            finally:
                release()

        def finish(ack: Ack | None, edge_id: str | None) -> None:
            # Every answered batch is consumed, 'retry' and 'refused' included: the edge keeps
            # the batch until an 'ok' ack and resends it itself (after retry_after_ms).
            if ack is None or edge_id is None:
                try:
                    puback()
                finally:
                    release()
                return
            try:
                info = client.publish(hub_ack_topic(edge_id), ack.to_bytes(), qos=1)
            except Exception:
                release()
                raise
            self._after_ack.put((info, generation, after_ack))

        def committed(ack: Ack | None, edge_id: str) -> None:
            if ack is None:  # an unexpected error, logged: not acknowledged, the broker redelivers
                release()
                return
            finish(ack, edge_id)

        def prepared_done(fut: Future[Ack | PreparedBatch], edge_id: str) -> None:
            exc = fut.exception()
            if exc is not None:
                log.error(
                    "consumer %s: unexpected error decoding a batch; not acknowledged",
                    self.client_id,
                    exc_info=exc,
                )
                release()
                return
            prepared = fut.result()
            if isinstance(prepared, Ack):
                finish(prepared, edge_id)
            else:
                self._committer.put(prepared, lambda ack: committed(ack, edge_id))

        def decode_job() -> None:
            edge_id = edge_id_from_batch_topic(topic)
            try:
                if edge_id is None:
                    self._processor.metrics.batches_received.labels("mqtt").inc()
                    self._processor.metrics.batches_refused.labels("bad_topic").inc()
                    log.warning(
                        "consumer %s: batch on unexpected topic %r dropped", self.client_id, topic[:200]
                    )
                    finish(None, None)
                    return
                fut = self._processor.submit_prepare(edge_id, payload, signature, transport="mqtt")
            except Exception:
                log.exception(
                    "consumer %s: unexpected error decoding a batch; not acknowledged", self.client_id
                )
                release()
                return
            fut.add_done_callback(lambda f: prepared_done(f, edge_id))

        self._decoder.submit(decode_job)


class ConsumerGroup:
    """``mqtt.consumers`` consumers sharing one decode thread, one committer and the store's thread."""

    def __init__(self, cfg: HubMqttSection, processor: BatchProcessor, store: HubStore, metrics: HubMetrics):
        self._metrics = metrics
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-decode")
        self.committer = GroupCommitter(processor, store)
        self.consumers = [
            Consumer(i, cfg, processor, self.committer, self._decoder, self._update)
            for i in range(cfg.consumers)
        ]

    def _update(self) -> None:
        self._metrics.mqtt_connected.set(self.connected_count)

    @property
    def connected_count(self) -> int:
        return sum(c.connected for c in self.consumers)

    def start(self) -> None:
        for c in self.consumers:
            c.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(c.wait_connected(max(0.0, deadline - time.monotonic())) for c in self.consumers)

    def stop(self) -> None:
        # Every consumer stops taking batches at once; draining them one by one let the others
        # go on taking (and storing) batches for as long as the first one drained.
        for c in self.consumers:
            c.stop_taking()
        for i, c in enumerate(self.consumers):
            c.stop(last=i == len(self.consumers) - 1)
        self._decoder.shutdown(wait=True)

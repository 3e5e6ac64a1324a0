"""The MQTT source of the edge: broker messages into the store, acknowledged after commit.

Two ways to run the same receiver (``edge_bridge.receiver``), chosen by
``mqtt.bridge_process``:

- ``ProcessSubscriber`` (default): the broker session and validation run in a child process
  (``edge_bridge.bridge_process``) and this process only writes. paho, validation and the
  SQLite writer no longer take turns on one GIL, which roughly doubles the rate on two cores.
- ``ThreadSubscriber``: paho's thread decodes and hands rows to the writer in this process;
  one process less (about 25 MB), half the rate.

Either way a PUBACK leaves only after the transaction holding the message committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from edge_bridge.inbound import InboundRouter, rejection_summary
from edgekite.config import EdgeConfig
from edgekite.host import bridge_in_child, host_cpus
from edgekite.ingest import Decoded, EventRow, Rejection
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, IngestResult, WriteItem
from edgekite.store.queue import QueueClosedError

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def last_connect_error(self) -> str | None: ...

    def start(self) -> None: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def stop(self, drain_timeout: float = 30.0) -> None: ...


def make_subscriber(
    config: EdgeConfig,
    store: EdgeStore,
    metrics: EdgeMetrics,
    router: InboundRouter,
    *,
    url: str,
    in_child: bool | None = None,
) -> Subscriber:
    """``in_child``: where the bridge runs, if the caller decided already; else from
    ``mqtt.bridge_process`` and the CPUs this process may use."""
    if in_child is None:
        in_child = bridge_in_child(config.mqtt.bridge_process, host_cpus())
    if in_child:
        return ProcessSubscriber(config, store, metrics, router, url=url)
    if config.mqtt.bridge_process == "auto":
        log.info("one CPU usable: the MQTT bridge runs in the edge process (mqtt.bridge_process = auto)")
    return ThreadSubscriber(config, store, metrics, router, url=url)


class _Status:
    """Connection state as the edge's health and metrics see it."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self._metrics = metrics
        self.connected_event = threading.Event()
        self.last_connect_error: str | None = None

    def update(self, connected: bool, error: str | None, new_connection: bool) -> None:
        if connected:
            self.last_connect_error = None
            self.connected_event.set()
            self._metrics.mqtt_connected.set(1)
            if new_connection:
                self._metrics.mqtt_reconnects.inc()
            return
        if error is not None:
            self.last_connect_error = error
        self.connected_event.clear()
        self._metrics.mqtt_connected.set(0)


class _StatusReporting:
    """Connection state, as ``Subscriber`` exposes it, kept by ``_Status``."""

    _status: _Status

    @property
    def connected(self) -> bool:
        return self._status.connected_event.is_set()

    @property
    def last_connect_error(self) -> str | None:
        return self._status.last_connect_error

    def wait_connected(self, timeout: float) -> bool:
        return self._status.connected_event.wait(timeout)


def _submit(store: EdgeStore, item: WriteItem, stopping: threading.Event) -> bool:
    """Blocks while the store is full (that is the backpressure); False once shutting down."""
    try:
        while not store.submit(item, timeout=0.5):
            if stopping.is_set():
                return False
    except QueueClosedError:
        return False
    return True


def _barrier(store: EdgeStore, timeout: float) -> bool:
    """Wait until every item submitted before now has been committed and its callback run."""
    done = threading.Event()
    item = WriteItem(Decoded([], [], False), "job", job=lambda conn: None, done=lambda r: done.set())
    try:
        if not store.submit(item, timeout=timeout):
            return False
    except QueueClosedError:
        return False
    return done.wait(timeout)


class ThreadSubscriber(_StatusReporting):
    """paho's network thread decodes and queues; the writer thread sends the PUBACKs."""

    def __init__(
        self, config: EdgeConfig, store: EdgeStore, metrics: EdgeMetrics, router: InboundRouter, *, url: str
    ) -> None:
        self._store = store
        self._router = router
        self._status = _Status(metrics)
        self._stopping = threading.Event()
        # Labelled children resolved once: a label lookup per message is measurable here.
        self._m_messages = metrics.messages_received.labels("mqtt")
        self._m_events = metrics.events_received.labels("mqtt")
        # paho is imported here, not at the top: with the default child process the edge
        # process never holds a broker session of its own.
        from edge_bridge.receiver import MqttReceiver

        self._receiver = MqttReceiver(
            config, router.filters, url=url, on_message=self._on_message, on_status=self._status.update
        )

    def start(self) -> None:
        self._receiver.start()

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop reading, let the writer commit what it holds (acks go out), then disconnect."""
        self._stopping.set()
        self._receiver.stop_reading()
        _barrier(self._store, drain_timeout)
        self._receiver.disconnect()
        self._status.update(False, None, False)

    def _on_message(self, topic: str, payload: bytes, dup: bool, mid: int, qos: int, generation: int) -> None:
        self._m_messages.inc()
        item = self._router.build_item(topic, payload, dup, self._store.now_ms())
        self._m_events.inc(len(item.decoded.events) + len(item.decoded.rejections))
        if item.decoded.rejections:
            log.info("rejected from %s: %s", topic[:200], rejection_summary(item.decoded))
        ack = self._receiver.ack

        def done(result: IngestResult) -> None:
            if result.committed:
                ack(generation, mid, qos)

        item.done = done
        _submit(self._store, item, self._stopping)


class ProcessSubscriber(_StatusReporting):
    """Runs ``edge_bridge.bridge_process`` and writes what it decodes; restarts it if it dies.

    ``router`` is not used here: the child builds its own from the same config, so both modes
    route and validate alike."""

    RESTART_DELAY_SECS = 1.0

    def __init__(
        self, config: EdgeConfig, store: EdgeStore, metrics: EdgeMetrics, router: InboundRouter, *, url: str
    ) -> None:
        self._cfg = config
        self._url = url
        self._store = store
        self._metrics = metrics
        self._status = _Status(metrics)
        self._stopping = threading.Event()
        self._drained = threading.Event()
        self._m_messages = metrics.messages_received.labels("mqtt")
        self._m_events = metrics.events_received.labels("mqtt")
        self._acks: deque[tuple[int, int, int]] = deque()
        self._ack_ready = threading.Event()
        self._send_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # acks leave in one order, and before "disconnect"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: Connection | None = None
        self._data: Connection | None = None
        self._incarnation = 0
        self._reader: threading.Thread | None = None
        self._acker: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._reader = threading.Thread(target=self._read_loop, name="edgekite-bridge-reader", daemon=True)
        self._acker = threading.Thread(target=self._ack_loop, name="edgekite-bridge-acks", daemon=True)
        self._reader.start()
        self._acker.start()

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop the child reading, commit everything it forwarded, send those acks, let it go."""
        deadline = time.monotonic() + drain_timeout
        self._stopping.set()
        if self._send(("stop",)):
            self._drained.wait(max(0.0, deadline - time.monotonic()))
        if self._reader is not None:
            self._reader.join(max(0.0, deadline - time.monotonic()))
        _barrier(self._store, max(0.1, deadline - time.monotonic()))
        self._flush_acks()
        self._send(("disconnect",))
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("bridge process %d did not leave; killing it", proc.pid)
                proc.kill()
                proc.wait(5)
        self._ack_ready.set()
        if self._acker is not None:
            self._acker.join(2)
        self._close_pipes()
        self._status.update(False, None, False)

    # -- the child ---------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._incarnation += 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_bridge.bridge_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # group signals go to the edge, which drains the child
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        self._ctl = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._data = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self._proc = proc
        # Generations of different children never collide, so a late ack cannot hit a
        # packet id the new child's session reuses for another message.
        start = ("start", self._cfg.model_dump_json(), self._url, self._incarnation << 32)
        self._send(start)
        log.info("bridge process %d started for %s", proc.pid, self._url)

    def _close_pipes(self) -> None:
        for conn in (self._ctl, self._data):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()

    def _send(self, message: tuple[Any, ...]) -> bool:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            if self._ctl is None:
                return False
            try:
                self._ctl.send_bytes(data)
                return True
            except OSError:
                return False

    def _read_loop(self) -> None:
        while True:
            data = self._data
            assert data is not None
            try:
                msg = pickle.loads(data.recv_bytes())  # noqa: S301 - our child, a private pipe
            except (EOFError, OSError):
                if self._stopping.is_set():
                    self._drained.set()
                    return
                self._child_died()
                continue
            kind = msg[0]
            if kind == "items":
                if not self._submit_items(msg[1]):
                    self._drained.set()
                    return
            elif kind == "status":
                self._status.update(msg[1], msg[2], msg[3])
            elif kind == "drained":
                self._drained.set()
                return

    def _submit_items(self, records: list[tuple[Any, ...]]) -> bool:
        """Queue a forwarded batch. Consecutive messages that need nothing of their own (no
        redelivery fingerprint, no rejection for the dead-letter table) go as one store item,
        acknowledged together: per-item overhead in this process was a fifth of its CPU."""
        new = tuple.__new__  # a C call: EventRow(*row) or EventRow._make would run Python per row
        events = 0
        group_rows: list[EventRow] = []
        group_acks: list[tuple[int, int, int]] = []
        group_size = 0
        for generation, mid, qos, topic, dup, fingerprint, size, rows, rejections, ids_generated in records:
            events += len(rows) + len(rejections)
            if fingerprint is None and not rejections:
                group_rows.extend([new(EventRow, r) for r in rows])
                group_acks.append((generation, mid, qos))
                group_size += size
                continue
            if group_acks and not self._submit_group(group_rows, group_acks, group_size):
                return False
            group_rows, group_acks, group_size = [], [], 0
            decoded = Decoded(
                [new(EventRow, r) for r in rows], [new(Rejection, r) for r in rejections], ids_generated
            )
            item = WriteItem(
                decoded, "mqtt", topic, dup, fingerprint, self._acker_for([(generation, mid, qos)]), size
            )
            if not _submit(self._store, item, self._stopping):
                return False
        if group_acks and not self._submit_group(group_rows, group_acks, group_size):
            return False
        self._m_messages.inc(len(records))
        self._m_events.inc(events)
        return True

    def _submit_group(self, rows: list[EventRow], acks: list[tuple[int, int, int]], size: int) -> bool:
        item = WriteItem(Decoded(rows, [], False), "mqtt", None, False, None, self._acker_for(acks), size)
        return _submit(self._store, item, self._stopping)

    def _acker_for(self, acks: list[tuple[int, int, int]]) -> Callable[[IngestResult], None]:
        pending, ready = self._acks, self._ack_ready

        def done(result: IngestResult) -> None:
            if result.committed:
                pending.extend(acks)
                ready.set()

        return done

    def _child_died(self) -> None:
        proc = self._proc
        code = proc.wait() if proc is not None else None
        self._status.update(False, f"bridge process exited with code {code}", False)
        self._metrics.bridge_restarts.inc()
        log.error(
            "bridge process exited (code %s); restarting in %.0f s, unacknowledged messages come again",
            code,
            self.RESTART_DELAY_SECS,
        )
        self._close_pipes()
        time.sleep(self.RESTART_DELAY_SECS)
        if not self._stopping.is_set():
            self._spawn()

    def _ack_loop(self) -> None:
        while not self._stopping.is_set() or self._acks:
            self._ack_ready.wait(0.5)
            self._ack_ready.clear()
            self._flush_acks()

    def _flush_acks(self) -> None:
        acks = self._acks
        with self._flush_lock:
            batch = []
            while acks:
                batch.append(acks.popleft())
            if batch:
                self._send(("acks", batch))


__all__ = ["ProcessSubscriber", "Subscriber", "ThreadSubscriber", "make_subscriber"]

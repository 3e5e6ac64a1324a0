"""The bridge's child process: MQTT session and validation on their own core.

In one process, paho's network thread, validation and the SQLite writer share one GIL and
the edge stores about 6,000 single-envelope messages/s on any number of cores. Here the child
holds the broker session and decodes each message into rows; the edge process only writes.
Nothing is acknowledged to the broker by the child on its own: the edge sends back the packet
ids whose rows have committed, and only then does the child PUBACK them.

Wire protocol, pickled tuples framed by ``multiprocessing.connection`` on the child's stdin
(edge → child) and stdout (child → edge):

  edge → child  ("start", config_json, broker_url, generation_base)   once, first
                ("acks", [(generation, mid, qos), ...])                committed messages
                ("stop",)          stop reading; answer ("drained",) after the last item
                ("disconnect",)    send queued PUBACKs, leave the broker, exit
  child → edge  ("status", connected, error, new_connection)
                ("items", [(generation, mid, qos, topic, dup, fingerprint, size,
                            event rows, rejections, ids_generated), ...])   rows as plain tuples
                ("drained",)

If the edge process dies, the child's stdin reaches EOF and it exits at once: anything not
yet committed stays unacknowledged and the broker redelivers it to the next session.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

import orjson

from edge_bridge.inbound import ITEM_OVERHEAD_BYTES, InboundRouter, fingerprint_if_needed, rejection_summary
from edge_bridge.receiver import MqttReceiver
from edgekite.config_view import ConfigView
from edgekite.logs import setup_logging

if TYPE_CHECKING:  # the child gets a plain view of the edge's validated config, not the models
    from edgekite.config import EdgeConfig

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031  # Linux: a bigger pipe lets the child run ahead of the writer a little
PIPE_BYTES = 1 << 20


def grow_pipe(fd: int) -> None:
    # Not a pipe, or above /proc/sys/fs/pipe-max-size: the default size still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)


class Forwarder:
    """Collects decoded messages and sends them to the edge in batches, in arrival order.

    A full batch is sent by the thread that filled it (paho's), so when the edge stops
    reading, paho stops reading the socket and the broker holds the backlog; a partial batch
    goes after ``linger`` seconds, so a trickle is not delayed.
    """

    def __init__(
        self, conn: Connection, max_items: int = 256, max_bytes: int = 256 * 1024, linger: float = 0.002
    ) -> None:
        self._conn = conn
        self._max = max_items
        self._max_bytes = max_bytes  # arrays of envelopes: bound the batch by size too
        self._linger = linger
        self._pending: list[tuple[Any, ...]] = []
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._flush_loop, name="bridge-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: tuple[Any, ...], nbytes: int) -> None:
        with self._cond:
            self._pending.append(record)
            self._pending_bytes += nbytes
            n, size = len(self._pending), self._pending_bytes
            if n == 1:
                self._cond.notify()
        if n >= self._max or size >= self._max_bytes:
            self.flush()

    def flush(self) -> None:
        with self._send_lock:  # swap and send under one lock: batches leave in arrival order
            with self._cond:
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
            if batch:
                self.send(("items", batch), locked=True)

    def send(self, message: tuple[Any, ...], *, locked: bool = False) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if locked:
            self._conn.send_bytes(data)
            return
        with self._send_lock:
            self._conn.send_bytes(data)

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(self._linger)
            try:
                self.flush()
            except OSError:  # the edge is gone; the control loop exits on EOF
                return


class ChildBridge:
    def __init__(self, config: EdgeConfig, url: str, out: Connection, generation_base: int) -> None:
        self._router = InboundRouter(config)
        self._forward = Forwarder(out)
        self.receiver = MqttReceiver(
            config,
            self._router.filters,
            url=url,
            on_message=self._on_message,
            on_status=self._on_status,
            generation_base=generation_base,
        )

    def start(self) -> None:
        self._forward.start()
        self.receiver.start()

    def _on_status(self, connected: bool, error: str | None, new_connection: bool) -> None:
        self._forward.send(("status", connected, error, new_connection))

    def _on_message(self, topic: str, payload: bytes, dup: bool, mid: int, qos: int, generation: int) -> None:
        decoded = self._router.decode(topic, payload, int(time.time() * 1000))
        if decoded.rejections:
            log.info("rejected from %s: %s", topic[:200], rejection_summary(decoded))
        # Plain tuples, not the named ones: pickling those costs a Python call per row, twice.
        self._forward.put(
            (
                generation,
                mid,
                qos,
                topic,
                dup,
                fingerprint_if_needed(decoded, topic, payload),
                len(payload) + ITEM_OVERHEAD_BYTES,
                [tuple(r) for r in decoded.events],
                [tuple(r) for r in decoded.rejections],
                decoded.ids_generated,
            ),
            len(payload),
        )

    def drain(self) -> None:
        self.receiver.stop_reading()
        self._forward.flush()
        self._forward.send(("drained",))


def send_acks(receiver: MqttReceiver, acks: list[tuple[int, int, int]]) -> None:
    """PUBACK committed messages, a run of one connection's QoS 1 packet ids per write."""
    run: list[int] = []
    run_generation = -1
    for generation, mid, qos in acks:
        if qos != 1:  # QoS 0 needs no PUBACK; QoS 2 never comes (the subscription is QoS 1)
            continue
        if generation != run_generation and run:
            receiver.ack_many(run_generation, run)
            run = []
        run_generation = generation
        run.append(mid)
    if run:
        receiver.ack_many(run_generation, run)


def serve(ctl: Connection, out: Connection) -> int:
    start = pickle.loads(ctl.recv_bytes())  # noqa: S301 - our parent, a private pipe
    if start[0] != "start":
        raise SystemExit(f"bridge process: expected a start message, got {start[0]!r}")
    _, config_json, url, generation_base = start
    # Validated by the edge; the view has the same attributes, and pydantic stays unloaded here.
    config = cast("EdgeConfig", ConfigView(orjson.loads(config_json)))
    setup_logging(config.log.level, config.log.format)
    bridge = ChildBridge(config, url, out, generation_base)
    bridge.start()
    receiver = bridge.receiver
    while True:
        msg = pickle.loads(ctl.recv_bytes())  # noqa: S301 - our parent, a private pipe
        kind = msg[0]
        if kind == "acks":
            send_acks(receiver, msg[1])
        elif kind == "stop":
            bridge.drain()
        elif kind == "disconnect":
            bridge.receiver.disconnect()
            return 0


def main() -> int:
    # Ctrl-C or a SIGTERM to the whole group must not cut the drain short: the edge tells us
    # when to leave, and if the edge dies we see EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdin/stdout carry the protocol; anything printed by accident must not corrupt it.
    ctl = Connection(os.dup(0), writable=False)
    out = Connection(os.dup(1), readable=False)
    grow_pipe(out.fileno())
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return serve(ctl, out)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        # The edge is gone (killed, or crashed): leave now, acknowledging nothing more.
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

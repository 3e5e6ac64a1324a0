"""Everything a batch needs before storage, as a pure function that a worker process can run.

``prepare_payload`` decompresses and parses a batch, checks who sent it, validates every
envelope (:mod:`hub_ingest.fast_decode` for a well-formed batch, else
:func:`hub_ingest.decode.decode_events`) and serialises the accepted events as one Arrow IPC
stream. It is the hub's CPU-heavy half (~15 µs/event on the fast path, ~27 on the reference
path, against ~9 µs for the chDB insert), so the hub runs it in ``DecodePool`` worker
processes and keeps only the inserts, the ledger and the acks in the one process that may open
chDB: on a 2-core machine decode and insert then run side by side instead of taking turns under
one GIL.

Workers are started with the ``spawn`` method (a fresh interpreter, never a fork of a process
that has chDB's threads and 555 MB mapped), exit when the hub process goes away (a watchdog
thread, since a kill -9 leaves no one to tell them), and run with the cyclic garbage collector
off during a batch: a parsed batch is ~30,000 young dicts and lists, and collecting them while
they are being built doubled ``orjson.loads``' time; the JSON trees hold no reference cycles,
so reference counting frees them, and a full collection runs every ``_GC_EVERY`` batches.
"""

from __future__ import annotations

import gc
import hmac
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, NamedTuple

import pyarrow as pa

from edgekite.config import HubConfig, LimitsSection
from edgekite.hubstore.arrow import EVENTS_SCHEMA, table_from_columns
from edgekite.sync_protocol import BatchError, BatchHeader, decode_batch, verify
from edgekite.visitor import DailySalts
from hub_ingest.decode import DecodedBatch, decode_events
from hub_ingest.fast_decode import decode_events_fast, parse_batch_fast

Transport = Literal["mqtt", "http"]


class PrepareContext(NamedTuple):
    """What ``prepare_payload`` needs from the hub's configuration (small and picklable)."""

    limits: LimitsSection
    dead_letter_max_bytes: int
    edge_keys: Mapping[str, str]  # edge_id -> api_key; empty: development mode, any edge
    ip_mode: str = "truncate"  # what is kept of a web event's data.ip (ingest.visitor_ip)
    salt_keep_days: int = 2

    @classmethod
    def from_config(cls, config: HubConfig) -> PrepareContext:
        return cls(
            config.limits,
            config.ingest.dead_letter_max_bytes,
            {edge_id: e.api_key for edge_id, e in config.edges.items()},
            config.ingest.visitor_ip,
            config.ingest.salt_keep_days,
        )


class Refusal(NamedTuple):
    """A batch refused before storage (the processor counts, logs and answers it)."""

    edge_id: str
    batch_id: str
    code: str
    detail: str


class PreparedBatch(NamedTuple):
    """A batch that passed every check and is ready to insert.

    ``decoded.columns`` is empty: the accepted events travel as ``events_ipc``, one Arrow IPC
    stream (``None`` when no event was accepted), which chDB reads natively.
    """

    header: BatchHeader
    decoded: DecodedBatch
    events_ipc: bytes | None
    hub_received_at: int


def arrow_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _authenticate(
    ctx: PrepareContext,
    header: BatchHeader,
    payload: bytes,
    signature: str | None,
    http_key: str | None,
    transport: Transport,
) -> tuple[str, str] | None:
    if not ctx.edge_keys:
        return None
    key = ctx.edge_keys.get(header.edge_id)
    if key is None:
        return "unknown_edge", f"edge {header.edge_id!r} is not configured at this hub"
    if verify(key, payload, signature):
        return None
    if transport == "http":
        if http_key is not None and hmac.compare_digest(http_key.encode(), key.encode()):
            return None
        return "bad_key", f"no valid key or signature for edge {header.edge_id!r}"
    return "bad_signature", f"missing or wrong signature for edge {header.edge_id!r}"


def prepare_payload(
    ctx: PrepareContext,
    edge_id_from_transport: str | None,
    payload: bytes,
    signature: str | None,
    http_key: str | None,
    transport: Transport,
    hub_received_at: int,
    salts: Mapping[int, bytes] | None = None,
) -> Refusal | PreparedBatch:
    """Decode, authenticate and validate one batch. Pure: no I/O, no metrics, no logging.

    ``salts`` (UTC day -> salt) are the live visitor-id salts: web events get their visitor id
    here and their IP truncated or dropped, before anything is stored.
    """
    fallback_edge = edge_id_from_transport or "unknown"
    fast = parse_batch_fast(payload)
    events: list[Any] | None = None
    if fast is not None:
        header = fast[0]
    else:
        try:
            header, events = decode_batch(payload)
        except BatchError as exc:
            return Refusal(fallback_edge, "", exc.code, exc.detail)
    edge_id = header.edge_id
    if edge_id_from_transport is not None and edge_id != edge_id_from_transport:
        return Refusal(
            edge_id_from_transport,
            header.batch_id,
            "edge_mismatch",
            f"the batch names edge {edge_id!r} but was sent as {edge_id_from_transport!r}",
        )
    refusal = _authenticate(ctx, header, payload, signature, http_key, transport)
    if refusal is not None:
        return Refusal(edge_id, header.batch_id, *refusal)
    daily_salts = DailySalts(salts, ctx.salt_keep_days) if salts else None
    decoded = None
    if fast is not None:
        decoded = decode_events_fast(
            header,
            fast[1],
            hub_received_at=hub_received_at,
            limits=ctx.limits,
            salts=daily_salts,
            ip_mode=ctx.ip_mode,
        )
        fast = None
    if decoded is None:  # the reference path judges the batch, and words every refusal
        if events is None:
            try:
                header, events = decode_batch(payload)
            except BatchError as exc:
                return Refusal(edge_id, header.batch_id, exc.code, exc.detail)
        decoded = decode_events(
            header,
            events,
            hub_received_at=hub_received_at,
            limits=ctx.limits,
            dead_letter_max_bytes=ctx.dead_letter_max_bytes,
            salts=daily_salts,
            ip_mode=ctx.ip_mode,
        )
    del events
    ipc = arrow_ipc(table_from_columns(EVENTS_SCHEMA, decoded.columns)) if decoded.accepted else None
    return PreparedBatch(header, decoded._replace(columns={}), ipc, hub_received_at)


# -- worker processes ------------------------------------------------------------------------
_CTX: PrepareContext | None = None
_GC_EVERY = 64
_done = 0


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:  # the hub is gone (kill -9): nobody will stop us
            os._exit(0)


def _worker_init(ctx: PrepareContext, parent_pid: int) -> None:
    global _CTX
    _CTX = ctx
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the hub's to handle
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    gc.collect()
    gc.freeze()  # modules and their objects: never scanned again


def _worker_prepare(
    edge_id_from_transport: str | None,
    payload: bytes,
    signature: str | None,
    http_key: str | None,
    transport: Transport,
    hub_received_at: int,
    salts: Mapping[int, bytes] | None = None,
) -> Refusal | PreparedBatch:
    global _done
    assert _CTX is not None
    gc.disable()
    try:
        return prepare_payload(
            _CTX, edge_id_from_transport, payload, signature, http_key, transport, hub_received_at, salts
        )
    finally:
        _done += 1
        if _done % _GC_EVERY == 0:
            gc.collect()
        gc.enable()


def _ready() -> int:
    return os.getpid()


class DecodePool:
    """``workers`` spawned processes running :func:`prepare_payload`; restarted if one dies."""

    def __init__(self, ctx: PrepareContext, workers: int) -> None:
        self.ctx = ctx
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode pool is shut down")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(self.ctx, os.getpid()),
                )
            return self._pool

    def start(self, timeout: float = 60.0) -> list[int]:
        """Start every worker now (imports take ~0.5 s), not on the first batch."""
        pool = self._executor()
        return [f.result(timeout) for f in [pool.submit(_ready) for _ in range(self.workers)]]

    def submit(
        self,
        edge_id_from_transport: str | None,
        payload: bytes,
        signature: str | None,
        http_key: str | None,
        transport: Transport,
        hub_received_at: int,
        salts: Mapping[int, bytes] | None = None,
    ) -> Future[Refusal | PreparedBatch]:
        args = (edge_id_from_transport, payload, signature, http_key, transport, hub_received_at, salts)
        try:
            return self._executor().submit(_worker_prepare, *args)
        except BrokenProcessPool:
            self.restart()
            return self._executor().submit(_worker_prepare, *args)

    def restart(self) -> None:
        """Drop a broken pool (a worker was killed); the next submit starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def is_broken(exc: BaseException) -> bool:
    return isinstance(exc, BrokenProcessPool)


__all__ = [
    "DecodePool",
    "PrepareContext",
    "PreparedBatch",
    "Refusal",
    "arrow_ipc",
    "is_broken",
    "prepare_payload",
]

"""The edge store's single writer: one thread, one connection, batched transactions.

Every transport hands decoded messages to :meth:`EdgeStore.submit` with a completion
callback; the writer commits many messages in one transaction (events, rollups, source
state, dead letters together) and only then runs the callbacks, which is where the MQTT
PUBACK or the HTTP response is sent. Nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import zstandard

from edgekite.codec import PayloadCodec
from edgekite.config import EdgeConfig
from edgekite.ingest import (
    FLAG_SKEW_FUTURE,
    FLAG_SKEW_PAST,
    STORED_FIELDS,
    Decoded,
    EventRow,
    Rejection,
    message_fingerprint,
)
from edgekite.metrics import EdgeMetrics
from edgekite.store import id_index, maintenance
from edgekite.store.checkpointer import WalCheckpointer
from edgekite.store.in_list import MAX_IN, padded_in
from edgekite.store.queue import BoundedQueue, QueueClosedError
from edgekite.store.rollup_writer import RollupWriter
from edgekite.store.schema import connect, migrate

log = logging.getLogger(__name__)

_INSERT_EVENT = (
    "INSERT INTO events (rowid, event_id, observed_at, received_at, source_type, source_id, source_seq, "
    "category, type, severity, correlation_id, payload_json, attachments_json, pii, retention_class, "
    "meta_json, flags) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_SOURCE = (
    "INSERT INTO sources (source_id, source_type, first_seen, last_seen, last_seq, events, last_heartbeat) "
    "VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
    "source_type = excluded.source_type, last_seen = max(last_seen, excluded.last_seen), "
    "last_seq = max(last_seq, excluded.last_seq), events = events + excluded.events, "
    "last_heartbeat = CASE WHEN excluded.last_heartbeat IS NULL THEN last_heartbeat "
    "WHEN last_heartbeat IS NULL THEN excluded.last_heartbeat "
    "ELSE max(last_heartbeat, excluded.last_heartbeat) END"
)
_INSERT_DEAD = (
    "INSERT INTO dead_letter (received_at, transport, topic, code, reason, payload, payload_bytes) "
    "VALUES (?,?,?,?,?,?,?)"
)


@dataclass(slots=True)
class IngestResult:
    """What became of one submitted message."""

    committed: bool
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    value: Any = None  # what a write job returned


@dataclass(slots=True)
class WriteItem:
    """One message on its way to SQLite."""

    decoded: Decoded
    transport: str
    topic: str | None = None
    redelivery: bool = False  # MQTT DUP flag: this message may already be committed
    fingerprint: bytes | None = None
    done: Callable[[IngestResult], None] | None = None
    size: int = 0
    job: Callable[[sqlite3.Connection], Any] | None = None  # other writes (settings), same writer


def _weight(item: WriteItem) -> int:
    return max(1, len(item.decoded.events))


class EdgeStore:
    """Owns edge.db's only write connection. Use as a context manager or open()/close()."""

    def __init__(
        self,
        config: EdgeConfig,
        metrics: EdgeMetrics,
        *,
        clock: Callable[[], float] = time.time,
        queue_max_bytes: int | None = None,
    ) -> None:
        """``queue_max_bytes``: the ingest queue's bound as the edge resolved it
        (``store.queue_max_bytes`` depends on where the MQTT bridge runs)."""
        self._cfg = config
        self._metrics = metrics
        self._clock = clock
        self._queue: BoundedQueue[WriteItem] = BoundedQueue(
            config.store.queue_max_messages, queue_max_bytes or config.store.ingest_queue_bytes(False)
        )
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: WalCheckpointer | None = None
        self._thread: threading.Thread | None = None
        self._last_seq: dict[str, int] = {}
        self._retention = maintenance.RetentionState()
        self._stopping = threading.Event()
        self.codec = PayloadCodec()
        self._rollups = RollupWriter(config.rollups)
        self._degraded = False  # retrying a batch without rollups after an unexpected error
        self._rows_written = 0
        self._ids: id_index.TieredIds | None = None
        self._listeners: list[Callable[[list[EventRow]], None]] = []
        self.last_commit_ms: int | None = None
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> EdgeStore:
        conn = connect(self._cfg.db_path, self._cfg.store)
        migrate(conn)
        self._last_seq = dict(conn.execute("SELECT source_id, last_seq FROM sources").fetchall())
        self.codec.load(conn)
        self._rows_written = int(conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0])
        self._ids = id_index.TieredIds(conn, id_index.direct_below(self._cfg.store.cache_mb))
        self._conn = conn
        if self._cfg.store.background_checkpoint:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = WalCheckpointer(self._cfg.db_path, self._cfg.store, self._metrics).start()
        self._thread = threading.Thread(target=self._run, name="edgekite-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking work, commit everything queued, then close the connection."""
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "writer did not drain within %.0f s; uncommitted messages stay unacknowledged", timeout
                )
                self._stopping.set()
                self._thread.join(5)
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None and (self._thread is None or not self._thread.is_alive()):
            try:
                maintenance.checkpoint(self._conn, truncate=True)
            except sqlite3.Error as exc:
                log.warning("final checkpoint failed: %s", exc)
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EdgeStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting ------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def submit(self, item: WriteItem, timeout: float | None = None) -> bool:
        """Queue a message for the writer; blocks while the queue is full (backpressure).

        Returns False on timeout; raises QueueClosedError when the store is shutting down.
        """
        return self._queue.put(item, item.size or 1, timeout)  # the writer updates the depth gauge

    async def ingest(self, item: WriteItem) -> IngestResult:
        """Submit from asyncio and wait for the commit, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[IngestResult] = loop.create_future()

        def done(result: IngestResult) -> None:
            loop.call_soon_threadsafe(_set_if_pending, fut, result)

        item.done = done
        if not self.submit(item, timeout=0):
            await loop.run_in_executor(None, self.submit, item)
        return await fut

    async def run_write(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``job(conn)`` on the single writer, inside a write transaction; returns its value."""
        result = await self.ingest(WriteItem(Decoded([], [], False), "job", job=job))
        if not result.committed:
            raise RuntimeError("the write job did not commit")
        if isinstance(result.value, Exception):
            raise result.value
        return result.value

    def add_listener(self, listener: Callable[[list[EventRow]], None]) -> None:
        """Called on the writer thread with each batch of newly stored events, after commit."""
        self._listeners.append(listener)

    @property
    def writer_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queue_max_bytes(self) -> int:
        return self._queue.max_bytes

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        store_cfg = self._cfg.store
        interval = self._cfg.retention.interval_secs
        next_maintenance = time.monotonic() + min(interval, 2.0)
        maintenance_more = False
        next_wal_check = 0.0
        while True:
            batch = self._queue.get_batch(
                store_cfg.batch_max_events,
                _weight,
                first_wait=0.25,
                fill_wait=store_cfg.batch_max_wait_ms / 1000,
            )
            if batch:
                self._commit_with_retry(conn, batch)
            elif self._queue.closed:
                return
            now = time.monotonic()
            if batch or now >= next_wal_check:
                next_wal_check = now + 1.0
                self._control_wal(conn)
            if maintenance_more or now >= next_maintenance:
                if not maintenance_more:
                    next_maintenance = now + interval
                try:
                    maintenance_more = self._maintenance_step(conn)
                except sqlite3.Error as exc:
                    log.warning("retention step failed, will retry: %s", exc)
                    maintenance_more = False

    def _commit_with_retry(self, conn: sqlite3.Connection, batch: list[WriteItem]) -> None:
        delay = 0.05
        while True:
            try:
                results = self._commit(conn, batch)
                self.last_error = None
                break
            except Exception as exc:
                if not isinstance(exc, sqlite3.Error) and not self._degraded:
                    # A bug in derived data (rollups, sketches) must not cost the events
                    # themselves, nor stop the writer: store them without rollups and say so.
                    log.exception("rollups failed; storing this batch without them")
                    self._metrics.rollup_errors.inc()
                    self._degraded = True
                    continue
                if not isinstance(exc, sqlite3.Error):
                    log.exception("batch of %d messages cannot be stored; left unacknowledged", len(batch))
                    results = [IngestResult(committed=False) for _ in batch]
                    break
                self._metrics.commit_errors.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("commit of %d messages failed (%s); retrying in %.2f s", len(batch), exc, delay)
                if self._stopping.is_set():
                    results = [IngestResult(committed=False) for _ in batch]
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._degraded = False
        for item, result in zip(batch, results, strict=True):
            if item.done is not None:
                try:
                    item.done(result)
                except Exception:
                    log.exception("completion callback failed (transport %s)", item.transport)
        self._metrics.queue_depth.set(len(self._queue))
        self._metrics.queue_bytes.set(self._queue.nbytes)

    def _commit(self, conn: sqlite3.Connection, batch: list[WriteItem]) -> list[IngestResult]:
        t0 = time.perf_counter()
        now_ms = self.now_ms()
        results = [IngestResult(committed=True, rejected=list(item.decoded.rejections)) for item in batch]
        ids = self._ids
        assert ids is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Redelivered id-less messages already committed are duplicates as a whole.
            seen_fps: set[bytes] = set()
            fps = [item.fingerprint for item in batch if item.fingerprint is not None and item.redelivery]
            for start in range(0, len(fps), MAX_IN):
                marks, params = padded_in(fps[start : start + MAX_IN], b"")
                seen_fps.update(
                    r[0] for r in conn.execute(f"SELECT fp FROM fingerprints WHERE fp IN ({marks})", params)
                )
            for i, item in enumerate(batch):
                if item.job is not None:
                    try:
                        results[i].value = item.job(conn)
                    except sqlite3.Error:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a job's own bug must not stop the writer
                        results[i].value = exc
            candidates: list[tuple[int, EventRow]] = []
            for i, item in enumerate(batch):
                if item.fingerprint is not None and item.fingerprint in seen_fps:
                    results[i].duplicates += len(item.decoded.events)
                    continue
                candidates.extend(zip(repeat(i), item.decoded.events))  # no generator: 2 % of the writer

            new_rows, seq_updates = self._insert_events(conn, candidates, results)
            ids.merge(conn)
            self._update_rollups(conn, new_rows)
            self._write_dead_letters(conn, batch, now_ms)
            dups = sum(r.duplicates for r in results)
            rejected = sum(len(item.decoded.rejections) for item in batch)
            if dups or rejected:
                conn.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT DO UPDATE SET value = value + excluded.value",
                    [("duplicates_total", dups), ("rejected_total", rejected)],
                )
            fp_rows = [
                (item.fingerprint, now_ms)
                for item in batch
                if item.fingerprint is not None and item.fingerprint not in seen_fps
            ]
            if fp_rows:
                conn.executemany("INSERT OR IGNORE INTO fingerprints (fp, received_at) VALUES (?,?)", fp_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._rollups.reset()
            ids.rolled_back(conn)
            raise
        self._last_seq.update(seq_updates)
        self.last_commit_ms = now_ms
        self._maybe_train(conn, len(new_rows))
        if new_rows:
            for listener in self._listeners:
                try:
                    listener(new_rows)
                except Exception:
                    log.exception("event listener failed")
        self._record_metrics(batch, results, new_rows, time.perf_counter() - t0)
        return results

    def _insert_events(
        self, conn: sqlite3.Connection, candidates: list[tuple[int, EventRow]], results: list[IngestResult]
    ) -> tuple[list[EventRow], dict[str, int]]:
        """Insert the candidates whose ids no stored event has (nor an earlier one in the batch)."""
        if not candidates:
            return [], {}
        ids = self._ids
        assert ids is not None
        # Explicit rowids (what SQLite would pick: max + 1) so the id index can name them.
        (first,) = conn.execute("SELECT coalesce(max(rowid), 0) + 1 FROM events").fetchone()
        # Fast path, no replays at all: the index's unique keys do the checking.
        conn.execute("SAVEPOINT events_insert")
        if ids.add_if_all_new(conn, [(row.event_id, first + n) for n, (_, row) in enumerate(candidates)]):
            rows, seq_updates = self._assign_seqs([row for _, row in candidates])
            conn.executemany(_INSERT_EVENT, self._encoded(rows, first))
            conn.execute("RELEASE events_insert")
            for i, _ in candidates:
                results[i].accepted += 1
            return rows, seq_updates
        conn.execute("ROLLBACK TO events_insert")
        conn.execute("RELEASE events_insert")
        seen = ids.stored(conn, [row.event_id for _, row in candidates])
        fresh: list[EventRow] = []
        for i, row in candidates:
            if row.event_id in seen:
                results[i].duplicates += 1
            else:
                seen.add(row.event_id)
                fresh.append(row)
                results[i].accepted += 1
        rows, seq_updates = self._assign_seqs(fresh)
        if rows:
            conn.executemany(_INSERT_EVENT, self._encoded(rows, first))
            ids.add(conn, [(row.event_id, first + n) for n, row in enumerate(rows)])
        return rows, seq_updates

    def _encoded(self, rows: list[EventRow], first_rowid: int) -> list[tuple[Any, ...]]:
        """Rows as stored: rowid, the table's columns, JSON compressed once a dictionary exists."""
        enc = self.codec.encode
        if self.codec.active_dict_id is None:
            return [(first_rowid + n, *r[:STORED_FIELDS]) for n, r in enumerate(rows)]
        # Rows from the HTTP decode worker come encoded already (``EventRow.encoded_json``): any
        # dictionary in edge.db is a valid stored form, whichever is newest.
        return [
            (first_rowid + n, *r[:10], s[0], s[1], r.pii, r.retention_class, s[2], r.flags)
            for n, r in enumerate(rows)
            for s in (r.encoded_json or (enc(r.payload_json), enc(r.attachments_json), enc(r.meta_json)),)
        ]

    def _maybe_train(self, conn: sqlite3.Connection, new_rows: int) -> None:
        """Train the compression dictionary once enough of this edge's own events exist."""
        self._rows_written += new_rows
        cfg = self._cfg.store
        if (
            not cfg.compress
            or self.codec.active_dict_id is not None
            or self._rows_written < cfg.compress_train_events
        ):
            return
        t0 = time.perf_counter()
        samples: list[bytes] = []
        query = (
            "SELECT payload_json, attachments_json, meta_json FROM events "
            "WHERE typeof(payload_json) = 'text' ORDER BY rowid DESC LIMIT ?"
        )
        for payload, attachments, meta in conn.execute(query, (cfg.compress_train_events,)):
            samples.extend(v.encode() for v in (payload, attachments, meta) if isinstance(v, str) and v)
        try:
            conn.execute("BEGIN IMMEDIATE")
            dict_id, data = self.codec.train(conn, samples, self.now_ms())
            conn.execute("COMMIT")
            self.codec.install(dict_id, data)
        except (zstandard.ZstdError, ValueError, sqlite3.Error) as exc:  # too few/uniform samples: later
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("could not train the payload dictionary yet: %s", exc)
            self._rows_written = 0
            return
        n_samples = len(samples)
        del samples
        _release_heap()  # training's scratch memory would otherwise stay in the process for good
        log.info(
            "trained zstd dictionary %d from %d payload samples in %.0f ms; new rows are compressed",
            dict_id,
            n_samples,
            (time.perf_counter() - t0) * 1000,
        )

    def _assign_seqs(self, rows: list[EventRow]) -> tuple[list[EventRow], dict[str, int]]:
        """Fill in source_seq where the producer sent none; track each source's high mark."""
        last = self._last_seq
        updates: dict[str, int] = {}
        out: list[EventRow] = []
        for row in rows:
            sid = row.source_id
            current = updates.get(sid, last.get(sid, 0))
            if row.source_seq is None:
                current += 1
                row = row._replace(source_seq=current)
            elif row.source_seq > current:
                current = row.source_seq
            updates[sid] = current
            out.append(row)
        return out, updates

    def _update_rollups(self, conn: sqlite3.Connection, rows: list[EventRow]) -> None:
        if not rows:
            return
        if not self._degraded:
            self._rollups.write(conn, rows)
        sources: dict[str, list[Any]] = {}
        for row in rows:
            src = sources.get(row.source_id)
            heartbeat = row.observed_at if row.type == "heartbeat" else None
            if src is None:
                sources[row.source_id] = [
                    row.source_id,
                    row.source_type,
                    row.received_at,
                    row.received_at,
                    row.source_seq or 0,
                    1,
                    heartbeat,
                ]
            else:
                src[1] = row.source_type
                src[3] = max(src[3], row.received_at)
                src[4] = max(src[4], row.source_seq or 0)
                src[5] += 1
                if heartbeat is not None:
                    src[6] = heartbeat if src[6] is None else max(src[6], heartbeat)
        conn.executemany(_UPSERT_SOURCE, list(sources.values()))

    def _write_dead_letters(self, conn: sqlite3.Connection, batch: list[WriteItem], now_ms: int) -> None:
        cut = self._cfg.limits.dead_letter_max_bytes
        rows = []
        for item in batch:
            for rej in item.decoded.rejections:
                reason = rej.detail if rej.position is None else f"[{rej.position}] {rej.detail}"
                rows.append(
                    (now_ms, item.transport, item.topic, rej.code, reason, rej.raw[:cut], len(rej.raw))
                )
        if rows:
            conn.executemany(_INSERT_DEAD, rows)

    def _record_metrics(
        self, batch: list[WriteItem], results: list[IngestResult], new_rows: list[EventRow], seconds: float
    ) -> None:
        m = self._metrics
        m.commit_seconds.observe(seconds)
        m.batch_events.observe(sum(len(item.decoded.events) for item in batch))
        m.events_stored.inc(len(new_rows))
        dups = sum(r.duplicates for r in results)
        if dups:
            m.events_duplicate.inc(dups)
        codes: Counter[str] = Counter(rej.code for item in batch for rej in item.decoded.rejections)
        for code, n in codes.items():
            m.events_rejected.labels(code).inc(n)
        ahead = sum(1 for row in new_rows if row.flags & FLAG_SKEW_FUTURE)
        behind = sum(1 for row in new_rows if row.flags & FLAG_SKEW_PAST)
        if ahead:
            m.clock_skew.labels("future").inc(ahead)
        if behind:
            m.clock_skew.labels("past").inc(behind)

    # -- background upkeep -----------------------------------------------------------------
    def _control_wal(self, conn: sqlite3.Connection) -> None:
        size = maintenance.wal_bytes(self._cfg.db_path)
        self._metrics.wal_bytes.set(size)
        limit = self._cfg.store.wal_max_bytes
        ckpt = self._checkpointer
        if ckpt is not None and size <= limit // 2 and ckpt.should_finish():
            # The background checkpoint has nearly caught up: copy the rest now, so the next
            # transaction rewinds the WAL instead of growing it.
            self._checkpoint_here(conn, truncate=False)
            ckpt.finished()
            return
        if size > limit // 2:
            self._checkpoint_here(conn, truncate=False)
            if size > limit:
                # TRUNCATE waits for readers; bound that wait so ingest never stalls for long.
                conn.execute("PRAGMA busy_timeout = 200")
                try:
                    self._checkpoint_here(conn, truncate=True)
                except sqlite3.OperationalError as exc:
                    log.debug("WAL truncate deferred: %s", exc)
                finally:
                    conn.execute("PRAGMA busy_timeout = 10000")
            self._metrics.wal_bytes.set(maintenance.wal_bytes(self._cfg.db_path))

    def _checkpoint_here(self, conn: sqlite3.Connection, *, truncate: bool) -> None:
        t0 = time.perf_counter()
        try:
            maintenance.checkpoint(conn, truncate=truncate)
        finally:
            self._metrics.wal_checkpoint_seconds.labels("writer").inc(time.perf_counter() - t0)

    def _maintenance_step(self, conn: sqlite3.Connection) -> bool:
        """One bounded slice of retention work; True if more slices are due now."""
        now_ms = self.now_ms()
        cfg = self._cfg.retention
        sync_on = self._cfg.sync.enabled
        deleted, more_retention = maintenance.retention_step(
            conn, cfg, now_ms, self._retention, keep_unsynced=sync_on
        )
        if deleted:
            self._metrics.retention_deleted.labels("age").inc(deleted)
        capped, over = maintenance.size_cap_step(conn, cfg, count_unsynced=sync_on)
        if capped:
            self._metrics.retention_deleted.labels("size_cap").inc(capped)
            log.warning(
                "edge.db over its %d-byte cap: deleted the %d oldest events", cfg.max_db_bytes, capped
            )
        if not (more_retention or over):
            maintenance.prune_side_tables(conn, cfg, now_ms, self._cfg.store.fingerprint_hours)
        if deleted or capped:
            maintenance.release_free_pages(conn)
        self._metrics.db_bytes.set(maintenance.live_bytes(conn))
        return more_retention or over


def _release_heap() -> None:
    """Hand freed heap back to the OS (glibc only; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _set_if_pending(fut: asyncio.Future[IngestResult], result: IngestResult) -> None:
    if not fut.done():
        fut.set_result(result)


__all__ = ["EdgeStore", "IngestResult", "QueueClosedError", "WriteItem", "message_fingerprint"]

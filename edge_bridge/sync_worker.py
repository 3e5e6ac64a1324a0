"""The outbox worker: forms batches from edge.db in arrival order and forwards them to the hub.

Loop, in short: resend what is due, form new batches while fewer than ``max_in_flight`` are
out, send a heartbeat when idle, sleep until a commit, an ack or a deadline. A batch is
recorded in edge.db before its first send and deleted when the hub acknowledges it, so after
any restart the same batches go out again under the same ids, and the hub drops them as
duplicates. Failures (no broker, no ack in time, hub says retry or refused) hold all sending for
an exponential backoff with jitter; the hub announcing itself online clears the hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from edge_bridge import outbox
from edge_bridge.backoff import Backoff
from edge_bridge.hub_transport import HubTransport, make_transport
from edge_bridge.sync_batch import FormedBatch, PrivacyPolicy, form_batch, rebuild_batch
from edgekite import sync_protocol
from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore
from edgekite.store.reads import Reader, ReadPool
from edgekite.sync_protocol import Ack, BatchHeader

log = logging.getLogger(__name__)

_MAX_SEQ = 2**63 - 1
# Counting a large backlog costs ~60 ms per million rows on the thread that forms batches; past
# this size the backlog is rowid arithmetic (exact unless the size cap deleted unsynced rows).
_BACKLOG_EXACT_UP_TO = 50_000


@dataclass
class InFlight:
    batch: outbox.PendingBatch
    payload: bytes | None = None  # None after a restart, until rebuilt from its rows
    signature: str | None = None
    due: float = 0.0  # monotonic time of the next (re)send
    sent: bool = False
    attempts: int = 0


class SyncWorker:
    def __init__(self, config: EdgeConfig, store: EdgeStore, metrics: EdgeMetrics) -> None:
        self._cfg = config
        self._sc = config.sync
        self._store = store
        self._metrics = metrics
        self._reads = ReadPool(config.db_path, config.store, threads=1)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._transport: HubTransport | None = None
        self._in_flight: dict[str, InFlight] = {}
        self._backoff = Backoff(self._sc.backoff_initial_secs, self._sc.backoff_max_secs)
        self._hold_until = 0.0
        self._store_id = ""
        self._formed_to = 0
        self._synced_to = 0
        self._next_batch_no = 1
        self._policy = PrivacyPolicy()
        self._backlog = 0
        self._oldest_ms: int | None = None
        self._counters: dict[str, int] = {}
        self._row_cache: list[Any] = []  # rows after formed_to, already read (sync thread only)
        self._gauges_at = 0.0
        self._last_sent = 0.0
        self.last_success_ms: int | None = None
        self.last_error: str | None = None
        self.last_error_ms: int | None = None
        self.events_synced = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        key = self._sc.pii_hash_key
        if key is None:
            await self._store.run_write(lambda c: outbox.ensure_pii_key(c, secrets.token_hex(32)))
        state, stored_key = await self._reads.run(
            lambda r: (outbox.load_state(r.conn), outbox.pii_hash_key(r.conn))
        )
        self._policy = PrivacyPolicy(
            pii=self._sc.pii,
            fields=tuple(self._sc.pii_fields),
            key=(key or stored_key or "").encode(),
            short=self._sc.short_retention,
        )
        self._store_id = state.store_id
        self._formed_to = state.formed_to
        self._synced_to = state.synced_to
        for p in state.pending:
            self._in_flight[p.batch_id] = InFlight(p)
            self._next_batch_no = max(self._next_batch_no, p.batch_no + 1)
        if state.pending:
            log.info("sync resumes %d unacknowledged batches from before the restart", len(state.pending))

        def on_commit(_rows: object) -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self._store.add_listener(on_commit)
        self._transport = make_transport(
            self._sc, self._cfg.edge.edge_id, loop, self._on_ack, self._on_failure, self._on_hub_online
        )
        await self._transport.start()
        self._task = asyncio.create_task(self._run(), name="edgekite-sync")
        log.info(
            "sync to the hub over %s at %s; edge id %s, %d events already synced",
            self._transport.name,
            self._transport.url,
            self._cfg.edge.edge_id,
            self._synced_to,
        )

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            await self._transport.stop()
        self._reads.close()

    # -- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                timeout = await self._step()
            except (sqlite3.Error, OSError, ValueError) as exc:
                self._error(f"sync step failed: {exc}")
                timeout = self._backoff.next_delay()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _step(self) -> float:
        """One pass; returns how long to sleep at most."""
        assert self._transport is not None
        now = time.monotonic()
        await self._refresh_gauges(now)
        connected = self._transport.connected
        self._metrics.sync_connected.set(1 if connected else 0)
        if not connected:
            return 0.5
        if now < self._hold_until:
            return self._hold_until - now
        # 1. timeouts and resends, oldest first
        timed_out = [f for f in self._in_flight.values() if f.sent and f.due <= now]
        if timed_out:
            self._metrics.sync_batches.labels("timeout").inc(len(timed_out))
            self._error(
                f"no ack for {len(timed_out)} batches (first {timed_out[0].batch.batch_id}) "
                f"within {self._sc.ack_timeout_secs:g}s"
            )
            for f in timed_out:
                f.sent = False
            self._hold(now)
            return self._hold_until - now
        for f in list(self._in_flight.values()):
            if f.due <= now:
                await self._send(f, now)
        # 2. new batches
        wait = 1.0
        while len(self._in_flight) < self._sc.max_in_flight:
            formed = await self._form(now)
            if isinstance(formed, float):
                wait = min(wait, formed)
                break
            await self._record_and_send(formed, now)
        # 3. heartbeat
        if not self._in_flight and now - self._last_sent >= self._sc.heartbeat_secs:
            self._send_heartbeat(now)
        deadlines = [f.due - now for f in self._in_flight.values()]
        return max(0.01, min([wait, self._sc.heartbeat_secs, *deadlines]))

    async def _form(self, now: float) -> FormedBatch | float:
        """A new batch, or the seconds until one is due (full, or its oldest row aged out)."""
        sc = self._sc
        after = self._formed_to
        now_ms = self._store.now_ms()

        def probe(r: Reader) -> tuple[int, int | None]:
            (n,) = r.conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE rowid > ? LIMIT ?)",
                (after, sc.batch_max_events),
            ).fetchone()
            row = r.conn.execute(
                "SELECT received_at FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1", (after,)
            ).fetchone()
            return int(n), (int(row[0]) if row else None)

        n, oldest = await self._reads.run(probe)
        if n == 0 or oldest is None:
            return 1.0
        age_left = (oldest + sc.batch_max_age_ms - now_ms) / 1000
        if n < sc.batch_max_events and age_left > 0:
            return age_left

        def build(r: Reader) -> FormedBatch | None:
            # Rows read past a batch's byte cap are kept for the next batch, not read again.
            cached = [row for row in self._row_cache if row[0] > after]
            start = cached[-1][0] + 1 if cached else after + 1
            more = sc.batch_max_events - len(cached)
            rows = cached + (outbox.read_rows(r.conn, start, _MAX_SEQ, more) if more > 0 else [])
            batch = form_batch(
                rows,
                decode=r.decode,
                policy=self._policy,
                max_events=sc.batch_max_events,
                max_bytes=sc.batch_max_bytes,
            )
            self._row_cache = [] if batch is None else [row for row in rows if row[0] > batch.last_seq]
            return batch

        formed = await self._reads.run(build)
        return 1.0 if formed is None else formed

    async def _record_and_send(self, formed: FormedBatch, now: float) -> None:
        batch = outbox.PendingBatch(
            batch_no=self._next_batch_no,
            batch_id=sync_protocol.make_batch_id(self._store_id, formed.first_seq, formed.last_seq),
            first_seq=formed.first_seq,
            last_seq=formed.last_seq,
            events=len(formed.events_json),
            withheld=formed.withheld,
            created_at=self._store.now_ms(),
        )
        pii, short = formed.withheld.get("pii", 0), formed.withheld.get("short", 0)
        await self._store.run_write(lambda c: outbox.record_batch(c, batch, pii, short))
        self._next_batch_no += 1
        self._formed_to = formed.last_seq
        for reason, n in formed.withheld.items():
            self._metrics.sync_withheld.labels(reason).inc(n)
        f = InFlight(batch, payload=self._encode(batch, formed))
        f.signature = self._sign(f.payload)
        self._in_flight[batch.batch_id] = f
        await self._send(f, now)

    def _encode(self, batch: outbox.PendingBatch, formed: FormedBatch) -> bytes:
        header = BatchHeader(
            edge_id=self._cfg.edge.edge_id,
            batch_id=batch.batch_id,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            created_at=batch.created_at,
            count=len(formed.events_json),
            backlog=self._backlog,
            withheld=formed.withheld,
        )
        return sync_protocol.encode_batch(header, formed.events_json, level=self._sc.compress_level)

    def _sign(self, payload: bytes | None) -> str | None:
        if payload is None or not self._sc.api_key:
            return None
        return sync_protocol.sign(self._sc.api_key, payload)

    async def _send(self, f: InFlight, now: float) -> None:
        assert self._transport is not None
        if f.payload is None:  # recorded before a restart: the same rows, the same batch
            b = f.batch

            def rebuild(r: Reader) -> FormedBatch:
                rows = outbox.read_rows(r.conn, b.first_seq, b.last_seq, _MAX_SEQ)
                return rebuild_batch(
                    rows, decode=r.decode, policy=self._policy, first_seq=b.first_seq, last_seq=b.last_seq
                )

            f.payload = self._encode(b, await self._reads.run(rebuild))
            f.signature = self._sign(f.payload)
        f.sent = True
        f.attempts += 1
        f.due = now + self._sc.ack_timeout_secs
        self._last_sent = now
        self._metrics.sync_batches.labels("sent").inc()
        self._metrics.sync_in_flight.set(len(self._in_flight))
        self._transport.send(f.batch.batch_id, f.payload, f.signature)

    def _send_heartbeat(self, now: float) -> None:
        assert self._transport is not None
        now_ms = self._store.now_ms()
        header = BatchHeader(
            edge_id=self._cfg.edge.edge_id,
            batch_id=f"{self._store_id}:hb-{now_ms}",
            first_seq=self._synced_to,
            last_seq=self._synced_to,
            created_at=now_ms,
            count=0,
            backlog=self._backlog,
        )
        payload = sync_protocol.encode_batch(header, [], level=self._sc.compress_level)
        self._last_sent = now
        self._transport.send(header.batch_id, payload, self._sign(payload))

    # -- outcomes (event loop) -----------------------------------------------------------------
    def _on_ack(self, ack: Ack) -> None:
        if ack.edge_id != self._cfg.edge.edge_id:
            log.warning("ignoring an ack for edge %r", ack.edge_id)
            return
        f = self._in_flight.get(ack.batch_id)
        if ack.status == "ok":
            self._backoff.reset()
            self._hold_until = 0.0
            self.last_success_ms = self._store.now_ms()
            self._metrics.sync_last_success.set(time.time())
            if f is None:
                return  # a heartbeat, or a second ack after a resend
            self._metrics.sync_batches.labels("duplicate" if ack.duplicate else "ok").inc()
            if ack.rejected:
                self._metrics.sync_events_rejected.inc(len(ack.rejected))
                log.warning(
                    "hub refused %d events of batch %s (kept in its dead letters), e.g. %s: %s",
                    len(ack.rejected),
                    ack.batch_id,
                    ack.rejected[0].code,
                    ack.rejected[0].reason,
                )
            f.due = float("inf")  # completion in progress: no resend
            task = asyncio.get_running_loop().create_task(self._complete(f))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            return
        if f is None:
            return
        now = time.monotonic()
        f.sent = False
        if ack.status == "retry":
            self._metrics.sync_batches.labels("retry").inc()
            self._error(f"hub asked to retry batch {ack.batch_id}: {ack.reason or 'busy'}")
            self._hold(now, (ack.retry_after_ms or 0) / 1000)
        else:
            self._metrics.sync_batches.labels("refused").inc()
            self._error(f"hub refused batch {ack.batch_id}: {ack.reason}")
            self._hold(now)
        f.due = now
        self._wake.set()

    async def _complete(self, f: InFlight) -> None:
        b = f.batch
        synced = await self._store.run_write(lambda c: outbox.complete_batch(c, b.batch_id))
        self._in_flight.pop(b.batch_id, None)
        self._metrics.sync_in_flight.set(len(self._in_flight))
        if synced is not None:
            self._synced_to = synced
            self.events_synced += b.events
            self._metrics.sync_events.inc(b.events)
        self._wake.set()

    def _on_failure(self, batch_id: str, reason: str) -> None:
        self._metrics.sync_batches.labels("failed").inc()
        self._error(reason)
        f = self._in_flight.get(batch_id)
        now = time.monotonic()
        if f is not None:
            f.sent = False
            f.due = now
        self._hold(now)
        self._wake.set()

    def _on_hub_online(self) -> None:
        """Connected, or the hub announced itself: what was waiting goes now."""
        self._backoff.reset()
        self._hold_until = 0.0
        now = time.monotonic()
        for f in self._in_flight.values():
            if f.due != float("inf"):
                f.sent = False
                f.due = now
        self._wake.set()

    def _hold(self, now: float, at_least: float = 0.0) -> None:
        self._hold_until = now + max(at_least, self._backoff.next_delay())

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("sync: %s", message)
        self.last_error = message
        self.last_error_ms = self._store.now_ms()

    # -- observability --------------------------------------------------------------------------
    async def _refresh_gauges(self, now: float) -> None:
        if now - self._gauges_at < 1.0:
            return
        self._gauges_at = now
        synced_to = self._synced_to

        def measure(r: Reader) -> tuple[int, int | None, dict[str, int]]:
            (top,) = r.conn.execute("SELECT max(rowid) FROM events").fetchone()
            n = max(0, int(top or 0) - synced_to)
            if n <= _BACKLOG_EXACT_UP_TO:
                (n,) = r.conn.execute("SELECT count(*) FROM events WHERE rowid > ?", (synced_to,)).fetchone()
            row = r.conn.execute(
                "SELECT received_at FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1", (synced_to,)
            ).fetchone()
            return int(n), (int(row[0]) if row else None), outbox.counters(r.conn)

        self._backlog, self._oldest_ms, self._counters = await self._reads.run(measure)
        self._metrics.sync_backlog.set(self._backlog)
        age = 0.0 if self._oldest_ms is None else max(0.0, (self._store.now_ms() - self._oldest_ms) / 1000)
        self._metrics.sync_oldest_age.set(age)

    def status(self) -> dict[str, Any]:
        t = self._transport
        now_ms = self._store.now_ms()
        return {
            "enabled": True,
            "transport": None if t is None else t.name,
            "hub": None if t is None else t.url,
            "connected": bool(t is not None and t.connected),
            "backlog": self._backlog,
            "oldest_unsynced_age_secs": None
            if self._oldest_ms is None
            else round(max(0, now_ms - self._oldest_ms) / 1000, 1),
            "in_flight": len(self._in_flight),
            "synced_to": self._synced_to,
            "last_success_ms": self.last_success_ms,
            "last_error": self.last_error,
            "transport_error": None if t is None else t.last_error,
            "last_error_ms": self.last_error_ms,
            "events_synced": self._counters.get("sync_events_synced", 0),
            "withheld": {
                "pii": self._counters.get("sync_withheld_pii", 0),
                "short": self._counters.get("sync_withheld_short", 0),
            },
            "dropped_unsynced": self._counters.get("sync_dropped_unsynced", 0),
            "privacy": {"pii": self._sc.pii, "short_retention": self._sc.short_retention},
        }

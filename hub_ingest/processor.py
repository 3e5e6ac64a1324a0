"""One batch in, one ack out: decode, check who sent it, rate-limit, store, answer.

``prepare`` (decode, authenticate, validate, build the Arrow IPC stream) is pure CPU; with a
``DecodePool`` it runs in worker processes (:mod:`hub_ingest.prepare`), otherwise on the
caller's thread. ``commit``/``commit_many`` run on the store's single thread (MQTT consumers and
the HTTP route both submit to it), so the ledger check and the inserts never interleave with
another batch's. An ack is returned only after every insert returned: an ``ok`` ack means the
batch is in ClickHouse.

Exactly once in effect: a batch id already in the ``batches`` ledger is answered ``ok`` with
``duplicate=true`` and nothing is inserted. Every commit, of one batch or of a group, writes
the batches' ledger rows to ``batches_pending`` first, then their events, then their ledger
rows; nothing is acked before the ledger insert returned, so every acked batch is in the
ledger, and the ledger is the authority.

Group commit (``commit_many``), when several prepared batches are waiting: one ledger lookup
for all of them, then the new batches' events in *one* INSERT (one part instead of one per
batch: measured, a third of the CPU per event in the hub process, most of it ClickHouse merging
the small parts), then one ledger INSERT with a row per stored batch, then the acks.

A crash between the events and the ledger rows leaves pending rows without ledger rows: the
next process, before it commits anything, checks which of those batches have events stored
and writes their ledger rows (``recover``), so their resends, however regrouped, are answered
as duplicates instead of stored again. A ledger insert that fails after its events went in is
recovered the same way, before this process's next commit.

Insert deduplication tokens are this process's own (a random prefix per ``BatchProcessor``):
they make a retried insert within the process a no-op, but never span a crash. ClickHouse logs
a token before the part it names is committed, so a hub killed in between leaves a token with
no rows behind it, and the same token from the next process would drop the resend (the kill -9
test caught a 162-event batch acknowledged and lost that way). A batch id twice in one group is
stored once and the second copy answered as a duplicate; whatever slips past all of this (a
re-batched resend) collapses in the ReplacingMergeTree.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Literal

import orjson
import pyarrow as pa

from edgekite.config import HubConfig
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore, StorageError
from edgekite.hubstore.arrow import BATCHES_SCHEMA, DEAD_LETTER_SCHEMA, EVENTS_SCHEMA, table_from_rows
from edgekite.hubstore.schema import PENDING_TTL_DAYS
from edgekite.sync_protocol import Ack, BatchHeader
from hub_ingest.decode import DecodedBatch
from hub_ingest.prepare import (
    DecodePool,
    PrepareContext,
    PreparedBatch,
    Refusal,
    is_broken,
    prepare_payload,
)
from hub_ingest.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Transport = Literal["mqtt", "http"]
STORAGE_RETRY_MS = 2000

# Refusals that are about who sent the batch (HTTP answers 401/403), not about its bytes (400).
AUTH_REASONS = frozenset({"unknown_edge", "bad_signature", "bad_key", "edge_mismatch", "bad_topic"})

__all__ = ["AUTH_REASONS", "BatchProcessor", "PreparedBatch", "ack_code"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def ack_code(ack: Ack) -> str:
    """The stable code at the front of a refused/retry ack's reason ('edge_mismatch: ...')."""
    return (ack.reason or "").split(":", 1)[0]


class BatchProcessor:
    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        metrics: HubMetrics,
        *,
        now_ms: Callable[[], int] = _now_ms,
        monotonic: Callable[[], float] = time.monotonic,
        decode_pool: DecodePool | None = None,
        salts: Callable[[int], Mapping[int, bytes]] | None = None,
    ) -> None:
        self.config = config
        # Live visitor-id salts for a receive time (the hub's salt keeper); none: visitor id 0.
        self._salts = salts
        self.store = store
        self.metrics = metrics
        self._now_ms = now_ms
        self._monotonic = monotonic
        self._ctx = PrepareContext.from_config(config)
        self._pool = decode_pool
        # (edge_id, edge database id) -> the last row of the last batch this process stored.
        self._stored_high: dict[tuple[str, str], int] = {}
        # Batches a dead process may have stored without a ledger row: always looked up.
        self._suspect: set[tuple[str, str]] = set()
        self._recovery_failed = False
        self._recover_again = False
        # Every insert token carries this process's own prefix. ClickHouse records a token in
        # its deduplication log before the part it names is committed: a hub killed in between
        # leaves a token without rows, and the same token from the next process would drop the
        # resend (seen: a 162-event batch acknowledged, its events nowhere). Within a process,
        # a retried insert still dedups; across a crash, batches_pending and recover() decide.
        self._incarnation = secrets.token_hex(8)
        ing = config.ingest
        self._limiter = RateLimiter(ing.rate_limit_events_per_sec, ing.rate_limit_burst_events)
        self._limiter_lock = threading.Lock()
        self.last_commit_at = float("-inf")  # monotonic time of the last commit (ingest is busy)
        self.dev_mode = not config.edges
        if self.dev_mode:
            log.warning(
                "no edges configured: development mode, batches from ANY edge id are accepted "
                "unauthenticated; configure [edges.<id>] api_key in hub.toml for production"
            )

    # -- entry points ------------------------------------------------------------------------
    def process(
        self,
        edge_id_from_transport: str | None,
        payload: bytes,
        signature: str | None,
        *,
        http_key: str | None = None,
        transport: Transport = "mqtt",
    ) -> Ack:
        """Answer one batch (``prepare`` then ``commit``). Never raises: every failure is an ack.

        ``edge_id_from_transport`` is the MQTT topic's edge level or the HTTP ``X-EK-Edge``
        header (None: the HTTP request named none, the batch header decides).
        """
        prepared = self.prepare(
            edge_id_from_transport, payload, signature, http_key=http_key, transport=transport
        )
        if isinstance(prepared, Ack):
            return prepared
        return self.commit(prepared)

    def prepare(
        self,
        edge_id_from_transport: str | None,
        payload: bytes,
        signature: str | None,
        *,
        http_key: str | None = None,
        transport: Transport = "mqtt",
    ) -> Ack | PreparedBatch:
        """Everything before storage: decode, authenticate, rate-limit, validate, build Arrow.

        Blocking and thread-safe; never on the store thread (it waits for a worker process).
        """
        return self.submit_prepare(
            edge_id_from_transport, payload, signature, http_key=http_key, transport=transport
        ).result()

    def submit_prepare(
        self,
        edge_id_from_transport: str | None,
        payload: bytes,
        signature: str | None,
        *,
        http_key: str | None = None,
        transport: Transport = "mqtt",
    ) -> Future[Ack | PreparedBatch]:
        """``prepare`` without waiting: on a worker process if there is a pool, else right here.

        The future's callbacks run on the pool's result thread: keep them short.
        """
        self.metrics.batches_received.labels(transport).inc()
        now = self._now_ms()
        salts = self._salts(now) if self._salts is not None else None
        args = (edge_id_from_transport, payload, signature, http_key, transport, now, salts)
        out: Future[Ack | PreparedBatch] = Future()
        if self._pool is None:
            out.set_result(self._admit(prepare_payload(self._ctx, *args)))
            return out

        def done(f: Future[Refusal | PreparedBatch], attempt: int) -> None:
            exc = f.exception()
            if exc is None:
                out.set_result(self._admit(f.result()))
                return
            if is_broken(exc) and attempt == 0 and self._pool is not None:
                log.error("a decode worker died; restarting the decode pool")
                self._pool.restart()
                self._pool.submit(*args).add_done_callback(lambda g: done(g, 1))
                return
            if is_broken(exc):  # twice: decode right here rather than leave the batch hanging
                try:
                    out.set_result(self._admit(prepare_payload(self._ctx, *args)))
                except Exception as inner:  # noqa: BLE001 - handed to the waiter, not swallowed
                    out.set_exception(inner)
                return
            out.set_exception(exc)

        self._pool.submit(*args).add_done_callback(lambda f: done(f, 0))
        return out

    def commit(self, prepared: PreparedBatch) -> Ack:
        """Store a prepared batch (on the store thread) and answer; storage errors become 'retry'."""
        return self.commit_many([prepared])[0]

    def commit_many(self, batches: Sequence[PreparedBatch]) -> list[Ack]:
        """Store several prepared batches as one group (see the module docstring); one ack each,
        in order. Never raises a StorageError: a failed batch is answered 'retry'."""
        if not batches:
            return []
        self.last_commit_at = self._monotonic()
        acks: list[Ack | None] = [None] * len(batches)
        if self._recover_again:  # a group's events went in, its ledger insert failed
            self.recover()
        try:
            known = self._ledger_lookup(batches)
        except StorageError as exc:
            return [self._storage_retry(b.header, exc) for b in batches]
        first: dict[tuple[str, str], int] = {}  # batch key -> the index storing it in this group
        stored: list[int] = []
        followers: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        for i, prepared in enumerate(batches):
            header = prepared.header
            key = (header.edge_id, header.batch_id)
            if key in known:
                acks[i] = self._duplicate(prepared, known[key])
                continue
            if key in first:
                followers.append((i, first[key]))
                continue
            first[key] = i
            stored.append(i)
        if stored:
            group = [batches[i] for i in stored]
            events_in = False
            try:
                if len(group) == 1:
                    self._insert_batch(group[0])
                else:
                    self._insert_group(group)
                events_in = True
                self._insert_ledger(group)
            except StorageError as exc:
                # The resend must find ledger rows for the group, as after a crash (its token
                # would not drop a differently grouped resend): recover before the next commit.
                # (events_in is also set when only the pending rows went in: recover() looks.)
                self._recover_again = events_in
                for i in stored:
                    acks[i] = self._storage_retry(batches[i].header, exc)
                stored = []
            elapsed = time.perf_counter() - t0
            for i in stored:
                self.metrics.insert_seconds.observe(elapsed)
                self._remember(batches[i].header)
                acks[i] = self._stored(batches[i])
        for i, leader in followers:
            lead = acks[leader]
            assert lead is not None
            if lead.status == "ok":
                acks[i] = self._duplicate(batches[i], lead.accepted)
            else:
                acks[i] = lead.model_copy()
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    def ingest_busy(self, within_secs: float = 1.0) -> bool:
        """A batch was committed within ``within_secs``: edges are sending (enrichment yields)."""
        return self._monotonic() - self.last_commit_at < within_secs

    # -- steps -------------------------------------------------------------------------------
    def _admit(self, result: Refusal | PreparedBatch) -> Ack | PreparedBatch:
        """The main-process half of ``prepare``: count refusals, apply the per-edge rate limit."""
        if isinstance(result, Refusal):
            return self._refuse(*result)
        header = result.header
        edge_id = header.edge_id
        edge_cfg = self.config.edges.get(edge_id)
        rate = edge_cfg.rate_limit_events_per_sec if edge_cfg is not None else None
        with self._limiter_lock:
            wait = self._limiter.check(edge_id, header.count, self._monotonic(), rate)
        if wait > 0:
            self.metrics.batches_retry.labels("rate_limit").inc()
            return Ack(
                edge_id=edge_id,
                batch_id=header.batch_id,
                status="retry",
                retry_after_ms=max(1, int(wait * 1000) + 1),
                reason=f"rate_limit: edge {edge_id} is over its events/s limit",
            )
        return result

    def _refuse(self, edge_id: str, batch_id: str, code: str, detail: str) -> Ack:
        self.metrics.batches_refused.labels(code).inc()
        log.warning("refused a batch (edge %s, batch %r): %s: %s", edge_id, batch_id, code, detail)
        return Ack(edge_id=edge_id, batch_id=batch_id, status="refused", reason=f"{code}: {detail}")

    def _storage_retry(self, header: BatchHeader, exc: StorageError) -> Ack:
        self.metrics.batches_retry.labels("storage").inc()
        log.error("storing batch %s from %s failed, answered retry: %s", header.batch_id, header.edge_id, exc)
        return Ack(
            edge_id=header.edge_id,
            batch_id=header.batch_id,
            status="retry",
            retry_after_ms=STORAGE_RETRY_MS,
            reason=f"storage: {str(exc)[:200]}",
        )

    def _surely_new(self, header: BatchHeader) -> bool:
        """A batch past everything this process stored for its edge database cannot be in the
        ledger: an edge forms batches in row order. Saves a ledger query per batch when edges
        stream. Only an optimisation: a duplicate that slips by is still dropped by its insert
        token, and its ledger row collapses in the ReplacingMergeTree."""
        if header.count == 0:
            return True  # a heartbeat: never resent, and its ledger row holds no events
        if self._recovery_failed or (header.edge_id, header.batch_id) in self._suspect:
            return False
        high = self._stored_high.get((header.edge_id, header.batch_id.split(":", 1)[0]))
        return high is not None and header.first_seq > high

    def _remember(self, header: BatchHeader) -> None:
        key = (header.edge_id, header.batch_id.split(":", 1)[0])
        if header.count and header.last_seq > self._stored_high.get(key, -1):
            if key not in self._stored_high and len(self._stored_high) >= 100_000:
                self._stored_high.clear()  # bounded; a miss only costs one ledger query
            self._stored_high[key] = header.last_seq

    def _ledger_lookup(self, batches: Sequence[PreparedBatch]) -> dict[tuple[str, str], int]:
        """(edge_id, batch_id) -> events, for the batches of this group already in the ledger."""
        keys = {(b.header.edge_id, b.header.batch_id) for b in batches if not self._surely_new(b.header)}
        if not keys:
            return {}
        store = self.store
        rows = store.query_rows(
            f"SELECT edge_id, batch_id, events FROM {store.table('batches')} "
            "WHERE edge_id IN {edges:Array(String)} AND batch_id IN {batches:Array(String)}",
            {"edges": sorted({k[0] for k in keys}), "batches": sorted({k[1] for k in keys})},
        )
        return {(e, b): int(n) for e, b, n in rows if (e, b) in keys}

    def _token(self, key: str) -> str:
        return f"{self._incarnation}:{key}"

    def _insert_batch(self, prepared: PreparedBatch) -> None:
        """One batch: its ledger row to ``batches_pending``, then its events and dead letters,
        each under the batch's own token (this process's)."""
        store = self.store
        header, decoded = prepared.header, prepared.decoded
        token = self._token(f"{header.edge_id}/{header.batch_id}")
        pending = [self._ledger_row(header, decoded, prepared.hub_received_at)]
        store.insert_arrow("batches_pending", table_from_rows(BATCHES_SCHEMA, pending), token)
        if prepared.events_ipc is not None:
            store.insert_arrow_ipc("events", prepared.events_ipc, EVENTS_SCHEMA.names, token)
        if decoded.dead_letters:
            now = prepared.hub_received_at
            rows = [
                (now, header.edge_id, header.batch_id, d.event_index, d.event_id, d.code, d.reason, d.payload)
                for d in decoded.dead_letters
            ]
            store.insert_arrow("dead_letter", table_from_rows(DEAD_LETTER_SCHEMA, rows), token)

    def _insert_group(self, batches: Sequence[PreparedBatch]) -> None:
        """Several batches: their ledger rows to ``batches_pending``, then their dead letters and
        events, each in one INSERT under the group's token (see the module docstring)."""
        store = self.store
        token = self._token(_group_token(batches))
        pending = [self._ledger_row(b.header, b.decoded, b.hub_received_at) for b in batches]
        store.insert_arrow("batches_pending", table_from_rows(BATCHES_SCHEMA, pending), token)
        dead = [
            (b.hub_received_at, b.header.edge_id, b.header.batch_id, d.event_index, d.event_id, d.code,
             d.reason, d.payload)
            for b in batches
            for d in b.decoded.dead_letters
        ]  # fmt: skip
        if dead:
            store.insert_arrow("dead_letter", table_from_rows(DEAD_LETTER_SCHEMA, dead), token)
        tables = [pa.ipc.open_stream(b.events_ipc).read_all() for b in batches if b.events_ipc is not None]
        if tables:
            store.insert_arrow("events", pa.concat_tables(tables), token)

    def recover(self) -> int:
        """Ledger rows for the batches of a group whose events a dead process stored but whose
        ledger insert it never made; returns how many. Run before this process commits."""
        store = self.store
        cols = ", ".join(
            f"toUnixTimestamp64Milli({c})" if c in ("edge_created_at", "hub_received_at") else c
            for c in BATCHES_SCHEMA.names
        )
        since = f"now64(3) - INTERVAL {PENDING_TTL_DAYS} DAY"
        try:
            pending = store.query_rows(
                f"SELECT {cols} FROM {store.table('batches_pending')} WHERE hub_received_at >= {since} "
                f"AND (edge_id, batch_id) NOT IN (SELECT edge_id, batch_id FROM {store.table('batches')} "
                f"WHERE hub_received_at >= {since} - INTERVAL 1 DAY)"
            )
            if not pending:
                self._recover_again = self._recovery_failed = False
                return 0
            keys = {(r[0], r[1]) for r in pending}
            landed = {
                (e, b)
                for e, b in store.query_rows(
                    f"SELECT DISTINCT edge_id, batch_id FROM {store.table('events')} "
                    "WHERE edge_id IN {edges:Array(String)} AND batch_id IN {batches:Array(String)}",
                    {"edges": sorted({k[0] for k in keys}), "batches": sorted({k[1] for k in keys})},
                )
                if (e, b) in keys
            }
            rows = [r for r in pending if (r[0], r[1]) in landed]
            if rows:
                token = self._token(
                    "recovered:"
                    + hashlib.sha256("\n".join(f"{r[0]}/{r[1]}" for r in rows).encode()).hexdigest()
                )
                store.insert_arrow("batches", table_from_rows(BATCHES_SCHEMA, rows), token)
        except StorageError as exc:
            self._recovery_failed = True  # no ledger lookup is skipped from now on
            self._recover_again = True
            log.warning("could not check for batches stored without a ledger row: %s", exc)
            return 0
        self._recover_again = self._recovery_failed = False
        self._suspect |= keys
        log.warning(
            "recovered %d batch(es) whose events were stored by a hub that stopped before its ledger "
            "insert; %d other pending batch(es) had not been stored",
            len(rows),
            len(keys) - len(rows),
        )
        return len(rows)

    def _insert_ledger(self, batches: Sequence[PreparedBatch]) -> None:
        """One ledger row per batch, in one INSERT (one part) for the whole group."""
        rows = [self._ledger_row(b.header, b.decoded, b.hub_received_at) for b in batches]
        self.store.insert_arrow(
            "batches", table_from_rows(BATCHES_SCHEMA, rows), self._token(_group_token(batches))
        )

    def _duplicate(self, prepared: PreparedBatch, accepted: int) -> Ack:
        header = prepared.header
        self.metrics.batches_duplicate.inc()
        self.metrics.edge_last_batch.labels(header.edge_id).set(prepared.hub_received_at / 1000)
        return Ack(
            edge_id=header.edge_id, batch_id=header.batch_id, status="ok", accepted=accepted, duplicate=True
        )

    def _stored(self, prepared: PreparedBatch) -> Ack:
        m = self.metrics
        header, decoded = prepared.header, prepared.decoded
        edge_id, batch_id = header.edge_id, header.batch_id
        m.batches_ok.inc()
        m.events_accepted.inc(decoded.accepted)
        for r in decoded.rejected:
            m.events_rejected.labels(r.code).inc()
        m.edge_last_batch.labels(edge_id).set(prepared.hub_received_at / 1000)
        if decoded.rejected:
            log.info(
                "batch %s from %s: %d stored, %d dead-lettered (first: %s)",
                batch_id,
                edge_id,
                decoded.accepted,
                len(decoded.rejected),
                decoded.rejected[0].reason[:200],
            )
        return Ack(
            edge_id=edge_id,
            batch_id=batch_id,
            status="ok",
            accepted=decoded.accepted,
            rejected=decoded.rejected,
        )

    @staticmethod
    def _ledger_row(header: BatchHeader, decoded: DecodedBatch, now: int) -> tuple[object, ...]:
        return (
            header.edge_id,
            header.batch_id,
            header.first_seq,
            header.last_seq,
            header.count,
            decoded.accepted,
            len(decoded.rejected),
            header.backlog,
            orjson.dumps(header.withheld).decode(),
            header.created_at,
            now,
        )


def _group_token(batches: Sequence[PreparedBatch]) -> str:
    """``<edge>/<batch>`` for one batch; for several, a hash of all their keys."""
    if len(batches) == 1:
        h = batches[0].header
        return f"{h.edge_id}/{h.batch_id}"
    keys = "\n".join(f"{b.header.edge_id}/{b.header.batch_id}" for b in batches)
    return "group:" + hashlib.sha256(keys.encode()).hexdigest()

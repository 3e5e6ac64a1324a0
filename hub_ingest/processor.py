"""One batch in, one ack out: decode, check who sent it, rate-limit, store, answer.

``BatchProcessor.process`` is blocking and runs on the store's single thread (MQTT consumers
and the HTTP route both submit to it), so the ledger check and the inserts of one batch never
interleave with another's. The ack is returned only after every insert returned: an ``ok`` ack
means the batch is in ClickHouse.

Exactly once in effect: a batch id already in the ``batches`` ledger is answered ``ok`` with
``duplicate=true`` and nothing is inserted; a batch whose events were inserted but whose ledger
row was not (a crash in between) is inserted again with the same deduplication token, which
ClickHouse drops, and whatever slips past both (a re-batched resend) collapses in the
ReplacingMergeTree.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import orjson
import pyarrow as pa

from edgekite.config import HubConfig
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore, StorageError
from edgekite.hubstore.arrow import (
    BATCHES_SCHEMA,
    DEAD_LETTER_SCHEMA,
    EVENTS_SCHEMA,
    table_from_columns,
    table_from_rows,
)
from edgekite.sync_protocol import Ack, BatchError, BatchHeader, decode_batch, verify
from hub_ingest.decode import DecodedBatch, decode_events
from hub_ingest.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Transport = Literal["mqtt", "http"]
STORAGE_RETRY_MS = 2000

# Refusals that are about who sent the batch (HTTP answers 401/403), not about its bytes (400).
AUTH_REASONS = frozenset({"unknown_edge", "bad_signature", "bad_key", "edge_mismatch", "bad_topic"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def ack_code(ack: Ack) -> str:
    """The stable code at the front of a refused/retry ack's reason ('edge_mismatch: ...')."""
    return (ack.reason or "").split(":", 1)[0]


class PreparedBatch(NamedTuple):
    """A batch that passed every check and is ready to insert."""

    header: BatchHeader
    decoded: DecodedBatch
    events_table: pa.Table | None
    hub_received_at: int


class BatchProcessor:
    def __init__(
        self,
        config: HubConfig,
        store: HubStore,
        metrics: HubMetrics,
        *,
        now_ms: Callable[[], int] = _now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._now_ms = now_ms
        self._monotonic = monotonic
        ing = config.ingest
        self._limiter = RateLimiter(ing.rate_limit_events_per_sec, ing.rate_limit_burst_events)
        self._limiter_lock = threading.Lock()
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

        Pure CPU and thread-safe, so the shells run it off the store thread: decoding the next
        batch overlaps with chDB inserting this one (chDB releases the GIL while it works).
        """
        m = self.metrics
        m.batches_received.labels(transport).inc()
        fallback_edge = edge_id_from_transport or "unknown"
        try:
            header, events = decode_batch(payload)
        except BatchError as exc:
            return self._refuse(fallback_edge, "", exc.code, exc.detail)

        edge_id = header.edge_id
        if edge_id_from_transport is not None and edge_id != edge_id_from_transport:
            return self._refuse(
                edge_id_from_transport,
                header.batch_id,
                "edge_mismatch",
                f"the batch names edge {edge_id!r} but was sent as {edge_id_from_transport!r}",
            )
        refusal = self._authenticate(header, payload, signature, http_key, transport)
        if refusal is not None:
            return self._refuse(edge_id, header.batch_id, *refusal)

        edge_cfg = self.config.edges.get(edge_id)
        rate = edge_cfg.rate_limit_events_per_sec if edge_cfg is not None else None
        with self._limiter_lock:
            wait = self._limiter.check(edge_id, header.count, self._monotonic(), rate)
        if wait > 0:
            m.batches_retry.labels("rate_limit").inc()
            return Ack(
                edge_id=edge_id,
                batch_id=header.batch_id,
                status="retry",
                retry_after_ms=max(1, int(wait * 1000) + 1),
                reason=f"rate_limit: edge {edge_id} is over its events/s limit",
            )
        now = self._now_ms()
        decoded = decode_events(
            header,
            events,
            hub_received_at=now,
            limits=self.config.limits,
            dead_letter_max_bytes=self.config.ingest.dead_letter_max_bytes,
        )
        table = table_from_columns(EVENTS_SCHEMA, decoded.columns) if decoded.accepted else None
        return PreparedBatch(header, decoded, table, now)

    def commit(self, prepared: PreparedBatch) -> Ack:
        """Store a prepared batch (on the store thread) and answer; storage errors become 'retry'."""
        header = prepared.header
        try:
            return self._store(prepared)
        except StorageError as exc:
            self.metrics.batches_retry.labels("storage").inc()
            log.error(
                "storing batch %s from %s failed, answered retry: %s", header.batch_id, header.edge_id, exc
            )
            return Ack(
                edge_id=header.edge_id,
                batch_id=header.batch_id,
                status="retry",
                retry_after_ms=STORAGE_RETRY_MS,
                reason=f"storage: {str(exc)[:200]}",
            )

    # -- steps -------------------------------------------------------------------------------
    def _authenticate(
        self,
        header: BatchHeader,
        payload: bytes,
        signature: str | None,
        http_key: str | None,
        transport: Transport,
    ) -> tuple[str, str] | None:
        if self.dev_mode:
            return None
        edge_cfg = self.config.edges.get(header.edge_id)
        if edge_cfg is None:
            return "unknown_edge", f"edge {header.edge_id!r} is not configured at this hub"
        if verify(edge_cfg.api_key, payload, signature):
            return None
        if transport == "http":
            if http_key is not None and hmac.compare_digest(http_key.encode(), edge_cfg.api_key.encode()):
                return None
            return "bad_key", f"no valid key or signature for edge {header.edge_id!r}"
        return "bad_signature", f"missing or wrong signature for edge {header.edge_id!r}"

    def _refuse(self, edge_id: str, batch_id: str, code: str, detail: str) -> Ack:
        self.metrics.batches_refused.labels(code).inc()
        log.warning("refused a batch (edge %s, batch %r): %s: %s", edge_id, batch_id, code, detail)
        return Ack(edge_id=edge_id, batch_id=batch_id, status="refused", reason=f"{code}: {detail}")

    def _store(self, prepared: PreparedBatch) -> Ack:
        m = self.metrics
        store = self.store
        header, decoded, now = prepared.header, prepared.decoded, prepared.hub_received_at
        edge_id, batch_id = header.edge_id, header.batch_id
        seen = store.query_rows(
            f"SELECT events FROM {store.table('batches')} "
            "WHERE edge_id = {edge:String} AND batch_id = {batch:String} LIMIT 1",
            {"edge": edge_id, "batch": batch_id},
        )
        if seen:
            m.batches_duplicate.inc()
            m.edge_last_batch.labels(edge_id).set(now / 1000)
            return Ack(
                edge_id=edge_id, batch_id=batch_id, status="ok", accepted=int(seen[0][0]), duplicate=True
            )

        token = f"{edge_id}/{batch_id}"
        t0 = time.perf_counter()
        if prepared.events_table is not None:
            store.insert_arrow("events", prepared.events_table, token)
        if decoded.dead_letters:
            rows = [
                (now, edge_id, batch_id, d.event_index, d.event_id, d.code, d.reason, d.payload)
                for d in decoded.dead_letters
            ]
            store.insert_arrow("dead_letter", table_from_rows(DEAD_LETTER_SCHEMA, rows), token)
        store.insert_arrow(
            "batches", table_from_rows(BATCHES_SCHEMA, [self._ledger_row(header, decoded, now)]), token
        )
        m.insert_seconds.observe(time.perf_counter() - t0)

        m.batches_ok.inc()
        m.events_accepted.inc(decoded.accepted)
        for r in decoded.rejected:
            m.events_rejected.labels(r.code).inc()
        m.edge_last_batch.labels(edge_id).set(now / 1000)
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

"""The enrichment consumer: follows the raw ``events`` table by watermark into ``events_enriched``.

How it follows the table. Every raw row carries ``hub_received_at``, the time hub ingest received
its batch. The consumer keeps a watermark ``(hub_received_at, event_id)`` and each :meth:`step`
reads the next ``batch_rows`` raw rows after it, in that order, one per ``event_id``
(``LIMIT 1 BY event_id``), enriches them with the pure :class:`~hub_enrich.enrich.Enricher`,
inserts them with a fresh ``enriched_at``, and only *then* stores the new watermark in
``enrich_state``. A crash between the insert and the state write re-processes that batch on
restart: the same event ids are written again under the same sorting key with a newer version,
which the ReplacingMergeTree and the views' ``FINAL`` make harmless (no event counts twice).

Why a lag margin (``lag_ms``). ``hub_received_at`` is stamped when a batch *arrives*, but the
batch becomes visible when its insert *commits*: after decoding in a worker process, a group
commit, and possibly a retry after a storage error. A batch stamped at t1 can therefore become
visible after a batch stamped at t2 > t1. If the consumer advanced its watermark to t2 before
t1's rows were visible, it would never see them. So a step only reads rows stamped at least
``lag_ms`` ago (``hub_received_at <= now - lag_ms``): any batch that commits within ``lag_ms`` of
its arrival is seen in order. With chDB every statement runs on the one store thread, so a step
and an insert never run *at the same time*, but a stamped batch can still wait in the store
thread's queue (or in a retry back-off) behind the consumer's query: the margin is still needed.
A commit later than the margin (a storage outage longer than ``lag_ms``) is caught by
:meth:`sweep`, which re-reads a window behind the watermark for event ids missing from
``events_enriched``; ``edgekite hub enrich --rerun --since`` is the manual fallback.

Late events from an edge that was offline for days need nothing special: they arrive with a late
``hub_received_at`` (whatever their ``observed_at``), so they are after the watermark; the views
compute visits at query time, ordered by ``observed_at``, so the late events fall into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from edgekite.hubstore import HubStore, StorageError
from edgekite.hubstore.analytics import (
    ENRICHED_TABLE,
    ENRICHED_TABLE_COLUMNS,
    STATE_TABLE,
    load_salts,
    raw_has_visitor_id,
)
from edgekite.visitor import DailySalts
from hub_enrich.enrich import COLUMN_NAMES, ENRICHMENT_VERSION, Enricher

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 20_000
DEFAULT_LAG_MS = 30_000
"""Longer than stamping → commit normally takes (decode + group commit + a retry or two)."""
DEFAULT_SWEEP_WINDOW_MS = 3_600_000
NIL_UUID = "00000000-0000-0000-0000-000000000000"

RAW_COLUMNS: tuple[str, ...] = (
    "toString(event_id)",
    "toUnixTimestamp64Milli(observed_at)",
    "toUnixTimestamp64Milli(received_at)",
    "toUnixTimestamp64Milli(hub_received_at)",
    "edge_id",
    "source_id",
    "category",
    "type",
    "data",
    "source_metadata",
)
RAW_KEYS: tuple[str, ...] = (
    "event_id",
    "observed_at",
    "received_at",
    "hub_received_at",
    "edge_id",
    "source_id",
    "category",
    "type",
    "data",
    "source_metadata",
)


AFTER_WATERMARK = (
    "(hub_received_at, event_id) > (fromUnixTimestamp64Milli({wm_at:Int64}, 'UTC'), toUUID({wm_id:String}))"
)
"""Rows after the watermark in the consumer's order (ties on hub_received_at broken by event_id)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_clock_lock = threading.Lock()
_last_enriched_at = 0


def next_enriched_at(now: int | None = None) -> int:
    """A strictly increasing ``enriched_at`` (ms) within this process.

    It is the ReplacingMergeTree's version: a rerun right after a consumer step (same millisecond)
    must still win, so two writes never share a version.
    """
    global _last_enriched_at
    with _clock_lock:
        value = max(now_ms() if now is None else now, _last_enriched_at + 1)
        _last_enriched_at = value
        return value


def _arrow_type(ch_type: str) -> pa.DataType:
    if ch_type.startswith("DateTime64"):
        return pa.timestamp("ms", tz="UTC")
    return {
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt64": pa.uint64(),
    }.get(ch_type, pa.string())


ENRICHED_SCHEMA = pa.schema([(name, _arrow_type(t)) for name, t in ENRICHED_TABLE_COLUMNS.items()])
"""The Arrow schema of an ``events_enriched`` insert (UUIDs as text, times as ms timestamps)."""


@dataclass(frozen=True)
class Watermark:
    """The last raw row enriched, in the order ``(hub_received_at, event_id)``."""

    at_ms: int = 0
    event_id: str = NIL_UUID


@dataclass(frozen=True)
class ConsumerState:
    watermark: Watermark
    fingerprint: str
    enrichment_version: int
    rows_total: int
    seq: int


EMPTY_STATE = ConsumerState(Watermark(), "", 0, 0, 0)


def raw_select(db: str, with_visitor_id: bool) -> str:
    """The raw columns a consumer reads (``visitor_id`` when hub ingest stores it)."""
    cols = (*RAW_COLUMNS, "visitor_id") if with_visitor_id else RAW_COLUMNS
    return f"SELECT {', '.join(cols)} FROM {db}.events"


def rows_to_dicts(rows: Sequence[Sequence[Any]], with_visitor_id: bool) -> list[dict[str, Any]]:
    """Query rows (in :func:`raw_select`'s column order) as the mappings the enricher takes."""
    keys = (*RAW_KEYS, "visitor_id") if with_visitor_id else RAW_KEYS
    return [dict(zip(keys, row, strict=True)) for row in rows]


def enriched_table(enricher: Enricher, raw: Sequence[Mapping[str, Any]], enriched_at: int) -> pa.Table:
    """The ``events_enriched`` rows of ``raw`` as a typed Arrow table (pure but for the enricher's caches)."""
    cols: dict[str, list[Any]] = enricher.enrich_many(raw)
    n = len(raw)
    cols["received_at"] = [int(r.get("received_at") or 0) for r in raw]
    cols["hub_received_at"] = [int(r.get("hub_received_at") or 0) for r in raw]
    cols["enriched_at"] = [enriched_at] * n
    arrays = [pa.array(cols[f.name], type=f.type) for f in ENRICHED_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=ENRICHED_SCHEMA)


def load_state(store: HubStore, name: str) -> ConsumerState:
    rows = store.query_rows(
        "SELECT toUnixTimestamp64Milli(watermark_at), toString(watermark_id), fingerprint, "
        f"enrichment_version, rows_total, seq FROM {store.table(STATE_TABLE)} FINAL "
        "WHERE consumer = {name:String}",
        {"name": name},
    )
    if not rows:
        return EMPTY_STATE
    at, eid, fp, version, total, seq = rows[0]
    return ConsumerState(Watermark(int(at), str(eid)), str(fp), int(version), int(total), int(seq))


def save_state(store: HubStore, name: str, state: ConsumerState) -> None:
    # INSERT ... SELECT, never VALUES: chDB turns async_insert on, and a buffered VALUES insert
    # would not be stored when the call returns (the watermark must be durable when we move on).
    store.command(
        f"INSERT INTO {store.table(STATE_TABLE)} "
        "(consumer, watermark_at, watermark_id, fingerprint, enrichment_version, rows_total, "
        "updated_at, seq) "
        "SELECT {name:String}, fromUnixTimestamp64Milli({at:Int64}, 'UTC'), toUUID({eid:String}), "
        "{fp:String}, {ver:UInt16}, {total:UInt64}, fromUnixTimestamp64Milli({now:Int64}, 'UTC'), "
        "{seq:UInt64}",
        {
            "name": name,
            "at": state.watermark.at_ms,
            "eid": state.watermark.event_id,
            "fp": state.fingerprint,
            "ver": state.enrichment_version,
            "total": state.rows_total,
            "now": now_ms(),
            "seq": state.seq,
        },
    )


class EnrichmentConsumer:
    """Follows ``events`` into ``events_enriched``; ``step()`` on the store thread, or ``await run()``.

    Args:
        store: the open hub store (the analytics tables exist: ``ensure_analytics``).
        enricher: the rules and lists; one instance per consumer (its caches are the speed).
        name: the consumer's name in ``enrich_state`` (one watermark per name).
        batch_rows: raw rows per step (one insert per step: bigger is fewer parts).
        lag_ms: the margin behind now, see the module doc.
        use_stored_salts: refresh ``enricher.salts`` from the ``salts`` table at each step (needed
            only for raw rows without a stored visitor id); the table's salts, when there are any,
            replace the enricher's.
        clock: Unix ms now (tests move time).
    """

    def __init__(
        self,
        store: HubStore,
        enricher: Enricher,
        *,
        name: str = "default",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        lag_ms: int = DEFAULT_LAG_MS,
        poll_interval: float = 1.0,
        sweep_interval: float = 300.0,
        sweep_window_ms: int = DEFAULT_SWEEP_WINDOW_MS,
        use_stored_salts: bool = True,
        clock: Callable[[], int] = now_ms,
        ingest_busy: Callable[[], bool] | None = None,
        busy_share: float = 1.0,
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.store = store
        self.enricher = enricher
        self.name = name
        self.batch_rows = batch_rows
        self.lag_ms = lag_ms
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.sweep_window_ms = sweep_window_ms
        self.use_stored_salts = use_stored_salts
        self.clock = clock
        # Ingest first: while edges' batches are being committed, each enrichment step is
        # followed by a pause so that enrichment uses at most ``busy_share`` of the time (the
        # store thread and the CPU are shared). It catches up as soon as ingest goes quiet.
        if not 0 < busy_share <= 1:
            raise ValueError("busy_share must be in (0, 1]")
        self.ingest_busy = ingest_busy
        self.busy_share = busy_share
        self.fingerprint = enricher.fingerprint
        self.state: ConsumerState | None = None
        self.fingerprint_changed = False
        self.last_error = ""
        self._stop = asyncio.Event()

    # -- blocking (store thread) ------------------------------------------------------------

    def _load(self) -> ConsumerState:
        if self.state is None:
            self.state = load_state(self.store, self.name)
            if self.state.seq and self.state.fingerprint != self.fingerprint:
                self.fingerprint_changed = True
                log.warning(
                    "enrichment rules or lists changed since consumer %r last ran (fingerprint %s -> %s): "
                    "new events get the new rules; run `edgekite hub enrich --rerun [--since ...]` "
                    "to recompute history",
                    self.name,
                    self.state.fingerprint,
                    self.fingerprint,
                )
        return self.state

    def _refresh_salts(self) -> None:
        if not self.use_stored_salts:
            return
        salts = load_salts(self.store)
        if salts:
            keep = self.enricher.salts.keep_days if self.enricher.salts is not None else 2
            self.enricher.salts = DailySalts(salts, keep_days=keep)

    def _enrich_insert(self, raw: Sequence[Mapping[str, Any]]) -> None:
        tbl = enriched_table(self.enricher, raw, next_enriched_at())
        self.store.insert_arrow(ENRICHED_TABLE, tbl)

    def fetch(self) -> list[dict[str, Any]]:
        """The next raw rows after the watermark (deduplicated); [] when caught up. Store thread."""
        return self.fetch_later()()

    def fetch_later(self) -> Callable[[], list[dict[str, Any]]]:
        """:meth:`fetch`, with the rows' conversion to Python left to the caller's thread."""
        state = self._load()
        with_vid = raw_has_visitor_id(self.store)
        self._refresh_salts()
        upper = self.clock() - self.lag_ms
        wm = state.watermark
        if upper <= wm.at_ms:
            return list  # list() is []: nothing to convert
        sql = (
            raw_select(self.store.database, with_vid)
            + " WHERE hub_received_at <= fromUnixTimestamp64Milli({upper:Int64}, 'UTC') AND "
            + AFTER_WATERMARK
            + " ORDER BY hub_received_at, event_id LIMIT 1 BY event_id LIMIT {n:UInt32}"
        )
        rows = self.store.query_rows_later(
            sql, {"upper": upper, "wm_at": wm.at_ms, "wm_id": wm.event_id, "n": self.batch_rows}
        )
        return lambda: rows_to_dicts(rows(), with_vid)

    def transform(self, raw: Sequence[Mapping[str, Any]]) -> Any:
        """The enriched Arrow table of ``raw``: pure CPU, any thread (not the store's, so ingest's
        inserts go on while Python parses user agents)."""
        return enriched_table(self.enricher, raw, next_enriched_at())

    def commit(self, raw: Sequence[Mapping[str, Any]], tbl: Any) -> int:
        """Insert the enriched rows, then move the watermark past them. Store thread."""
        state = self._load()
        self.store.insert_arrow(ENRICHED_TABLE, tbl)
        last = raw[-1]
        new_state = ConsumerState(
            Watermark(int(last["hub_received_at"]), str(last["event_id"])),
            self.fingerprint,
            ENRICHMENT_VERSION,
            state.rows_total + len(raw),
            state.seq + 1,
        )
        save_state(self.store, self.name, new_state)  # only after the rows are in
        self.state = new_state
        return len(raw)

    def step(self) -> int:
        """Enrich the next batch after the watermark; the number of raw rows enriched (0: caught up).

        Blocking; run it on the store thread (``await store.run(consumer.step)``). The hub's
        :meth:`run` does the same in three hops, enriching off the store thread.
        """
        raw = self.fetch()
        if not raw:
            return 0
        return self.commit(raw, self.transform(raw))

    async def _step_async(self) -> int:
        later = await self.store.run(self.fetch_later)
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(None, later)
        if not raw:
            return 0
        tbl = await loop.run_in_executor(None, self.transform, raw)
        return await self.store.run(self.commit, raw, tbl)

    def sweep(self) -> int:
        """Enrich raw rows behind the watermark that ``events_enriched`` lacks (a commit later than
        ``lag_ms``); the number enriched. Blocking, on the store thread."""
        state = self._load()
        if not state.seq:
            return 0
        with_vid = raw_has_visitor_id(self.store)
        lo = state.watermark.at_ms - self.sweep_window_ms
        db = self.store.database
        sql = (
            raw_select(db, with_vid) + " WHERE hub_received_at > fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
            " AND hub_received_at <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
            f" AND event_id NOT IN (SELECT event_id FROM {db}.{ENRICHED_TABLE}"
            " WHERE hub_received_at > fromUnixTimestamp64Milli({lo:Int64}, 'UTC'))"
            " ORDER BY hub_received_at, event_id LIMIT 1 BY event_id LIMIT {n:UInt32}"
        )
        total = 0
        while True:
            rows = self.store.query_rows(sql, {"lo": lo, "hi": state.watermark.at_ms, "n": self.batch_rows})
            if not rows:
                return total
            self._refresh_salts()
            raw = rows_to_dicts(rows, with_vid)
            self._enrich_insert(raw)
            total += len(raw)
            log.warning("enrichment sweep: %d late-committed events enriched behind the watermark", len(raw))
            if len(rows) < self.batch_rows:
                return total

    def catch_up(self) -> int:
        """Steps until caught up (tests, the rerun's tail); the rows enriched."""
        total = 0
        while (n := self.step()) > 0:
            total += n
        return total

    # -- async shell -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, on_step: Callable[[int, int, bool], None] | None = None) -> None:
        """Step on the store thread until :meth:`stop`; idle ``poll_interval`` when caught up.

        ``on_step(rows, watermark_ms, failed)`` after each step (the hub's metrics).

        Storage errors are logged and retried with a back-off (the hub keeps ingesting; the
        consumer catches up from its stored watermark).
        """
        backoff = self.poll_interval
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                n = await self._step_async()
                if time.monotonic() - last_sweep >= self.sweep_interval:
                    last_sweep = time.monotonic()
                    await self.store.run(self.sweep)
                self.last_error = ""
                backoff = self.poll_interval
                if on_step is not None:
                    on_step(n, self.state.watermark.at_ms if self.state else 0, False)
            except StorageError as exc:
                self.last_error = str(exc)
                log.warning("enrichment consumer %r: %s (retrying in %.1fs)", self.name, exc, backoff)
                n = 0
                backoff = min(backoff * 2, 60.0)
                if on_step is not None:
                    on_step(0, 0, True)
            pause = backoff if n < self.batch_rows else self.yield_pause(time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=pause)

    def yield_pause(self, step_secs: float) -> float:
        """Seconds to wait after a full step: 0 when ingest is quiet (catch up at full speed),
        else enough that this consumer's share of the time stays at ``busy_share``."""
        if self.busy_share >= 1 or self.ingest_busy is None or not self.ingest_busy():
            return 0.0
        return min(step_secs * (1 - self.busy_share) / self.busy_share, 10.0)


__all__ = [
    "COLUMN_NAMES",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_LAG_MS",
    "ENRICHED_SCHEMA",
    "ConsumerState",
    "EnrichmentConsumer",
    "Watermark",
    "enriched_table",
    "load_state",
    "next_enriched_at",
    "save_state",
]

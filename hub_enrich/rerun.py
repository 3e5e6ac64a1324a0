"""``edgekite hub enrich --rerun [--since ...]``: recompute the enrichment of history.

After a parser, list or definition change (a new crawler pattern, a new geo database, a bumped
``ENRICHMENT_VERSION``), stored verdicts are stale until re-enriched. A rerun walks the raw table
in ``(hub_received_at, event_id)`` pages (the consumer's order, so memory stays bounded), enriches
every event again and writes the rows with a *newer* ``enriched_at``: in the ReplacingMergeTree
they replace the old rows under the same sorting key, so the numbers move and no row is added
(``FINAL`` sees one row per event at once; ``OPTIMIZE ... FINAL`` or a background merge removes
the old ones physically).

Visitor ids are *kept*, never recomputed from scratch: the salts that made them are deleted after
two days. The raw ``visitor_id`` column (stored by hub ingest) is used when non-zero; otherwise
the id the enriched table already holds for the event; only then does the enricher compute one
(a producer's login id, or an address hashed with a salt that still exists).

``--since`` selects events by ``observed_at`` (what an analyst means by "since March"); ISO-8601
or Unix ms. Raw rows stored after the rerun started are left to the live consumer.

With chDB the hub process holds the data directory: stop the hub, run the rerun, start the hub
(or use a ClickHouse server, where both can run; restart the hub with the new lists first, so the
live consumer does not keep writing rows with the old ones).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edgekite.config import HubConfig
from edgekite.envelope import parse_timestamp
from edgekite.hubstore import HubStore, StorageError, StoreLockedError
from edgekite.hubstore.analytics import ENRICHED_TABLE, ensure_analytics, load_salts, raw_has_visitor_id
from edgekite.visitor import DailySalts
from hub_enrich.bots import BotDetector
from hub_enrich.consumer import (
    AFTER_WATERMARK,
    NIL_UUID,
    ConsumerState,
    Watermark,
    enriched_table,
    load_state,
    next_enriched_at,
    now_ms,
    raw_select,
    rows_to_dicts,
    save_state,
)
from hub_enrich.enrich import ENRICHMENT_VERSION, Enricher
from hub_enrich.geo import GeoLookup
from hub_enrich.ua import UaParser

DEFAULT_RERUN_BATCH = 50_000
RERUN_STATE = "rerun"


def build_enricher(
    bots_file: str | Path | None = None,
    geo_db: str | Path | None = None,
    site_hosts: Mapping[str, Sequence[str]] | None = None,
) -> Enricher:
    """The hub's enricher from its files (the same for the live consumer and a rerun)."""
    return Enricher(
        UaParser(),
        BotDetector.from_file(bots_file),
        GeoLookup(geo_db) if geo_db is not None else None,
        site_hosts=site_hosts,
    )


def parse_since(text: str) -> int:
    """Unix ms from ``--since``: ISO-8601 (``2024-06-01``, ``2024-06-01T12:00Z``) or Unix ms."""
    return parse_timestamp(text)


class Progress:
    """A plain-text progress line on stderr: ``enrich: 1,200,000 / 3,400,000 (35 %) 95,000 ev/s``.

    On a terminal the line is redrawn in place (``\\r``); into a file or a pipe a new line is
    written at most every ``interval`` seconds, so logs stay readable.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        *,
        label: str = "enrich",
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self._last = -1e9
        self.done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * done // self.total} %)" if self.total else ""
        return f"{self.label}: {done:,} / {self.total:,}{pct} {rate:,.0f} ev/s"

    def update(self, done: int, *, force: bool = False) -> None:
        self.done = done
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        text = self.line(done, now - self.started)
        if self._tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.update(self.done, force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class RerunResult:
    rows: int  # raw rows enriched again (one per event id per page)
    total: int  # distinct events selected when the rerun started
    seconds: float


def _existing_visitor_ids(store: HubStore, lo_ms: int, hi_ms: int) -> dict[str, int]:
    """Visitor ids already in ``events_enriched`` for the raw rows stored in ``[lo, hi]``."""
    rows = store.query_rows(
        f"SELECT toString(event_id), argMax(visitor_id, enriched_at) FROM {store.table(ENRICHED_TABLE)} "
        "WHERE hub_received_at >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
        "AND hub_received_at <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') AND visitor_id != 0 "
        "GROUP BY event_id",
        {"lo": lo_ms, "hi": hi_ms},
    )
    return {str(e): int(v) for e, v in rows}


def keep_visitor_ids(raw: list[dict[str, Any]], existing: Mapping[str, int]) -> None:
    """Give rows without a stored visitor id the one their enriched row has (salts are deleted)."""
    for row in raw:
        if not row.get("visitor_id"):
            vid = existing.get(str(row["event_id"]))
            if vid:
                row["visitor_id"] = vid


def rerun(
    store: HubStore,
    enricher: Enricher,
    *,
    since_ms: int | None = None,
    batch_rows: int = DEFAULT_RERUN_BATCH,
    progress: Progress | Callable[[int], Progress] | None = None,
    clock: Callable[[], int] = now_ms,
) -> RerunResult:
    """Re-enrich every raw event (observed at or after ``since_ms``) stored before now. Blocking.

    ``progress``: a :class:`Progress`, or a factory given the total (the CLI's stderr bar).
    """
    started = time.monotonic()
    upper = clock()
    db = store.database
    salts = load_salts(store)
    if salts:
        enricher.salts = DailySalts(salts, keep_days=enricher.salts.keep_days if enricher.salts else 2)
    with_vid = raw_has_visitor_id(store)
    where = "hub_received_at <= fromUnixTimestamp64Milli({upper:Int64}, 'UTC')"
    params: dict[str, Any] = {"upper": upper}
    if since_ms is not None:
        where += " AND observed_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
        params["since"] = since_ms
    count = store.query_rows(f"SELECT uniqExact(event_id) FROM {db}.events WHERE {where}", params)
    total = int(count[0][0]) if count else 0
    bar = progress(total) if callable(progress) and not isinstance(progress, Progress) else progress
    sql = (
        raw_select(db, with_vid)
        + f" WHERE {where}"
        + " AND "
        + AFTER_WATERMARK
        + " ORDER BY hub_received_at, event_id LIMIT 1 BY event_id LIMIT {n:UInt32}"
    )
    wm = Watermark(0, NIL_UUID)
    done = 0
    while True:
        rows = store.query_rows(sql, {**params, "wm_at": wm.at_ms, "wm_id": wm.event_id, "n": batch_rows})
        if not rows:
            break
        raw = rows_to_dicts(rows, with_vid)
        keep_visitor_ids(
            raw, _existing_visitor_ids(store, int(raw[0]["hub_received_at"]), int(raw[-1]["hub_received_at"]))
        )
        store.insert_arrow(ENRICHED_TABLE, enriched_table(enricher, raw, next_enriched_at()))
        done += len(raw)
        wm = Watermark(int(raw[-1]["hub_received_at"]), str(raw[-1]["event_id"]))
        if bar is not None:
            bar.update(done)
        if len(rows) < batch_rows:
            break
    if bar is not None:
        bar.finish()
    prev = load_state(store, RERUN_STATE)
    save_state(
        store,
        RERUN_STATE,
        ConsumerState(wm, enricher.fingerprint, ENRICHMENT_VERSION, prev.rows_total + done, prev.seq + 1),
    )
    return RerunResult(done, total, time.monotonic() - started)


def run_cli(
    config: HubConfig,
    *,
    do_rerun: bool,
    since: str | None = None,
    bots_file: Path | None = None,
    geo_db: Path | None = None,
    batch_rows: int = DEFAULT_RERUN_BATCH,
    stream: TextIO | None = None,
) -> int:
    """``edgekite hub enrich``: ``--rerun`` recomputes history; without it, enrich what is new and exit."""
    err = stream if stream is not None else sys.stderr
    try:
        since_ms = parse_since(since) if since is not None else None
    except ValueError as exc:
        print(f"edgekite hub enrich: --since: {exc}", file=err)
        return 2
    try:
        enricher = build_enricher(bots_file, geo_db)
    except (OSError, ValueError) as exc:
        print(f"edgekite hub enrich: {exc}", file=err)
        return 2
    store = HubStore(config)
    try:
        store.open()
    except StoreLockedError as exc:
        print(f"edgekite hub enrich: {exc}; stop the hub first (chDB allows one process)", file=err)
        return 1
    except StorageError as exc:
        print(f"edgekite hub enrich: {exc}", file=err)
        return 1
    try:
        ensure_analytics(store)
        if do_rerun:
            result = rerun(
                store,
                enricher,
                since_ms=since_ms,
                batch_rows=batch_rows,
                progress=lambda total: Progress(total, err),
            )
            print(
                f"enrich: re-enriched {result.rows:,} events in {result.seconds:.1f}s "
                f"(fingerprint {enricher.fingerprint}, version {ENRICHMENT_VERSION})",
                file=err,
            )
        else:
            from hub_enrich.consumer import EnrichmentConsumer

            consumer = EnrichmentConsumer(store, enricher, batch_rows=batch_rows)
            n = consumer.catch_up()
            print(f"enrich: {n:,} new events enriched", file=err)
    except StorageError as exc:
        print(f"edgekite hub enrich: {exc}", file=err)
        return 1
    finally:
        store.close()
        store.shutdown_executor()
    return 0

"""The hub's analytics layer: the enriched table, the consumers' state, the daily salts, the views.

Created idempotently by :func:`ensure_analytics` at every hub start, with the same SQL on chDB and
on a ClickHouse server. Why these shapes:

- ``events_enriched`` is a ReplacingMergeTree whose version is ``enriched_at``: a rerun writes
  rows with a newer ``enriched_at`` under the *same* sorting key and partition, so they replace
  the old rows instead of adding to them. For that the key and the partition must be functions of
  the raw event only, never of an enrichment rule that a rerun could change: the sorting key is
  ``(category, source_id, toDate(observed_at), event_id)`` (raw columns; ``site`` is derived, so
  it gets a skip index instead of a key position), and the partition is the month of the edge's
  ``received_at``, like the raw table's: ``observed_at`` is a device clock and can be absurd (a
  partition per bogus month would explode the part count), and ``hub_received_at`` differs
  between two stored copies of one event (a batch resent after the dedup window), which would put
  the copies in different partitions where no merge ever collapses them.
- ``enrich_state`` holds each consumer's watermark ``(hub_received_at, event_id)``, the enricher's
  fingerprint and version; ReplacingMergeTree by consumer name with a sequence number as version,
  so the newest write wins even within one millisecond.
- ``salts`` holds the daily visitor-id salts (hex text, so both backends return the same bytes).
  Rows are deleted by :func:`purge_expired_salts` (a synchronous mutation: a TTL alone deletes
  only when a merge happens to run) and, as a backstop, by a TTL.
- the views' SQL lives in ``dashboards/sql/*.sql`` (``CREATE OR REPLACE VIEW``, run in file-name
  order with ``{db}`` replaced by the database name), so a definition change is a view change,
  applied at the next start, with no migration of stored rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from edgekite.hubstore.backend import HubStore
from edgekite.hubstore.enriched import ENRICHED_COLUMNS

ENRICHED_TABLE = "events_enriched"
STATE_TABLE = "enrich_state"
SALTS_TABLE = "salts"
SALT_KEEP_DAYS = 2
"""Days a salt lives (today included), as :class:`edgekite.visitor.DailySalts` defaults to."""

SQL_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "sql"
"""Where the views' SQL is: ``dashboards/sql``, shipped as package data of ``dashboards``."""

ENRICHED_EXTRA_COLUMNS: dict[str, str] = {
    "received_at": "DateTime64(3, 'UTC')",  # the edge's receive time: the partition key
    "hub_received_at": "DateTime64(3, 'UTC')",  # the raw row's, for lag and the consumer's sweep
    "enriched_at": "DateTime64(3, 'UTC')",  # the ReplacingMergeTree version
}
"""Columns of ``events_enriched`` beyond :data:`edgekite.hubstore.enriched.ENRICHED_COLUMNS`."""

ENRICHED_TABLE_COLUMNS: dict[str, str] = {**ENRICHED_COLUMNS, **ENRICHED_EXTRA_COLUMNS}

_STATEMENT_SPLIT = re.compile(r";\s*(?:\n|$)")


def analytics_ddl(db: str, *, salt_keep_days: int = SALT_KEEP_DAYS) -> list[str]:
    """The tables' ``CREATE ... IF NOT EXISTS`` statements (safe to run at every start)."""
    cols = ",\n    ".join(f"{name} {ctype}" for name, ctype in ENRICHED_TABLE_COLUMNS.items())
    # Two extra days of TTL beyond the kept window: purge_expired_salts deletes on time, the TTL
    # only catches a hub that was down when it should have run.
    ttl_days = int(salt_keep_days) + 2
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.{ENRICHED_TABLE} (
    {cols},
    INDEX site_idx site TYPE set(1000) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(enriched_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (category, source_id, toDate(observed_at), event_id)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.{STATE_TABLE} (
    consumer LowCardinality(String),
    watermark_at DateTime64(3, 'UTC'),
    watermark_id UUID,
    fingerprint String,
    enrichment_version UInt16,
    rows_total UInt64,
    updated_at DateTime64(3, 'UTC'),
    seq UInt64
)
ENGINE = ReplacingMergeTree(seq)
ORDER BY consumer""",
        f"""CREATE TABLE IF NOT EXISTS {db}.{SALTS_TABLE} (
    day Date,
    salt String,
    created_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY day
TTL day + INTERVAL {ttl_days} DAY""",
    ]


def split_statements(sql: str) -> list[str]:
    """Statements of one ``.sql`` file: split on ``;`` at a line end; ``--`` comment-only parts dropped."""
    out = []
    for part in _STATEMENT_SPLIT.split(sql):
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(part.strip())
    return out


def view_statements(db: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Every statement of ``sql_dir/*.sql`` in file-name order, ``{db}`` replaced by ``db``.

    Plain ``str.replace`` and not ``str.format``: the SQL is full of ``{`` (query parameters in
    the examples, map literals); only the literal token ``{db}`` is a placeholder.
    """
    files = sorted(sql_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no view definitions in {sql_dir}")
    statements: list[str] = []
    for path in files:
        statements.extend(split_statements(path.read_text(encoding="utf-8").replace("{db}", db)))
    return statements


def ensure_analytics(
    store: HubStore, *, sql_dir: Path = SQL_DIR, salt_keep_days: int = SALT_KEEP_DAYS
) -> None:
    """Create the analytics tables if missing and (re)create every view. Blocking: run it on the
    store thread (``await store.run(ensure_analytics, store)``) after ``store.open()``.

    The raw ``events`` table must exist (``store.open`` creates it): the views read it.
    """
    for statement in analytics_ddl(store.database, salt_keep_days=salt_keep_days):
        store.command(statement)
    for statement in view_statements(store.database, sql_dir):
        store.command(statement)


def raw_has_visitor_id(store: HubStore) -> bool:
    """Whether hub ingest stores ``visitor_id`` in the raw ``events`` table (the lead's migration)."""
    rows = store.query_rows(
        "SELECT count() FROM system.columns WHERE database = {db:String} AND table = 'events' "
        "AND name = 'visitor_id'",
        {"db": store.database},
    )
    return bool(rows and int(rows[0][0]))


# -- salts ---------------------------------------------------------------------------------------


def load_salts(store: HubStore) -> dict[int, bytes]:
    """The stored salts as ``{utc day number: salt}``, for :class:`edgekite.visitor.DailySalts`.

    If two hub workers raced to create one day's salt, the first one written wins for everybody
    (``argMin`` by creation time), so all workers converge on one salt per day.
    """
    rows = store.query_rows(
        f"SELECT toUInt32(day), argMin(salt, created_at) FROM {store.table(SALTS_TABLE)} GROUP BY day"
    )
    return {int(day): bytes.fromhex(str(salt)) for day, salt in rows}


def save_salt(store: HubStore, day: int, salt: bytes, now_ms: int | None = None) -> None:
    """Store ``salt`` for UTC day number ``day`` (a second salt for a day loses to the first)."""
    store.command(
        f"INSERT INTO {store.table(SALTS_TABLE)} (day, salt, created_at) "
        "SELECT addDays(toDate('1970-01-01'), {day:UInt32}), {salt:String}, "
        "fromUnixTimestamp64Milli({now:Int64}, 'UTC')",
        {
            "day": int(day),
            "salt": salt.hex(),
            "now": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        },
    )


def purge_expired_salts(
    store: HubStore, expired_days: list[int] | None = None, *, before_day: int | None = None
) -> None:
    """Delete salts: the given day numbers (``DailySalts.expired(now)``) and/or all before ``before_day``.

    A synchronous mutation (``mutations_sync = 1``): once it returns, the salt is gone from the
    table's live parts, and with it the ability to link that day's visitor ids to addresses.
    """
    conditions = []
    params: dict[str, object] = {}
    if expired_days:
        conditions.append("toUInt32(day) IN {days:Array(UInt32)}")
        params["days"] = [int(d) for d in expired_days]
    if before_day is not None:
        conditions.append("toUInt32(day) < {before:UInt32}")
        params["before"] = int(before_day)
    if not conditions:
        return
    store.command(
        f"ALTER TABLE {store.table(SALTS_TABLE)} DELETE WHERE {' OR '.join(conditions)} "
        "SETTINGS mutations_sync = 1",
        params,
    )


def table_columns(store: HubStore, table: str) -> Mapping[str, str]:
    """``{column: type}`` of one table of the hub's database (for tests and checks)."""
    rows = store.query_rows(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        {"db": store.database, "t": table},
    )
    return {str(n): str(t) for n, t in rows}

"""The hub's tables, created idempotently at start on chDB and on a ClickHouse server alike.

Why these shapes:

- ``events`` is a ReplacingMergeTree whose sorting key ends in ``event_id`` and otherwise holds
  only fields of the event itself, so the same event inserted twice (a resent batch that the
  insert deduplication window no longer remembers, or the same events re-batched under another
  batch id) collapses to one row when parts merge. Queries that must be exact before a merge use
  ``LIMIT 1 BY event_id`` or read the ``batches`` ledger, never ``FINAL`` on the big table.
  Without a version column the copy that survives is the *last* inserted one (already within
  one INSERT block), so nothing derived from a copy's ``hub_received_at`` (say, an event's first
  arrival) is stable across merges: a cache or rollup of it would need a version column that
  keeps the earliest arrival, i.e. a new table (``bench/README-issue6-queries.md``).
- It is partitioned by the edge's ``received_at`` (a sane clock), not ``observed_at``: devices
  send absurd observation times, and a partition per bogus month would explode the part count.
- ``non_replicated_deduplication_window`` makes ClickHouse remember the last N insert
  deduplication tokens (one per batch), so a resent batch is a no-op even before the merge.
- ``batches`` is the ledger: one row per accepted batch (heartbeats included, with count 0).
  Counts shown to users come from it (``FINAL`` over one row per batch is cheap).
- ``batches_pending`` holds a group's ledger rows written *before* its events (one INSERT for
  several batches, under a token of the whole group): if the hub dies between the events and
  the ledger, the next start finds the group's batches there, checks whether their events
  landed and writes their ledger rows (``BatchProcessor.recover``). Kept 2 days.
- ``dead_letter`` keeps refused events with the reason, for 30 days.
"""

from __future__ import annotations

from edgekite.config import HubConfig

DEAD_LETTER_TTL_DAYS = 30
PENDING_TTL_DAYS = 2

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "edge_id",
    "batch_id",
    "observed_at",
    "received_at",
    "hub_received_at",
    "source_type",
    "source_id",
    "category",
    "type",
    "severity",
    "source_seq",
    "correlation_id",
    "session_id",
    "incident_id",
    "data",
    "attachments",
    "source_version",
    "source_metadata",
    "schema_version",
    "pii",
    "retention_class",
    "flags",
    "visitor_id",
)

BATCH_COLUMNS: tuple[str, ...] = (
    "edge_id",
    "batch_id",
    "first_seq",
    "last_seq",
    "count",
    "events",
    "rejected",
    "backlog",
    "withheld",
    "edge_created_at",
    "hub_received_at",
)

DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "hub_received_at",
    "edge_id",
    "batch_id",
    "event_index",
    "event_id",
    "code",
    "reason",
    "payload",
)


# The ledger's columns, shared by ``batches`` and ``batches_pending`` (BATCH_COLUMNS' types).
_LEDGER_COLUMNS = """    edge_id LowCardinality(String),
    batch_id String,
    first_seq UInt64,
    last_seq UInt64,
    count UInt32,
    events UInt32,
    rejected UInt32,
    backlog UInt64,
    withheld String,
    edge_created_at DateTime64(3, 'UTC'),
    hub_received_at DateTime64(3, 'UTC')"""


def ddl(config: HubConfig) -> list[str]:
    """Statements creating the database and tables if they do not exist (safe to run every start)."""
    db = config.storage.database  # validated as an identifier by the config model
    window = int(config.storage.dedup_window_batches)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
    event_id UUID,
    edge_id LowCardinality(String),
    batch_id String,
    observed_at DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    hub_received_at DateTime64(3, 'UTC'),
    source_type LowCardinality(String),
    source_id LowCardinality(String),
    category LowCardinality(String),
    type LowCardinality(String),
    severity LowCardinality(String),
    source_seq Nullable(UInt64),
    correlation_id Nullable(String),
    session_id Nullable(String),
    incident_id Nullable(String),
    data String CODEC(ZSTD(3)),
    attachments String,
    source_version Nullable(String),
    source_metadata String CODEC(ZSTD(3)),
    schema_version LowCardinality(String),
    pii UInt8,
    retention_class LowCardinality(String),
    flags UInt8,
    visitor_id UInt64 DEFAULT 0
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (category, source_id, type, observed_at, event_id)
SETTINGS non_replicated_deduplication_window = {window}""",
        # Hubs created before visitor ids were computed at ingest (0 = unknown).
        f"ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS visitor_id UInt64 DEFAULT 0",
        f"""CREATE TABLE IF NOT EXISTS {db}.batches (
{_LEDGER_COLUMNS}
)
ENGINE = ReplacingMergeTree
ORDER BY (edge_id, batch_id)
SETTINGS non_replicated_deduplication_window = {window}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.batches_pending (
{_LEDGER_COLUMNS}
)
ENGINE = MergeTree
ORDER BY (hub_received_at, edge_id, batch_id)
TTL toDateTime(hub_received_at) + INTERVAL {PENDING_TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = {window}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.dead_letter (
    hub_received_at DateTime64(3, 'UTC'),
    edge_id LowCardinality(String),
    batch_id String,
    event_index UInt32,
    event_id Nullable(String),
    code LowCardinality(String),
    reason String,
    payload String CODEC(ZSTD(3))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(hub_received_at)
ORDER BY (hub_received_at, edge_id, batch_id, event_index)
TTL toDateTime(hub_received_at) + INTERVAL {DEAD_LETTER_TTL_DAYS} DAY
SETTINGS non_replicated_deduplication_window = {window}""",
    ]

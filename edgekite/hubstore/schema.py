"""The hub's tables, created idempotently at start on chDB and on a ClickHouse server alike.

Why these shapes:

- ``events`` is a ReplacingMergeTree whose sorting key ends in ``event_id`` and otherwise holds
  only fields of the event itself, so the same event inserted twice (a resent batch that the
  insert deduplication window no longer remembers, or the same events re-batched under another
  batch id) collapses to one row when parts merge. Queries that must be exact before a merge use
  ``LIMIT 1 BY event_id`` or read the ``batches`` ledger, never ``FINAL`` on the big table.
  Its version column ``first_arrival_ver`` is larger for earlier ``hub_received_at``, so the
  copy that survives a merge is the event's *first* arrival at the hub. That makes "the hub day
  an event first arrived" immutable once the day is over: a later copy can never remove the
  earlier one, so per-day figures of closed days can be cached (the fleet drill-down does).
  Hubs created before it had no version (the *last* copy survived); ``events_migration``
  moves their parts into the new engine at start (hard links, no copy of the data).
- ``site`` is stored at ingest (``edgekite.visitor.site_of``: ``data.site``, else the source's
  ``site_id``, else the source), so the IoT views and the site filters read a small column
  instead of parsing two JSON documents per row (30 days of one site's detections: ~100 ms of
  parsing). Rows stored before it read its SQL default, the same rule, until a mutation
  (``MATERIALIZE COLUMN``, started when the column is added) has written it.
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
- ``fleet_days`` keeps the fleet drill-down's closed days (a few dozen rows of figures per edge
  and day), so a restarted hub does not compute them again.
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
    "site",
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


FLEET_DAYS_COLUMNS: tuple[str, ...] = (
    "definition",
    "events_table",
    "edge_id",
    "hub_day",
    "rows",
    "computed_ms",
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
        events_table_sql(db, "events", window),
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
        # Closed hub days of the fleet drill-down, computed once (hub_api/edge_days.py): keyed by
        # the definition of the figures and the events table they were computed from (its UUID).
        f"""CREATE TABLE IF NOT EXISTS {db}.fleet_days (
    definition LowCardinality(String),
    events_table String,
    edge_id LowCardinality(String),
    hub_day Int64,
    rows String CODEC(ZSTD(3)),
    computed_ms Int64
)
ENGINE = ReplacingMergeTree(computed_ms)
ORDER BY (definition, events_table, edge_id, hub_day)""",
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


# Larger for an earlier hub arrival (ms up to the year 9999), so ReplacingMergeTree keeps the first.
FIRST_ARRIVAL_VER = "toUInt64(253402300799999 - toUnixTimestamp64Milli(hub_received_at))"


def json_string_sql(doc: str, key: str) -> str:
    """``JSONExtractString(doc, key)``, parsing ``doc`` only when ``"key"`` occurs in it: the hub
    writes JSON with orjson, which never escapes a letter, so without that text the key is
    absent and the answer is ''."""
    return f"if(position({doc}, '\"{key}\"') > 0, JSONExtractString({doc}, '{key}'), '')"


def site_sql(data: str, metadata: str, source_id: str) -> str:
    """The site of an event in SQL: ``data.site``, else ``source.metadata.site_id``, else the source
    (``edgekite.visitor.site_of``, which hub ingest stores in the ``site`` column)."""
    in_data, in_metadata = json_string_sql(data, "site"), json_string_sql(metadata, "site_id")
    return f"multiIf({in_data} != '', {in_data}, {in_metadata} != '', {in_metadata}, {source_id})"


# The ``site`` column's default: what rows stored before ingest wrote the column read as (and
# what ``MATERIALIZE COLUMN`` writes into their parts).
SITE_SQL = site_sql("data", "source_metadata", "source_id")
SITE_COLUMN_SQL = f"site LowCardinality(String) DEFAULT {SITE_SQL}"


def events_table_sql(db: str, name: str, window: int) -> str:
    """``CREATE TABLE`` of the raw events table (``name`` differs only while migrating)."""
    return f"""CREATE TABLE IF NOT EXISTS {db}.{name} (
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
    visitor_id UInt64 DEFAULT 0,
    first_arrival_ver UInt64 MATERIALIZED {FIRST_ARRIVAL_VER},
    site LowCardinality(String) DEFAULT {SITE_SQL}
)
ENGINE = ReplacingMergeTree(first_arrival_ver)
PARTITION BY toYYYYMM(received_at)
ORDER BY (category, source_id, type, observed_at, event_id)
SETTINGS non_replicated_deduplication_window = {window}"""


def events_needs_migration(engine_full: str) -> bool:
    """True for an ``events`` table from before the version column (the last copy survived)."""
    return not engine_full.startswith("ReplacingMergeTree(first_arrival_ver)")


def events_migration(db: str, window: int, partition_ids: list[str]) -> list[str]:
    """Statements moving an old ``events`` table's parts into one with ``first_arrival_ver``.

    ``ATTACH PARTITION ... FROM`` hard-links the parts (instant, no second copy on disk); the
    old table first gets the same column (computed, nothing rewritten) so the structures match.
    ``EXCHANGE TABLES`` swaps the two atomically, so the name ``events`` (and the views over it)
    never points at a half-filled table. The old table's insert-deduplication tokens stay behind:
    for one window a resent batch is caught by the ledger only, as it always is first. Run it
    before anything inserts (the hub does, when it opens the store); a second hub process on the
    same server must be stopped for the upgrade.
    """
    t, tmp = f"{db}.events", f"{db}.events_first_arrival"
    return [
        f"DROP TABLE IF EXISTS {tmp} SYNC",  # a migration cut short before the exchange
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS first_arrival_ver UInt64 MATERIALIZED {FIRST_ARRIVAL_VER}",
        f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {SITE_COLUMN_SQL}",
        events_table_sql(db, "events_first_arrival", window),
        *(f"ALTER TABLE {tmp} ATTACH PARTITION ID '{pid}' FROM {t}" for pid in partition_ids),
        f"EXCHANGE TABLES {t} AND {tmp}",
        f"DROP TABLE {tmp} SYNC",
    ]

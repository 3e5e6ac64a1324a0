"""The edge's SQLite schema, its migrations and connection settings.

Layout choices (measured, see bench/README.md): the ``events`` table is an ordinary rowid
table, so rows are appended in arrival order however random the producers' UUIDs are; the
``event_id`` is unique through a separate index of 16-byte blobs in two tiers (``id_index``),
so random ids do not dirty a leaf page of one big index per event. Only the indexes the
dashboard's filters need exist; counts come from ``hourly_counts``, never from raw rows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgekite.config import StoreSection

# Each entry moves the schema from version i to i+1 (PRAGMA user_version). Append only.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        event_id         BLOB PRIMARY KEY,           -- 16-byte UUID
        observed_at      INTEGER NOT NULL,           -- Unix ms, producer's clock
        received_at      INTEGER NOT NULL,           -- Unix ms, edge's clock
        source_type      TEXT NOT NULL,
        source_id        TEXT NOT NULL,
        source_seq       INTEGER,                    -- monotonic per source
        category         TEXT NOT NULL,
        type             TEXT NOT NULL,
        severity         TEXT NOT NULL DEFAULT 'info',
        correlation_id   TEXT,
        payload_json     TEXT NOT NULL,              -- event.data (TEXT, or zstd BLOB: ek_json())
        attachments_json TEXT,                       -- likewise
        pii              INTEGER NOT NULL DEFAULT 0,
        retention_class  TEXT NOT NULL DEFAULT 'standard',
        meta_json        TEXT,                       -- the rest of the envelope, likewise
        flags            INTEGER NOT NULL DEFAULT 0, -- 1 clock ahead, 2 clock far behind
        synced           INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX idx_events_observed ON events(observed_at);
    CREATE INDEX idx_events_source_observed ON events(source_id, observed_at);
    CREATE INDEX idx_events_type_observed ON events(type, observed_at);

    CREATE TABLE hourly_counts (
        hour_bucket INTEGER NOT NULL,                -- observed_at // 3_600_000
        source_id   TEXT NOT NULL,
        category    TEXT NOT NULL,
        type        TEXT NOT NULL,
        count       INTEGER NOT NULL,
        PRIMARY KEY (hour_bucket, source_id, category, type)
    ) WITHOUT ROWID;

    CREATE TABLE sources (
        source_id   TEXT PRIMARY KEY,
        source_type TEXT NOT NULL,
        first_seen  INTEGER NOT NULL,                -- received_at, ms
        last_seen   INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL DEFAULT 0,
        events      INTEGER NOT NULL DEFAULT 0,
        last_heartbeat INTEGER
    ) WITHOUT ROWID;

    CREATE TABLE config (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE dead_letter (
        id            INTEGER PRIMARY KEY,
        received_at   INTEGER NOT NULL,
        transport     TEXT NOT NULL,
        topic         TEXT,
        code          TEXT NOT NULL,
        reason        TEXT NOT NULL,
        payload       BLOB,                          -- cut to limits.dead_letter_max_bytes
        payload_bytes INTEGER NOT NULL               -- size before the cut
    );
    CREATE INDEX idx_dead_letter_received ON dead_letter(received_at);

    -- Redelivery fingerprints of messages holding id-less envelopes: an MQTT redelivery
    -- (DUP=1) after a crash between commit and PUBACK must not mint fresh ids twice.
    -- zstd dictionaries trained on this edge's payloads; JSON columns that are BLOBs name one.
    CREATE TABLE zstd_dicts (
        id         INTEGER PRIMARY KEY,
        dict       BLOB NOT NULL,
        trained_at INTEGER NOT NULL,
        samples    INTEGER NOT NULL
    );

    CREATE TABLE fingerprints (
        fp          BLOB PRIMARY KEY,
        received_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: what the LAN dashboard reads, kept at ingest so no panel scans raw events.
    """
    CREATE TABLE daily_counts (
        day_bucket  INTEGER NOT NULL,                -- observed_at // 86_400_000 (UTC days)
        source_id   TEXT NOT NULL,
        category    TEXT NOT NULL,
        type        TEXT NOT NULL,
        count       INTEGER NOT NULL,
        PRIMARY KEY (day_bucket, source_id, category, type)
    ) WITHOUT ROWID;

    -- Top-N per dimension (page, referrer, error), hourly for 24 h windows, daily beyond.
    CREATE TABLE hourly_dims (
        dim         TEXT NOT NULL,
        hour_bucket INTEGER NOT NULL,
        key         TEXT NOT NULL,
        count       INTEGER NOT NULL,
        PRIMARY KEY (dim, hour_bucket, key)
    ) WITHOUT ROWID;
    CREATE TABLE daily_dims (
        dim         TEXT NOT NULL,
        day_bucket  INTEGER NOT NULL,
        key         TEXT NOT NULL,
        count       INTEGER NOT NULL,
        PRIMARY KEY (dim, day_bucket, key)
    ) WITHOUT ROWID;

    -- HyperLogLog sketches (Apache DataSketches, compact form) of distinct visitors/sources.
    CREATE TABLE sketches (
        dim         TEXT NOT NULL,
        granularity TEXT NOT NULL,                   -- 'h' hour buckets, 'd' day buckets
        bucket      INTEGER NOT NULL,
        sketch      BLOB NOT NULL,
        PRIMARY KEY (dim, granularity, bucket)
    ) WITHOUT ROWID;

    -- Consecutive detections of one camera within incidents.gap_secs.
    CREATE TABLE incidents (
        id             INTEGER PRIMARY KEY,
        source_id      TEXT NOT NULL,
        start_ms       INTEGER NOT NULL,
        end_ms         INTEGER NOT NULL,
        count          INTEGER NOT NULL,
        top_confidence REAL,
        top_event_id   BLOB,
        thumbnail_uri  TEXT,
        labels         TEXT NOT NULL                 -- JSON list
    );
    CREATE INDEX idx_incidents_end ON incidents(end_ms);
    CREATE INDEX idx_incidents_source_end ON incidents(source_id, end_ms);

    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value) SELECT 'events_stored', count(*) FROM events;

    -- The alert inbox, in arrival order (the edge's clock: a device clock running ahead cannot
    -- keep an alert "unseen"); only error/critical events are in this index.
    CREATE INDEX idx_events_alerts ON events(received_at) WHERE severity IN ('error', 'critical');
    """,
    # 3: the outbox to the hub. Rows are in arrival (rowid) order, so "unsynced" is a watermark,
    # not a flag per row: forwarding a million events writes one row per batch, not a million.
    """
    CREATE TABLE sync_batches (                      -- formed, sent, not yet acknowledged
        batch_no   INTEGER PRIMARY KEY,
        batch_id   TEXT NOT NULL UNIQUE,
        first_seq  INTEGER NOT NULL,                 -- events.rowid range the batch covers
        last_seq   INTEGER NOT NULL,
        events     INTEGER NOT NULL,
        withheld   TEXT NOT NULL,                    -- JSON {reason: rows kept local}
        created_at INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO counters (name, value) VALUES
        ('sync_formed_to', 0),                       -- highest rowid in any formed batch
        ('sync_synced_to', 0),                       -- every rowid at or below is at the hub
        ('sync_events_synced', 0),
        ('sync_withheld_pii', 0),
        ('sync_withheld_short', 0),
        ('sync_dropped_unsynced', 0);                -- deleted by the size cap before sync
    -- Names this database in batch ids, so a wiped and re-created edge never reuses one.
    INSERT OR IGNORE INTO config (key, value, updated_at)
        VALUES ('store_id', lower(hex(randomblob(6))), CAST(strftime('%s', 'now') AS INTEGER) * 1000);
    """,
    # 4: the event_id index in two tiers (see id_index.py): events loses its id primary key,
    # whose random inserts dirtied a leaf page per event. Rebuilds events, keeping rowids.
    """
    CREATE TABLE events_v4 (
        event_id         BLOB NOT NULL,              -- 16-byte UUID, unique through id_index
        observed_at      INTEGER NOT NULL,
        received_at      INTEGER NOT NULL,
        source_type      TEXT NOT NULL,
        source_id        TEXT NOT NULL,
        source_seq       INTEGER,
        category         TEXT NOT NULL,
        type             TEXT NOT NULL,
        severity         TEXT NOT NULL DEFAULT 'info',
        correlation_id   TEXT,
        payload_json     TEXT NOT NULL,
        attachments_json TEXT,
        pii              INTEGER NOT NULL DEFAULT 0,
        retention_class  TEXT NOT NULL DEFAULT 'standard',
        meta_json        TEXT,
        flags            INTEGER NOT NULL DEFAULT 0,
        synced           INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO events_v4 (rowid, event_id, observed_at, received_at, source_type, source_id, source_seq,
        category, type, severity, correlation_id, payload_json, attachments_json, pii, retention_class,
        meta_json, flags, synced)
    SELECT rowid, event_id, observed_at, received_at, source_type, source_id, source_seq,
        category, type, severity, correlation_id, payload_json, attachments_json, pii, retention_class,
        meta_json, flags, synced FROM events ORDER BY rowid;
    DROP TABLE events;
    ALTER TABLE events_v4 RENAME TO events;
    CREATE INDEX idx_events_observed ON events(observed_at);
    CREATE INDEX idx_events_source_observed ON events(source_id, observed_at);
    CREATE INDEX idx_events_type_observed ON events(type, observed_at);
    CREATE INDEX idx_events_alerts ON events(received_at) WHERE severity IN ('error', 'critical');
    CREATE TABLE event_ids (
        event_id BLOB PRIMARY KEY,
        rid      INTEGER NOT NULL                    -- events.rowid
    ) WITHOUT ROWID;
    CREATE TABLE recent_ids (
        event_id BLOB PRIMARY KEY,
        rid      INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO event_ids (event_id, rid) SELECT event_id, rowid FROM events ORDER BY event_id;
    CREATE TRIGGER events_forget_id AFTER DELETE ON events BEGIN
        DELETE FROM recent_ids WHERE event_id = old.event_id;
        DELETE FROM event_ids WHERE event_id = old.event_id;
    END;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer EdgeKite; refuse rather than corrupt it."""


def checkpoint_frames(store: StoreSection) -> int:
    """WAL frames let in before they are copied back: a quarter of the bound (4 KiB pages), so a
    page dirtied by several batches in a row is copied back fewer times."""
    return max(100, store.wal_max_bytes // 4 // 4096)


def connect(path: Path, store: StoreSection, *, readonly: bool = False) -> sqlite3.Connection:
    """Open edge.db with the settings every connection needs."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(f"PRAGMA cache_size = -{store.cache_mb * 1024}")
    if not readonly:
        # auto_vacuum only takes effect on a brand-new file, before the first table.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {store.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {store.wal_max_bytes // 2}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {checkpoint_frames(store)}")
        conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing migrations, each in its own transaction. Returns the new version."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"edge.db has schema version {version}, this EdgeKite knows up to {SCHEMA_VERSION}"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out

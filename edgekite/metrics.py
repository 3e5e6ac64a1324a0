"""Prometheus metrics of the edge, in a registry owned by the running service (no globals).

Counters follow one vocabulary across stages (received, stored, duplicate, rejected with a
reason code from a fixed set), so a dashboard can follow an event through the pipeline.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgekite.ingest import REJECT_CODES


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "edgekite_messages_received",
            "Messages (MQTT publishes, HTTP bodies) received.",
            ["transport"],
            registry=r,
        )
        self.events_received = Counter(
            "edgekite_events_received", "Envelopes received, before validation.", ["transport"], registry=r
        )
        self.events_stored = Counter("edgekite_events_stored", "Events committed to SQLite.", registry=r)
        self.events_duplicate = Counter(
            "edgekite_events_duplicate", "Replayed event_ids: acknowledged, not stored again.", registry=r
        )
        self.events_rejected = Counter(
            "edgekite_events_rejected", "Refused input, dead-lettered.", ["reason"], registry=r
        )
        for code in REJECT_CODES:
            self.events_rejected.labels(code)
        self.clock_skew = Counter(
            "edgekite_events_clock_skew",
            "Events kept but flagged: observed_at far off.",
            ["direction"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "edgekite_commit_seconds",
            "Time of one write transaction.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_events = Histogram(
            "edgekite_batch_events",
            "Events per write transaction.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.commit_errors = Counter(
            "edgekite_commit_errors", "Write transactions that failed and were retried.", registry=r
        )
        self.rollup_errors = Counter(
            "edgekite_rollup_errors", "Batches stored without rollups after an unexpected error.", registry=r
        )
        self.queue_depth = Gauge(
            "edgekite_ingest_queue_depth", "Messages waiting for the writer.", registry=r
        )
        self.queue_bytes = Gauge("edgekite_ingest_queue_bytes", "Bytes waiting for the writer.", registry=r)
        self.retention_deleted = Counter(
            "edgekite_retention_deleted", "Events deleted by retention.", ["reason"], registry=r
        )
        self.db_bytes = Gauge("edgekite_db_bytes", "Size of edge.db (live pages).", registry=r)
        self.wal_bytes = Gauge("edgekite_wal_bytes", "Size of the WAL file.", registry=r)
        self.wal_checkpoint_seconds = Counter(
            "edgekite_wal_checkpoint_seconds",
            "Time spent copying the WAL back into edge.db, by the thread that did it (background, "
            "or the writer itself, between batches). With store.background_checkpoint off, SQLite's "
            "automatic checkpoints inside commits are not counted here.",
            ["by"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edgekite_mqtt_connected", "1 while the bridge holds a broker session.", registry=r
        )
        self.mqtt_reconnects = Counter("edgekite_mqtt_connects", "Successful broker connections.", registry=r)
        self.bridge_restarts = Counter(
            "edgekite_bridge_process_restarts",
            "Times the bridge's child process died and was started again (its unacknowledged "
            "messages are redelivered by the broker).",
            registry=r,
        )
        # -- forwarding to the hub
        self.sync_backlog = Gauge(
            "edgekite_sync_backlog_events", "Events the hub has not acknowledged.", registry=r
        )
        self.sync_oldest_age = Gauge(
            "edgekite_sync_oldest_unsynced_age_seconds", "Age of the oldest unacknowledged event.", registry=r
        )
        self.sync_last_success = Gauge(
            "edgekite_sync_last_success_timestamp_seconds",
            "When the hub last acknowledged a batch.",
            registry=r,
        )
        self.sync_connected = Gauge("edgekite_sync_connected", "1 while the hub transport is up.", registry=r)
        self.sync_in_flight = Gauge(
            "edgekite_sync_in_flight_batches", "Batches sent, not acknowledged.", registry=r
        )
        self.sync_batches = Counter(
            "edgekite_sync_batches",
            "Batch outcomes: sent, ok, duplicate, retry, refused, timeout, failed.",
            ["result"],
            registry=r,
        )
        for result in ("sent", "ok", "duplicate", "retry", "refused", "timeout", "failed"):
            self.sync_batches.labels(result)
        self.sync_events = Counter("edgekite_sync_events_synced", "Events the hub acknowledged.", registry=r)
        self.sync_events_rejected = Counter(
            "edgekite_sync_events_rejected_by_hub",
            "Events the hub refused (kept in its dead letters).",
            registry=r,
        )
        self.sync_withheld = Counter(
            "edgekite_sync_events_withheld",
            "Events kept on the edge by the privacy policy.",
            ["reason"],
            registry=r,
        )
        for reason in ("pii", "short"):
            self.sync_withheld.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)

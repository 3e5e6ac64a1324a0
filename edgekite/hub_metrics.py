"""Prometheus metrics of the hub, in a registry owned by the running hub (no globals).

The vocabulary follows the edge's (received, ok, duplicate, refused/rejected with a reason
from a fixed set), so a dashboard can follow a batch from the edge's outbox into ClickHouse.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgekite.ingest import REJECT_CODES

BATCH_REFUSE_REASONS = (
    "too_large",
    "bad_compression",
    "invalid_json",
    "invalid_batch",
    "bad_topic",
    "edge_mismatch",
    "unknown_edge",
    "bad_signature",
    "bad_key",
)
BATCH_RETRY_REASONS = ("rate_limit", "storage")
HUB_REJECT_CODES = (*REJECT_CODES, "missing_event_id", "missing_received_at")


class HubMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batches_received = Counter(
            "edgekite_hub_batches_received", "Batches received, before any check.", ["transport"], registry=r
        )
        self.batches_ok = Counter("edgekite_hub_batches_ok", "Batches stored and acknowledged.", registry=r)
        self.batches_duplicate = Counter(
            "edgekite_hub_batches_duplicate",
            "Batches already in the ledger: acknowledged again, nothing stored.",
            registry=r,
        )
        self.batches_refused = Counter(
            "edgekite_hub_batches_refused",
            "Batches refused: malformed, forged or from an unknown edge.",
            ["reason"],
            registry=r,
        )
        for reason in BATCH_REFUSE_REASONS:
            self.batches_refused.labels(reason)
        self.batches_retry = Counter(
            "edgekite_hub_batches_retry", "Batches answered 'retry'.", ["reason"], registry=r
        )
        for reason in BATCH_RETRY_REASONS:
            self.batches_retry.labels(reason)
        self.events_accepted = Counter(
            "edgekite_hub_events_accepted", "Events stored (first time their batch was seen).", registry=r
        )
        self.events_rejected = Counter(
            "edgekite_hub_events_rejected", "Events refused into the dead-letter table.", ["code"], registry=r
        )
        for code in HUB_REJECT_CODES:
            self.events_rejected.labels(code)
        self.insert_seconds = Histogram(
            "edgekite_hub_insert_seconds",
            "Time to store one batch (events, dead letters, ledger).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.edge_last_batch = Gauge(
            "edgekite_hub_edge_last_batch_timestamp_seconds",
            "When the hub last stored a batch (heartbeats included) from each edge.",
            ["edge_id"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edgekite_hub_mqtt_consumers_connected", "MQTT consumers holding a broker session.", registry=r
        )
        self.events_enriched = Counter(
            "edgekite_hub_events_enriched", "Raw events the enrichment consumer has enriched.", registry=r
        )
        self.enrich_watermark = Gauge(
            "edgekite_hub_enrich_watermark_timestamp_seconds",
            "hub_received_at of the last raw event enriched (lag = now - this).",
            registry=r,
        )
        self.enrich_errors = Counter(
            "edgekite_hub_enrich_errors", "Enrichment steps that failed and were retried.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Columns of the enriched events, shared by the enrichment service and the storage layer.

Defined here, not in hub_enrich, so the storage layer (DDL) does not import a service.
"""

from __future__ import annotations

ENRICHED_COLUMNS: dict[str, str] = {
    # carried from the raw event, so the views never join back to ``events``
    "event_id": "UUID",
    "observed_at": "DateTime64(3, 'UTC')",  # Unix ms in the output
    "edge_id": "LowCardinality(String)",
    "source_id": "LowCardinality(String)",
    "category": "LowCardinality(String)",
    "type": "LowCardinality(String)",
    # derived
    "site": "LowCardinality(String)",
    "url_host": "LowCardinality(String)",
    "url_path": "String",
    "page_title": "String",
    "referrer_host": "LowCardinality(String)",
    "referrer_source": "LowCardinality(String)",
    "channel": "LowCardinality(String)",
    "utm_source": "LowCardinality(String)",
    "utm_medium": "LowCardinality(String)",
    "utm_campaign": "LowCardinality(String)",
    "utm_term": "String",
    "utm_content": "String",
    "browser": "LowCardinality(String)",
    "browser_version": "LowCardinality(String)",
    "os": "LowCardinality(String)",
    "os_version": "LowCardinality(String)",
    "device_type": "LowCardinality(String)",
    "is_bot": "UInt8",
    "bot_name": "LowCardinality(String)",
    "country": "LowCardinality(String)",
    "region": "LowCardinality(String)",
    "city": "LowCardinality(String)",
    "visitor_id": "UInt64",
    "enrichment_version": "UInt16",
}
"""Output column -> the ClickHouse type proposed for the enriched table (in output order)."""

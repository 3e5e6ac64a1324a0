"""Raw hub rows for the analytics tests: built by hand, inserted straight into ``events``.

The tests do not go through hub ingest: they need exact timestamps (gaps of 29 and 31 minutes),
exact ``hub_received_at`` (late arrivals) and a stored ``visitor_id`` (the column the lead's
ingest migration adds; the fixture adds it with the same ``ALTER TABLE``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from edgekite.hubstore import HubStore
from edgekite.hubstore.analytics import ensure_analytics
from edgekite.hubstore.arrow import EVENTS_SCHEMA
from edgekite.visitor import site_of
from tests.hub_ingest.helpers import hub_config

MIN = 60_000
T0 = 1_717_200_000_000  # 2024-06-01 00:00:00 UTC
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FARMWATCH = "Mozilla/5.0 (X11; Linux x86_64) FarmWatch/2.0 Chrome/124.0.0.0 Safari/537.36"

VISITOR_ID_MIGRATION = "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS visitor_id UInt64 DEFAULT 0"

# The raw schema with and without the ingest's visitor_id column (whether or not arrow.py has it yet).
RAW_SCHEMA = (
    EVENTS_SCHEMA
    if "visitor_id" in EVENTS_SCHEMA.names
    else EVENTS_SCHEMA.append(pa.field("visitor_id", pa.uint64()))
)
RAW_SCHEMA_WITHOUT_VISITOR = pa.schema([f for f in RAW_SCHEMA if f.name != "visitor_id"])

_seq = 0


def eid(n: int | None = None) -> str:
    """A fresh (or numbered, reproducible) UUID text."""
    global _seq
    if n is None:
        _seq += 1
        n = _seq + 10_000_000
    return str(uuid.UUID(int=n, version=4))


def page_view(
    site: str,
    path: str,
    at: int,
    *,
    visitor: int = 0,
    ua: str = CHROME,
    ip: str = "",
    referrer: str = "",
    hub_at: int | None = None,
    edge: str = "edge-1",
    event_id: str | None = None,
    event_type: str = "page_view",
) -> dict[str, Any]:
    """One raw web row as hub ingest stores it (``data`` JSON text, ms times)."""
    data: dict[str, Any] = {
        "url": f"https://{site}.example.com{path}",
        "referrer": referrer,
        "user_agent": ua,
    }
    if ip:
        data["ip"] = ip
    return raw_row(
        category="web",
        type=event_type,
        source_id=f"{site}-web",
        source_type="browser",
        observed_at=at,
        data=data,
        metadata={"site_id": site},
        visitor_id=visitor,
        hub_at=hub_at,
        edge=edge,
        event_id=event_id,
    )


def raw_row(
    *,
    category: str,
    type: str,
    source_id: str,
    observed_at: int,
    data: dict[str, Any],
    source_type: str = "edge_device",
    metadata: dict[str, Any] | None = None,
    visitor_id: int = 0,
    hub_at: int | None = None,
    received_at: int | None = None,
    edge: str = "edge-1",
    event_id: str | None = None,
    severity: str = "info",
    incident_id: str | None = None,
) -> dict[str, Any]:
    received = received_at if received_at is not None else observed_at + 100
    return {
        "event_id": event_id or eid(),
        "edge_id": edge,
        "batch_id": "b-" + uuid.uuid4().hex[:8],
        "observed_at": observed_at,
        "received_at": received,
        "hub_received_at": hub_at if hub_at is not None else received + 1000,
        "source_type": source_type,
        "source_id": source_id,
        "category": category,
        "type": type,
        "severity": severity,
        "source_seq": None,
        "correlation_id": None,
        "session_id": None,
        "incident_id": incident_id,
        "data": orjson.dumps(data).decode(),
        "attachments": "[]",
        "source_version": None,
        "source_metadata": orjson.dumps(metadata or {}).decode(),
        "schema_version": "1.0",
        "pii": 0,
        "retention_class": "standard",
        "flags": 0,
        "visitor_id": visitor_id,
        "site": site_of(data, metadata, source_id),
    }


def insert_raw(store: HubStore, rows: Sequence[dict[str, Any]], *, with_visitor_id: bool = True) -> None:
    schema = RAW_SCHEMA if with_visitor_id else RAW_SCHEMA_WITHOUT_VISITOR
    arrays = [pa.array([r[f.name] for r in rows], type=f.type) for f in schema]
    store.insert_arrow("events", pa.Table.from_arrays(arrays, schema=schema))


def scalar(store: HubStore, sql: str, params: dict[str, Any] | None = None) -> Any:
    rows = store.query_rows(sql.replace("{db}", store.database), params)
    return rows[0][0] if rows else None


def rows(store: HubStore, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return store.query_rows(sql.replace("{db}", store.database), params)


@contextmanager
def open_store(data_dir: Path, *, visitor_id_column: bool = True) -> Iterator[HubStore]:
    """A real chDB hub store with the analytics layer (one per test module: ~1 s to open)."""
    store = HubStore(hub_config(data_dir))
    store.open()
    try:
        if visitor_id_column:
            store.command(VISITOR_ID_MIGRATION.replace("{db}", store.database))
        ensure_analytics(store)
        yield store
    finally:
        store.close()
        store.shutdown_executor()


def reset(store: HubStore) -> None:
    """Empty every table the analytics tests write (tests in a module share one store)."""
    for table in ("events", "events_enriched", "enrich_state", "salts"):
        store.command(f"TRUNCATE TABLE {store.database}.{table}")

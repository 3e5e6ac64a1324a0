"""Stored rows back to envelopes: what the API shows and what the edge forwards to the hub."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson

from edgekite.ingest import FLAG_SKEW_FUTURE, FLAG_SKEW_PAST

# Column order every reader selects, so row_to_event can index by position (hot path).
EVENT_COLUMNS = (
    "event_id, observed_at, received_at, source_type, source_id, source_seq, category, type, severity, "
    "correlation_id, payload_json, attachments_json, pii, retention_class, meta_json, flags, synced"
)

Decode = Callable[[Any], str | None]


def _json(decode: Decode, value: Any) -> Any:
    text = decode(value)
    return None if text is None else orjson.loads(text)


def flag_names(flags: int) -> list[str]:
    names = []
    if flags & FLAG_SKEW_FUTURE:
        names.append("clock_skew_future")
    if flags & FLAG_SKEW_PAST:
        names.append("clock_skew_past")
    return names


def row_to_event(row: tuple[Any, ...], decode: Decode) -> dict[str, Any]:
    """The envelope as stored (``EVENT_COLUMNS`` order), with the edge's own fields."""
    meta = _json(decode, row[14]) or {}
    return {
        "event_id": str(UUID(bytes=bytes(row[0]))),
        "observed_at": row[1],
        "received_at": row[2],
        "source": {
            "type": row[3],
            "id": row[4],
            "version": meta.get("source_version"),
            "metadata": meta.get("source_metadata", {}),
        },
        "event": {
            "category": row[6],
            "type": row[7],
            "severity": row[8],
            "schema_version": meta.get("schema_version", "1.0"),
            "data": _json(decode, row[10]),
        },
        "correlation": {
            "correlation_id": row[9],
            "session_id": meta.get("session_id"),
            "incident_id": meta.get("incident_id"),
        },
        "attachments": _json(decode, row[11]) or [],
        "privacy": {"pii": bool(row[12]), "retention_class": row[13]},
        "sync": {"source_seq": row[5], "synced": bool(row[16])},
        "flags": flag_names(row[15]),
    }

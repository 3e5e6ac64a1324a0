"""Pure SQL builders for the read API: (sql, params) pairs, values always bound, never formatted.

Every count a user sees is deduplicated without ``FINAL`` on the events table: the fleet reads
the per-batch ledger (one row per batch, ``FINAL`` there is cheap), event lists use
``LIMIT 1 BY event_id`` so a copy not yet merged away is shown once.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

EVENT_FIELDS = (
    "toString(event_id)",
    "edge_id",
    "batch_id",
    "toUnixTimestamp64Milli(observed_at)",
    "toUnixTimestamp64Milli(received_at)",
    "toUnixTimestamp64Milli(hub_received_at)",
    "source_type",
    "source_id",
    "source_version",
    "source_metadata",
    "category",
    "type",
    "severity",
    "schema_version",
    "data",
    "correlation_id",
    "session_id",
    "incident_id",
    "attachments",
    "pii",
    "retention_class",
    "source_seq",
    "flags",
)

FLAG_NAMES = ((1, "clock_skew_future"), (2, "clock_skew_past"))


class BadCursorError(ValueError):
    pass


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(text: str, arity: int) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise BadCursorError("cursor: not a cursor this API returned") from None
    if type(values) is not list or len(values) != arity:
        raise BadCursorError("cursor: not a cursor this API returned")
    return values


@dataclass(frozen=True)
class EventFilter:
    edge_id: str | None = None
    source_id: str | None = None
    category: str | None = None
    type: str | None = None
    severity: tuple[str, ...] = ()
    from_ms: int | None = None
    to_ms: int | None = None
    q: str | None = None


def fleet_sql(db: str) -> str:
    # FINAL on the ledger collapses a batch stored twice (e.g. two hub workers raced on it).
    return f"""SELECT edge_id, sum(events), toUnixTimestamp64Milli(max(hub_received_at)),
    argMax(backlog, hub_received_at), countIf(count > 0), sum(rejected)
FROM {db}.batches FINAL GROUP BY edge_id ORDER BY edge_id"""


def events_sql(
    db: str, f: EventFilter, limit: int, cursor: tuple[int, str] | None
) -> tuple[str, dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for column, value in (
        ("edge_id", f.edge_id),
        ("source_id", f.source_id),
        ("category", f.category),
        ("type", f.type),
    ):
        if value is not None:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    if f.severity:
        where.append("severity IN {severity:Array(String)}")
        params["severity"] = list(f.severity)
    if f.from_ms is not None:
        where.append("observed_at >= fromUnixTimestamp64Milli({from_ms:Int64}, 'UTC')")
        params["from_ms"] = f.from_ms
    if f.to_ms is not None:
        where.append("observed_at < fromUnixTimestamp64Milli({to_ms:Int64}, 'UTC')")
        params["to_ms"] = f.to_ms
    if f.q:
        where.append("positionCaseInsensitive(data, {q:String}) > 0")
        params["q"] = f.q
    if cursor is not None:
        where.append(
            "(observed_at, event_id) < (fromUnixTimestamp64Milli({c_t:Int64}, 'UTC'), toUUID({c_id:String}))"
        )
        params["c_t"], params["c_id"] = cursor
    sql = (
        f"SELECT {', '.join(EVENT_FIELDS)} FROM {db}.events"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY observed_at DESC, event_id DESC LIMIT 1 BY event_id LIMIT {limit:UInt32}"
    )
    return sql, params


def event_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row back into the envelope, plus the hub's fields. JSON columns are passed
    through as fragments (already JSON text), not parsed and re-encoded."""
    (
        event_id, edge_id, batch_id, observed_at, received_at, hub_received_at, source_type, source_id,
        source_version, source_metadata, category, etype, severity, schema_version, data, correlation_id,
        session_id, incident_id, attachments, pii, retention_class, source_seq, flags,
    ) = row  # fmt: skip
    correlation = None
    if correlation_id is not None or session_id is not None or incident_id is not None:
        correlation = {
            "correlation_id": correlation_id,
            "session_id": session_id,
            "incident_id": incident_id,
        }
    return {
        "event_id": event_id,
        "observed_at": observed_at,
        "received_at": received_at,
        "source": {
            "type": source_type,
            "id": source_id,
            "version": source_version,
            "metadata": orjson.Fragment(source_metadata or "{}"),
        },
        "event": {
            "category": category,
            "type": etype,
            "severity": severity,
            "schema_version": schema_version,
            "data": orjson.Fragment(data or "{}"),
        },
        "correlation": correlation,
        "attachments": orjson.Fragment(attachments or "[]"),
        "privacy": {"pii": bool(pii), "retention_class": retention_class},
        "sync": {"source_seq": source_seq},
        "flags": [name for bit, name in FLAG_NAMES if flags & bit],
        "edge_id": edge_id,
        "batch_id": batch_id,
        "hub_received_at": hub_received_at,
    }


def dead_letters_sql(
    db: str, edge_id: str | None, limit: int, cursor: list[Any] | None
) -> tuple[str, dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if edge_id is not None:
        where.append("edge_id = {edge_id:String}")
        params["edge_id"] = edge_id
    if cursor is not None:
        where.append(
            "(hub_received_at, edge_id, batch_id, event_index) < "
            "(fromUnixTimestamp64Milli({c_t:Int64}, 'UTC'), {c_e:String}, {c_b:String}, {c_i:UInt32})"
        )
        params["c_t"], params["c_e"], params["c_b"], params["c_i"] = cursor
    sql = (
        "SELECT toUnixTimestamp64Milli(hub_received_at), edge_id, batch_id, event_index, event_id, code, "
        f"reason, payload FROM {db}.dead_letter"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY hub_received_at DESC, edge_id DESC, batch_id DESC, event_index DESC LIMIT {limit:UInt32}"
    )
    return sql, params

"""Arrow schemas of the hub's tables: columns built as plain lists become typed Arrow tables.

Inserting Arrow is ~3x faster than JSON text on chDB (DESIGN.md), and the same table goes to a
ClickHouse server through clickhouse-connect. Times are Arrow timestamps in ms (UTC), so no
backend guesses whether an integer means seconds or milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from edgekite.hubstore.schema import BATCH_COLUMNS, DEAD_LETTER_COLUMNS, EVENT_COLUMNS, FLEET_DAYS_COLUMNS

_MS = pa.timestamp("ms", tz="UTC")
_S = pa.string()

EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", _S),
        ("edge_id", _S),
        ("batch_id", _S),
        ("observed_at", _MS),
        ("received_at", _MS),
        ("hub_received_at", _MS),
        ("source_type", _S),
        ("source_id", _S),
        ("category", _S),
        ("type", _S),
        ("severity", _S),
        ("source_seq", pa.uint64()),
        ("correlation_id", _S),
        ("session_id", _S),
        ("incident_id", _S),
        ("data", _S),
        ("attachments", _S),
        ("source_version", _S),
        ("source_metadata", _S),
        ("schema_version", _S),
        ("pii", pa.uint8()),
        ("retention_class", _S),
        ("flags", pa.uint8()),
        ("visitor_id", pa.uint64()),
        ("site", _S),
    ]
)

BATCHES_SCHEMA = pa.schema(
    [
        ("edge_id", _S),
        ("batch_id", _S),
        ("first_seq", pa.uint64()),
        ("last_seq", pa.uint64()),
        ("count", pa.uint32()),
        ("events", pa.uint32()),
        ("rejected", pa.uint32()),
        ("backlog", pa.uint64()),
        ("withheld", _S),
        ("edge_created_at", _MS),
        ("hub_received_at", _MS),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("hub_received_at", _MS),
        ("edge_id", _S),
        ("batch_id", _S),
        ("event_index", pa.uint32()),
        ("event_id", _S),
        ("code", _S),
        ("reason", _S),
        ("payload", _S),
    ]
)

FLEET_DAYS_SCHEMA = pa.schema(
    [
        ("definition", _S),
        ("events_table", _S),
        ("edge_id", _S),
        ("hub_day", pa.int64()),
        ("rows", _S),
        ("computed_ms", pa.int64()),
    ]
)

assert tuple(EVENTS_SCHEMA.names) == EVENT_COLUMNS
assert tuple(BATCHES_SCHEMA.names) == BATCH_COLUMNS
assert tuple(DEAD_LETTER_SCHEMA.names) == DEAD_LETTER_COLUMNS
assert tuple(FLEET_DAYS_SCHEMA.names) == FLEET_DAYS_COLUMNS


def table_from_columns(schema: pa.Schema, columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """One typed Arrow table from a dict of equal-length Python lists (the hot path's output)."""
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def table_from_rows(schema: pa.Schema, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """For the few-row tables (ledger, dead letters): rows in schema order."""
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.Table.from_arrays(
        [pa.array(list(c), type=f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
    )

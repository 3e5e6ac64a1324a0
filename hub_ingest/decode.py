"""Pure: a batch's envelopes become column lists for the ``events`` table, plus rejections.

Hub input is validated exactly like edge input (:func:`edgekite.ingest.envelope_to_row`, the
same fast path and pydantic fallback), because an edge is one more producer the hub should not
trust blindly. The hot path appends to plain lists (one per column); building Arrow arrays from
lists is far cheaper than from per-row objects.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from uuid import UUID

import orjson

from edgekite.config import LimitsSection
from edgekite.envelope import parse_timestamp
from edgekite.hubstore.schema import EVENT_COLUMNS
from edgekite.ingest import Rejection, envelope_to_row, shape_cannot_fail
from edgekite.sync_protocol import BatchHeader, RejectedEvent
from edgekite.visitor import DailySalts, normalise_ip, site_of, truncate_ip

# The canonical text form; anything else a UUID parser accepts is re-rendered from the bytes.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class DeadLetter(NamedTuple):
    event_index: int
    event_id: str | None
    code: str
    reason: str
    payload: str


class DecodedBatch(NamedTuple):
    columns: dict[str, list[Any]]
    accepted: int  # distinct events in ``columns``
    rejected: list[RejectedEvent]
    dead_letters: list[DeadLetter]
    duplicates_in_batch: int  # an event_id seen earlier in the same batch (kept once)


def _cut(raw: bytes, max_bytes: int) -> str:
    return raw[:max_bytes].decode("utf-8", "replace")


EDGE_HASH_PREFIX = "hmac256:"  # edge_bridge.sync_batch.keyed_hash's output


def visitor_and_private_data(
    row_data: Any,
    source_metadata: Any,
    source_id: str,
    observed_at: int,
    hub_received_at: int,
    salts: DailySalts | None,
    ip_mode: str,
    with_visitor: bool = True,
) -> tuple[int, str | None]:
    """A web event's cookieless visitor id, and any event's data with the raw IP truncated or dropped.

    Computed here, before anything is stored, because it needs the full address and the day's
    salt, and salts are deleted: afterwards neither the address nor the id can be recovered.
    Returns (visitor_id or 0, new data JSON or None when unchanged).
    """
    if type(row_data) is not dict:
        return 0, None
    ip = row_data.get("ip")
    if type(ip) is not str or not ip:
        return 0, None
    ua = row_data.get("user_agent") or row_data.get("ua") or ""
    site = site_of(row_data, source_metadata, source_id)
    address = normalise_ip(ip)
    # An edge with sync.pii = "hash" sends a keyed hash instead of the address: not an address,
    # stable per visitor, so it is kept and still counts visitors. Anything else is dropped.
    identity = address or (ip if ip.startswith(EDGE_HASH_PREFIX) else "")
    vid = 0
    if salts is not None and identity and with_visitor:
        vid = salts.visitor_id(site, identity, ua if type(ua) is str else "", observed_at, hub_received_at)
    if identity and not address:
        return vid, None
    private = dict(row_data)
    if ip_mode == "drop" or not address:
        del private["ip"]
    else:
        private["ip"] = truncate_ip(address)
    return vid, orjson.dumps(private).decode()


def decode_events(
    header: BatchHeader,
    events: list[Any],
    *,
    hub_received_at: int,
    limits: LimitsSection,
    dead_letter_max_bytes: int,
    salts: DailySalts | None = None,
    ip_mode: str = "truncate",
) -> DecodedBatch:
    """Validate every envelope; good ones become columns, bad ones dead letters with a reason.

    Each envelope must carry ``event_id`` and ``received_at``: the edge fills both, and the hub
    must not invent either (a minted id would defeat deduplication of a resend).
    """
    event_id: list[str] = []
    observed_at: list[int] = []
    received_at_col: list[int] = []
    source_type: list[str] = []
    source_id: list[str] = []
    category: list[str] = []
    etype: list[str] = []
    severity: list[str] = []
    source_seq: list[int | None] = []
    correlation_id: list[str | None] = []
    session_id: list[str | None] = []
    incident_id: list[str | None] = []
    data: list[str] = []
    attachments: list[str] = []
    source_version: list[str | None] = []
    source_metadata: list[str] = []
    schema_version: list[str] = []
    pii: list[int] = []
    retention_class: list[str] = []
    flags: list[int] = []
    visitor: list[int] = []
    site: list[str] = []

    rejected: list[RejectedEvent] = []
    dead: list[DeadLetter] = []
    seen: set[bytes] = set()
    duplicates = 0
    dumps = orjson.dumps

    def reject(index: int, eid: Any, code: str, reason: str, raw: bytes | None, obj: Any) -> None:
        eid_text = eid if type(eid) is str and len(eid) <= 64 else None
        rejected.append(RejectedEvent(index=index, event_id=eid_text, code=code, reason=reason))
        if raw is None:
            try:
                raw = dumps(obj)
            except (TypeError, orjson.JSONEncodeError):
                raw = b'"<not re-encodable>"'
        dead.append(DeadLetter(index, eid_text, code, reason, _cut(raw, dead_letter_max_bytes)))

    for i, obj in enumerate(events):
        if type(obj) is not dict:
            reject(i, None, "not_an_envelope", f"expected a JSON object, got {type(obj).__name__}", None, obj)
            continue
        eid = obj.get("event_id")
        if type(eid) is not str:
            reject(i, None, "missing_event_id", "event_id: the edge must send every event's id", None, obj)
            continue
        ra = obj.get("received_at")
        if ra is None:
            reject(i, eid, "missing_received_at", "received_at: the edge must fill it", None, obj)
            continue
        try:
            received_at = parse_timestamp(ra)
        except ValueError as exc:
            reject(i, eid, "invalid_envelope", f"received_at: {exc}", None, obj)
            continue
        # Re-encoding one envelope (C, ~1 µs) lets a byte count prove the shape limits hold,
        # which skips the Python walk of check_shape for ordinary events (it was the top cost).
        raw = dumps(obj)
        row = envelope_to_row(
            obj,
            topic_source_id=None,
            received_at=received_at,
            limits=limits,
            require_source_match=False,
            index=i,
            raw=raw,
            shape_checked=shape_cannot_fail(raw, limits),
            with_facts=False,
        )
        if type(row) is Rejection:
            reject(i, eid, row.code, row.detail, row.raw, obj)
            continue
        assert not isinstance(row, Rejection)
        if row.event_id in seen:
            duplicates += 1
            continue
        seen.add(row.event_id)
        src = obj["source"]
        ev = obj["event"]
        corr = obj.get("correlation")
        event_id.append(eid.lower() if _CANONICAL_UUID.fullmatch(eid) else str(UUID(bytes=row.event_id)))
        observed_at.append(row.observed_at)
        received_at_col.append(received_at)
        source_type.append(row.source_type)
        source_id.append(row.source_id)
        category.append(row.category)
        etype.append(row.type)
        severity.append(row.severity)
        source_seq.append(row.source_seq)
        correlation_id.append(row.correlation_id)
        if corr:
            session_id.append(corr.get("session_id"))
            incident_id.append(corr.get("incident_id"))
        else:
            session_id.append(None)
            incident_id.append(None)
        vid, private = 0, None
        ev_data = ev.get("data", {})  # what the row's payload_json holds, as parsed
        if type(ev_data) is dict and "ip" in ev_data:  # any category: no raw address is stored
            vid, private = visitor_and_private_data(
                ev_data,
                src.get("metadata"),
                row.source_id,
                row.observed_at,
                hub_received_at,
                salts,
                ip_mode,
                with_visitor=row.category == "web",
            )
        visitor.append(vid)
        site.append(site_of(ev_data, src.get("metadata"), row.source_id))
        data.append(private if private is not None else row.payload_json)
        attachments.append(row.attachments_json or "[]")
        source_version.append(src.get("version"))
        meta = src.get("metadata")
        source_metadata.append(dumps(meta).decode() if meta else "{}")
        schema_version.append(ev.get("schema_version") or "1.0")
        pii.append(row.pii)
        retention_class.append(row.retention_class)
        flags.append(row.flags)

    n = len(event_id)
    columns: dict[str, list[Any]] = {
        "event_id": event_id,
        "edge_id": [header.edge_id] * n,
        "batch_id": [header.batch_id] * n,
        "observed_at": observed_at,
        "received_at": received_at_col,
        "hub_received_at": [hub_received_at] * n,
        "source_type": source_type,
        "source_id": source_id,
        "category": category,
        "type": etype,
        "severity": severity,
        "source_seq": source_seq,
        "correlation_id": correlation_id,
        "session_id": session_id,
        "incident_id": incident_id,
        "data": data,
        "attachments": attachments,
        "source_version": source_version,
        "source_metadata": source_metadata,
        "schema_version": schema_version,
        "pii": pii,
        "retention_class": retention_class,
        "flags": flags,
        "visitor_id": visitor,
        "site": site,
    }
    assert tuple(columns) == EVENT_COLUMNS
    return DecodedBatch(columns, n, rejected, dead, duplicates)

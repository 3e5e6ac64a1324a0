"""Pure batch building: stored rows → the envelopes the hub receives, after the privacy border.

The payload columns are already JSON; they are spliced in as ``orjson.Fragment`` instead of
being parsed and re-serialised, except for the PII events whose fields must be hashed or
dropped. Everything here is deterministic, so a batch rebuilt after a restart has the same
bytes under the same id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import orjson

Decode = Callable[[Any], str | None]
WithheldReason = Literal["pii", "short"]

# Column positions in a row read by outbox.read_rows: (rowid, *EVENT_COLUMNS).
_ROWID, _EID, _OBS, _RECV, _STYPE, _SID, _SEQ, _CAT, _TYPE, _SEV, _CORR = range(11)
_PAYLOAD, _ATTACH, _PII, _RETENTION, _META = 11, 12, 13, 14, 15


@dataclass(frozen=True)
class PrivacyPolicy:
    """What leaves the site (config ``sync.pii``, ``pii_fields``, ``short_retention``)."""

    pii: Literal["send", "hash", "drop", "local"] = "send"
    fields: tuple[str, ...] = ()
    key: bytes = b""
    short: Literal["send", "local"] = "send"


@dataclass
class FormedBatch:
    first_seq: int
    last_seq: int
    events_json: list[bytes] = field(default_factory=list)
    withheld: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0


def keyed_hash(key: bytes, value: Any) -> str:
    """Stable per edge key, so the hub can still count distinct values, never read them."""
    raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return "hmac256:" + hmac.new(key, raw, hashlib.sha256).hexdigest()[:32]


def apply_pii_policy(data: dict[str, Any], policy: PrivacyPolicy) -> dict[str, Any]:
    """``data`` with the policy's fields (top level or dotted paths) hashed or dropped."""
    out = dict(data)
    for path in policy.fields:
        parts = path.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                node = {}
                break
            child = dict(child)  # copy on the way down: the caller's dict stays intact
            node[part] = child
            node = child
        leaf = parts[-1]
        if leaf in node and node[leaf] is not None:
            if policy.pii == "drop":
                del node[leaf]
            else:
                node[leaf] = keyed_hash(policy.key, node[leaf])
    return out


def withheld_reason(row: Sequence[Any], policy: PrivacyPolicy) -> WithheldReason | None:
    if row[_PII] and policy.pii == "local":
        return "pii"
    if row[_RETENTION] == "short" and policy.short == "local":
        return "short"
    return None


def envelope_json(row: Sequence[Any], decode: Decode, policy: PrivacyPolicy) -> bytes:
    """One stored row as the envelope JSON the hub validates (event_id and received_at set)."""
    data_text = decode(row[_PAYLOAD]) or "{}"
    if row[_PII] and policy.pii in ("hash", "drop") and policy.fields:
        data: Any = apply_pii_policy(orjson.loads(data_text), policy)
    else:
        data = orjson.Fragment(data_text)
    meta_text = decode(row[_META])
    meta = orjson.loads(meta_text) if meta_text else {}
    source: dict[str, Any] = {"type": row[_STYPE], "id": row[_SID]}
    if "source_version" in meta:
        source["version"] = meta["source_version"]
    if meta.get("source_metadata"):
        source["metadata"] = meta["source_metadata"]
    env: dict[str, Any] = {
        "event_id": str(UUID(bytes=bytes(row[_EID]))),
        "observed_at": row[_OBS],
        "received_at": row[_RECV],
        "source": source,
        "event": {
            "category": row[_CAT],
            "type": row[_TYPE],
            "severity": row[_SEV],
            "schema_version": meta.get("schema_version", "1.0"),
            "data": data,
        },
        "privacy": {"pii": bool(row[_PII]), "retention_class": row[_RETENTION]},
    }
    session_id, incident_id = meta.get("session_id"), meta.get("incident_id")
    if row[_CORR] is not None or session_id is not None or incident_id is not None:
        env["correlation"] = {
            "correlation_id": row[_CORR],
            "session_id": session_id,
            "incident_id": incident_id,
        }
    attachments = decode(row[_ATTACH])
    if attachments:
        env["attachments"] = orjson.Fragment(attachments)
    if row[_SEQ] is not None:
        env["sync"] = {"source_seq": row[_SEQ]}
    return orjson.dumps(env)


def form_batch(
    rows: Sequence[Sequence[Any]],
    *,
    decode: Decode,
    policy: PrivacyPolicy,
    max_events: int,
    max_bytes: int,
) -> FormedBatch | None:
    """The longest prefix of ``rows`` within the limits (at least one row), as one batch.

    Withheld rows are covered by the batch's seq range, so the watermark passes them, but not
    sent; they are counted by reason.
    """
    if not rows:
        return None
    batch = FormedBatch(first_seq=int(rows[0][_ROWID]), last_seq=int(rows[0][_ROWID]))
    for row in rows:
        reason = withheld_reason(row, policy)
        if reason is not None:
            batch.withheld[reason] = batch.withheld.get(reason, 0) + 1
            batch.last_seq = int(row[_ROWID])
            continue
        if len(batch.events_json) >= max_events:
            break
        ej = envelope_json(row, decode, policy)
        if batch.events_json and batch.nbytes + len(ej) + 1 > max_bytes:
            break
        batch.events_json.append(ej)
        batch.nbytes += len(ej) + 1
        batch.last_seq = int(row[_ROWID])
    return batch


def rebuild_batch(
    rows: Sequence[Sequence[Any]], *, decode: Decode, policy: PrivacyPolicy, first_seq: int, last_seq: int
) -> FormedBatch:
    """A recorded batch's events again, from its rows (after a restart, or for a resend)."""
    batch = FormedBatch(first_seq=first_seq, last_seq=last_seq)
    for row in rows:
        reason = withheld_reason(row, policy)
        if reason is not None:
            batch.withheld[reason] = batch.withheld.get(reason, 0) + 1
            continue
        ej = envelope_json(row, decode, policy)
        batch.events_json.append(ej)
        batch.nbytes += len(ej) + 1
    return batch

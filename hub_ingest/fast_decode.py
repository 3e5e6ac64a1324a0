"""Pure: the common batch, parsed and validated in C by msgspec, into the same columns.

A batch from an edge is almost always entirely well formed: the edge validated every envelope
before storing it. For such a batch, ``orjson.loads`` plus the Python fast path of
:func:`edgekite.ingest.envelope_to_row` cost ~8.5 µs per event, most of a decode worker's time;
msgspec parses and type-checks the same document against the structs below in ~2.3 µs.

The contract is all or nothing. :func:`decode_events_fast` returns the exact
:class:`~hub_ingest.decode.DecodedBatch` that :func:`~hub_ingest.decode.decode_events` would, or
``None`` the moment anything is outside what it handles (a refused event, an odd shape, a value
the two JSON parsers read differently); the caller then runs the reference path on the whole
batch, which words every refusal. ``tests/hub_ingest/test_fast_decode.py`` holds the two paths
equal on simulator batches and on thousands of mutated ones.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson
from msgspec import Meta, Struct

from edgekite.envelope_rules import (
    ATTACHMENT_KIND_PATTERN,
    ATTACHMENT_URI_MAX,
    ATTACHMENTS_MAX,
    ENVELOPE_KEYS,
    EVENT_TYPE_PATTERN,
    SHA256_PATTERN,
    SOURCE_ID_PATTERN,
    STR_MAX,
    Category,
    RetentionClass,
    Severity,
    SourceType,
    attachment_uri_problem,
    parse_timestamp,
)
from edgekite.hubstore.schema import EVENT_COLUMNS
from edgekite.ingest import FLAG_SKEW_FUTURE, FLAG_SKEW_PAST
from edgekite.sync_protocol import BatchError, BatchHeader, decompress_batch
from hub_ingest.decode import DecodedBatch, visitor_and_private_data

if TYPE_CHECKING:
    from edgekite.config import LimitsSection
    from edgekite.visitor import DailySalts


def _whole(pattern: str) -> str:
    # msgspec matches with re.search, where "$" also matches before a final newline.
    return pattern.removesuffix("$") + r"\Z"


def _text(n: int) -> Any:
    return Annotated[str, Meta(max_length=min(n, STR_MAX))]


_Canonical = Annotated[
    str, Meta(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
]
_SourceId = Annotated[str, Meta(pattern=_whole(SOURCE_ID_PATTERN))]
_EventType = Annotated[str, Meta(pattern=_whole(EVENT_TYPE_PATTERN))]
_Kind = Annotated[str, Meta(pattern=_whole(ATTACHMENT_KIND_PATTERN))]
_Sha256 = Annotated[str, Meta(pattern=_whole(SHA256_PATTERN))]
_Timestamp = int | Annotated[str, Meta(max_length=STR_MAX)]


class _Source(Struct, forbid_unknown_fields=True):
    type: SourceType
    id: _SourceId  # the hub has no topic to take it from
    version: _text(64) | None = None  # type: ignore[valid-type]
    metadata: dict[str, Any] = {}


class _Event(Struct, forbid_unknown_fields=True):
    category: Category
    type: _EventType
    severity: Severity = "info"
    schema_version: _text(16) = "1.0"  # type: ignore[valid-type]
    data: dict[str, Any] = {}


class _Correlation(Struct, forbid_unknown_fields=True):
    correlation_id: _text(128) | None = None  # type: ignore[valid-type]
    session_id: _text(128) | None = None  # type: ignore[valid-type]
    incident_id: _text(128) | None = None  # type: ignore[valid-type]


class _Attachment(Struct, forbid_unknown_fields=True):
    kind: _Kind
    uri: _text(ATTACHMENT_URI_MAX)  # type: ignore[valid-type]
    sha256: _Sha256 | None = None
    size_bytes: Annotated[int, Meta(ge=0)] | None = None
    content_type: _text(128) | None = None  # type: ignore[valid-type]


class _Privacy(Struct, forbid_unknown_fields=True, frozen=True):
    pii: bool = False
    retention_class: RetentionClass = "standard"


class _Sync(Struct, forbid_unknown_fields=True):
    source_seq: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    synced: bool | None = None


class HubEnvelope(Struct, forbid_unknown_fields=True):
    """An envelope as an edge forwards it: ``event_id`` and ``received_at`` are required."""

    event_id: _Canonical
    received_at: _Timestamp
    source: _Source
    event: _Event
    observed_at: _Timestamp | None = None
    correlation: _Correlation | None = None
    attachments: Annotated[list[_Attachment], Meta(max_length=ATTACHMENTS_MAX)] = []
    privacy: _Privacy = _Privacy()
    sync: _Sync | None = None


class _BatchDoc(Struct, forbid_unknown_fields=True):
    events: list[HubEnvelope]
    v: Any = msgspec.UNSET
    edge_id: Any = msgspec.UNSET
    batch_id: Any = msgspec.UNSET
    first_seq: Any = msgspec.UNSET
    last_seq: Any = msgspec.UNSET
    created_at: Any = msgspec.UNSET
    count: Any = msgspec.UNSET
    backlog: Any = msgspec.UNSET
    withheld: Any = msgspec.UNSET


_HEADER_FIELDS = tuple(f for f in _BatchDoc.__struct_fields__ if f != "events")
_DOC = msgspec.json.Decoder(_BatchDoc)
_UPPER = re.compile(r"[A-F]")


# The envelope's own structure under these types: containers three deep (root, event, data),
# at most 9 keys in one object (the root), strings up to STR_MAX (a timestamp as text).
_STRUCTURE_DEPTH = 3
_STRUCTURE_KEYS = len(ENVELOPE_KEYS)


def structure_fits(limits: LimitsSection) -> bool:
    """``check_shape`` can only fail inside ``data`` or ``metadata`` under these limits."""
    return (
        limits.max_depth >= _STRUCTURE_DEPTH
        and limits.max_keys >= _STRUCTURE_KEYS
        and limits.max_string_chars >= STR_MAX
        and max(limits.max_keys, 1000) >= ATTACHMENTS_MAX
    )


def free_form_fits(encoded: bytes, limits: LimitsSection) -> bool:
    """A byte count proving ``check_shape`` passes for ``data`` or ``metadata`` (compact JSON).

    Both sit at depth 3, so their deepest container is at most at 2 + their bracket count; an
    object's keys need a colon each, a list's items a comma each, and no string or key is
    longer than the encoding. Brackets, colons and commas inside strings only raise the counts.
    """
    return (
        len(encoded) <= limits.max_string_chars
        and encoded.count(b"{") + encoded.count(b"[") + 2 <= limits.max_depth
        and encoded.count(b":") <= limits.max_keys
        and encoded.count(b",") < max(limits.max_keys, 1000)
    )


def parse_batch_fast(payload: bytes) -> tuple[BatchHeader, list[HubEnvelope]] | None:
    """Header and typed envelopes, or None: let :func:`edgekite.sync_protocol.decode_batch` judge."""
    try:
        doc = _DOC.decode(decompress_batch(payload))
        header = BatchHeader.model_validate(
            {f: v for f in _HEADER_FIELDS if (v := getattr(doc, f)) is not msgspec.UNSET}
        )
    except (BatchError, msgspec.MsgspecError, ValueError):  # pydantic's ValidationError is one
        return None
    if len(doc.events) != header.count:
        return None
    return header, doc.events


def decode_events_fast(
    header: BatchHeader,
    events: list[HubEnvelope],
    *,
    hub_received_at: int,
    limits: LimitsSection,
    salts: DailySalts | None = None,
    ip_mode: str = "truncate",
) -> DecodedBatch | None:
    """Columns for a batch in which every event is valid, as ``decode_events`` builds them."""
    try:
        return _columns(header, events, hub_received_at, limits, salts, ip_mode)
    except (ValueError, TypeError, orjson.JSONEncodeError, msgspec.MsgspecError):
        return None  # e.g. an integer beyond 64 bits, which orjson reads as a float


def _columns(
    header: BatchHeader,
    events: list[HubEnvelope],
    hub_received_at: int,
    limits: LimitsSection,
    salts: DailySalts | None,
    ip_mode: str,
) -> DecodedBatch | None:
    n_in = len(events)
    cols: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}
    event_id, observed_at, received_at_col = cols["event_id"], cols["observed_at"], cols["received_at"]
    source_type, source_id, category = cols["source_type"], cols["source_id"], cols["category"]
    etype, severity, source_seq = cols["type"], cols["severity"], cols["source_seq"]
    correlation_id, session_id, incident_id = cols["correlation_id"], cols["session_id"], cols["incident_id"]
    data_col, attachments_col = cols["data"], cols["attachments"]
    source_version, source_metadata, schema_version = (
        cols["source_version"],
        cols["source_metadata"],
        cols["schema_version"],
    )
    pii, retention_class = cols["pii"], cols["retention_class"]
    flags, visitor = cols["flags"], cols["visitor_id"]
    future_ms = limits.max_future_skew_secs * 1000
    past_ms = limits.max_past_age_days * 86_400_000
    dumps = orjson.dumps
    seen: set[str] = set()
    duplicates = 0

    if not structure_fits(limits):
        return None
    for env in events:
        eid = env.event_id.lower() if _UPPER.search(env.event_id) else env.event_id
        received_at = parse_timestamp(env.received_at)
        observed = received_at if env.observed_at is None else parse_timestamp(env.observed_at)
        attachments = []
        for a in env.attachments:
            if attachment_uri_problem(a.uri) is not None:
                return None
            item: dict[str, Any] = {"kind": a.kind, "uri": a.uri}
            if a.sha256 is not None:
                item["sha256"] = a.sha256
            if a.size_bytes is not None:
                item["size_bytes"] = a.size_bytes
            if a.content_type is not None:
                item["content_type"] = a.content_type
            attachments.append(item)
        src, ev = env.source, env.event
        data = ev.data
        payload = dumps(data)
        meta = dumps(src.metadata) if src.metadata else b"{}"
        if not (free_form_fits(payload, limits) and free_form_fits(meta, limits)):
            return None
        payload_json = payload.decode()
        attachments_json = dumps(attachments).decode() if attachments else "[]"
        meta_json = meta.decode()
        if eid in seen:
            duplicates += 1
            continue
        seen.add(eid)
        flag = 0
        if observed > received_at + future_ms:
            flag = FLAG_SKEW_FUTURE
        elif observed < received_at - past_ms:
            flag = FLAG_SKEW_PAST
        corr = env.correlation
        vid, private = 0, None
        if "ip" in data:  # any category: no raw address is stored
            vid, private = visitor_and_private_data(
                data,
                src.metadata,
                src.id,
                observed,
                hub_received_at,
                salts,
                ip_mode,
                with_visitor=ev.category == "web",
            )
        event_id.append(eid)
        observed_at.append(observed)
        received_at_col.append(received_at)
        source_type.append(src.type)
        source_id.append(src.id)
        category.append(ev.category)
        etype.append(ev.type)
        severity.append(ev.severity)
        source_seq.append(env.sync.source_seq if env.sync is not None else None)
        if corr is None:
            correlation_id.append(None)
            session_id.append(None)
            incident_id.append(None)
        else:
            correlation_id.append(corr.correlation_id)
            session_id.append(corr.session_id)
            incident_id.append(corr.incident_id)
        visitor.append(vid)
        data_col.append(private if private is not None else payload_json)
        attachments_col.append(attachments_json)
        source_version.append(src.version)
        source_metadata.append(meta_json)
        schema_version.append(ev.schema_version or "1.0")
        pii.append(int(env.privacy.pii))
        retention_class.append(env.privacy.retention_class)
        flags.append(flag)

    n = len(event_id)
    assert n + duplicates == n_in
    cols["edge_id"] = [header.edge_id] * n
    cols["batch_id"] = [header.batch_id] * n
    cols["hub_received_at"] = [hub_received_at] * n
    return DecodedBatch(cols, n, [], [], duplicates)

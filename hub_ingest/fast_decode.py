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
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
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
from edgekite.ingest import FLAG_SKEW_FUTURE, FLAG_SKEW_PAST, attachment_item
from edgekite.sync_protocol import BatchError, BatchHeader, decompress_batch
from edgekite.visitor import site_of
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


# Per-event columns in EVENT_COLUMNS order; the batch's constants are filled in at the end.
_PER_BATCH = ("edge_id", "batch_id", "hub_received_at")
_PER_EVENT = tuple(c for c in EVENT_COLUMNS if c not in _PER_BATCH)
_NO_CORRELATION = _Correlation()


def _columns(
    header: BatchHeader,
    events: list[HubEnvelope],
    hub_received_at: int,
    limits: LimitsSection,
    salts: DailySalts | None,
    ip_mode: str,
) -> DecodedBatch | None:
    if not structure_fits(limits):
        return None
    future_ms = limits.max_future_skew_secs * 1000
    past_ms = limits.max_past_age_days * 86_400_000
    dumps = orjson.dumps
    seen: set[str] = set()
    rows: list[tuple[Any, ...]] = []
    add = rows.append

    for env in events:
        eid = env.event_id.lower() if _UPPER.search(env.event_id) else env.event_id
        ra = env.received_at
        # parse_timestamp's own range check, inline for the common integer case
        received_at = ra if type(ra) is int and MIN_EPOCH_MS <= ra <= MAX_EPOCH_MS else parse_timestamp(ra)
        oa = env.observed_at
        if oa is None:
            observed = received_at
        else:
            observed = oa if type(oa) is int and MIN_EPOCH_MS <= oa <= MAX_EPOCH_MS else parse_timestamp(oa)
        attachments_json = "[]"
        if env.attachments:
            if any(attachment_uri_problem(a.uri) is not None for a in env.attachments):
                return None
            attachments = [
                attachment_item(a.kind, a.uri, a.sha256, a.size_bytes, a.content_type)
                for a in env.attachments
            ]
            attachments_json = dumps(attachments).decode()
        src, ev = env.source, env.event
        data = ev.data
        payload = dumps(data)
        if not free_form_fits(payload, limits):
            return None
        meta_json = "{}"
        if src.metadata:
            meta = dumps(src.metadata)
            if not free_form_fits(meta, limits):
                return None
            meta_json = meta.decode()
        if eid in seen:
            continue
        seen.add(eid)
        flag = 0
        if observed > received_at + future_ms:
            flag = FLAG_SKEW_FUTURE
        elif observed < received_at - past_ms:
            flag = FLAG_SKEW_PAST
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
        corr = env.correlation or _NO_CORRELATION
        privacy = env.privacy
        add((
            eid, observed, received_at, src.type, src.id, ev.category, ev.type, ev.severity,
            env.sync.source_seq if env.sync is not None else None,
            corr.correlation_id, corr.session_id, corr.incident_id,
            private if private is not None else payload.decode(),
            attachments_json, src.version, meta_json, ev.schema_version or "1.0",
            int(privacy.pii), privacy.retention_class, flag, vid, site_of(data, src.metadata, src.id),
        ))  # fmt: skip

    n = len(rows)
    per_event = zip(*rows, strict=True) if rows else ((),) * len(_PER_EVENT)
    cols: dict[str, list[Any]] = dict(zip(_PER_EVENT, map(list, per_event), strict=True))
    constants = {"edge_id": header.edge_id, "batch_id": header.batch_id, "hub_received_at": hub_received_at}
    columns = {name: cols[name] if name in cols else [constants[name]] * n for name in EVENT_COLUMNS}
    return DecodedBatch(columns, n, [], [], len(events) - n)

"""Pure decoding of inbound messages into rows for the edge store.

Everything here is a function of its arguments (bytes in, rows and rejections out) so every
transport (MQTT, HTTP, a mapped foreign topic) validates the same way and the logic is tested
without I/O. Decoding runs on the receiving thread, not the writer, so validation overlaps with
SQLite work that releases the GIL.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
import uuid_utils

from edgekite.envelope_rules import (
    ATTACHMENT_KEYS,
    ATTACHMENT_KIND_PATTERN,
    ATTACHMENT_URI_MAX,
    ATTACHMENTS_MAX,
    CATEGORIES,
    CORRELATION_KEYS,
    ENVELOPE_KEYS,
    EVENT_KEYS,
    EVENT_TYPE_PATTERN,
    PRIVACY_KEYS,
    RETENTION_CLASSES,
    SEVERITIES,
    SHA256_PATTERN,
    SOURCE_ID_PATTERN,
    SOURCE_KEYS,
    SOURCE_TYPES,
    SYNC_KEYS,
    attachment_uri_problem,
    parse_timestamp,
)
from edgekite.rollups import rollup_facts

if TYPE_CHECKING:  # pydantic is loaded only when an envelope leaves the fast path (see _fast_fields)
    from pydantic import ValidationError

    from edgekite.config import LimitsSection
    from edgekite.envelope import Envelope

FLAG_SKEW_FUTURE = 1
FLAG_SKEW_PAST = 2

# Stable namespace for ids derived from a producer's own identifiers (mapped topics).
EDGEKITE_NAMESPACE = uuid5(NAMESPACE_URL, "https://edgekite.dev/ns/event")


class EventRow(NamedTuple):
    """One validated event, in the column order of the ``events`` table."""

    event_id: bytes
    observed_at: int
    received_at: int
    source_type: str
    source_id: str
    source_seq: int | None
    category: str
    type: str
    severity: str
    correlation_id: str | None
    payload_json: str
    attachments_json: str | None
    pii: int
    retention_class: str
    meta_json: str | None
    flags: int
    # rollup_facts() of event.data, for the writer's rollups; None: work them out from
    # payload_json. Not a column (STORED_FIELDS).
    facts: tuple[Any, ...] | None = None
    # (payload_json, attachments_json, meta_json) already in their stored form (zstd with a
    # dictionary of edge.db), encoded by the HTTP decode worker; None: the writer encodes them.
    encoded_json: tuple[Any, Any, Any] | None = None


STORED_FIELDS = 16  # EventRow[:16] is what the events table stores


class Rejection(NamedTuple):
    """Why one message (index None) or one element of an array message was refused."""

    code: str
    detail: str
    position: int | None  # element of an array message, None for the whole message
    raw: bytes


class Decoded(NamedTuple):
    events: list[EventRow]
    rejections: list[Rejection]
    ids_generated: bool  # some event_id was minted here, so a redelivery cannot be told by id


REJECT_CODES = (
    "too_large",
    "invalid_json",
    "not_an_envelope",
    "too_many_events",
    "too_deep",
    "too_big",
    "invalid_envelope",
    "source_mismatch",
    "bad_topic",
    "mapping_failed",
)


def new_event_id() -> bytes:
    """A UUIDv7: time-ordered, so edge-minted ids keep B-tree inserts local."""
    return uuid_utils.uuid7().bytes


def derived_event_id(*parts: str) -> bytes:
    """A stable id from a producer's own identifiers, so its retries deduplicate."""
    return uuid5(EDGEKITE_NAMESPACE, "\x1f".join(parts)).bytes


def check_shape(obj: Any, limits: LimitsSection) -> tuple[str, str] | None:
    """Bound nesting depth, object width, list length and string length, iteratively.

    Iterative on purpose: a 1,000-deep document must produce an error, not a RecursionError.
    """
    max_depth, max_keys, max_chars = limits.max_depth, limits.max_keys, limits.max_string_chars
    max_items = max(max_keys, 1000)
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return "too_deep", f"JSON nested deeper than {max_depth} levels"
        if type(node) is dict:
            if len(node) > max_keys:
                return "too_big", f"an object has {len(node)} keys (max {max_keys})"
            for key, value in node.items():
                if len(key) > max_chars:
                    return "too_big", f"a key is longer than {max_chars} characters"
                tv = type(value)
                if tv is dict or tv is list:
                    stack.append((value, depth + 1))
                elif tv is str and len(value) > max_chars:
                    return "too_big", f"field {key[:40]!r} is longer than {max_chars} characters"
        elif type(node) is list:
            if len(node) > max_items:
                return "too_big", f"a list has {len(node)} items (max {max_items})"
            for value in node:
                tv = type(value)
                if tv is dict or tv is list:
                    stack.append((value, depth + 1))
                elif tv is str and len(value) > max_chars:
                    return "too_big", f"a list item is longer than {max_chars} characters"
    return None


def shape_cannot_fail(payload: bytes, limits: LimitsSection) -> bool:
    """A byte count that proves :func:`check_shape` would pass, so the walk can be skipped.

    Nesting needs a bracket per level, an object's keys need a colon each, a list's items a
    comma each, and no string is longer than the message; brackets, colons and commas inside
    strings only make the counts larger, so the proof stays sound.
    """
    return (
        len(payload) <= limits.max_string_chars
        and payload.count(b"{") + payload.count(b"[") <= limits.max_depth
        and payload.count(b":") <= limits.max_keys
        and payload.count(b",") < max(limits.max_keys, 1000)
    )


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """A short, human reason: 'event.category: Input should be ...; source: Field required'."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "envelope"
        msg = err["msg"]
        if err["type"] in ("literal_error", "string_pattern_mismatch", "uuid_parsing", "value_error"):
            given = err.get("input")
            if isinstance(given, str | int | float) and not isinstance(given, bool):
                msg = f"{msg} (got {str(given)[:60]!r})"
        parts.append(f"{loc}: {msg}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_json(payload: bytes, limits: LimitsSection) -> Any | Rejection:
    if len(payload) > limits.max_message_bytes:
        return Rejection(
            "too_large", f"message is {len(payload)} bytes (max {limits.max_message_bytes})", None, payload
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):  # orjson stops past 1024 levels
            return Rejection("too_deep", f"JSON nested deeper than {limits.max_depth} levels", None, payload)
        return Rejection("invalid_json", f"not valid JSON: {exc}", None, payload)


def message_fingerprint(topic: str | None, payload: bytes) -> bytes:
    """Identifies a redelivered copy of a message whose envelopes carried no event_id."""
    h = hashlib.blake2b(digest_size=16)
    h.update((topic or "").encode())
    h.update(b"\x00")
    h.update(payload)
    return h.digest()


class _Fields(NamedTuple):
    """The envelope after validation, whichever validator produced it."""

    event_id: bytes | None
    observed_at: int | None
    source_type: str
    source_id: str | None
    source_version: str | None
    source_metadata: dict[str, Any]
    category: str
    type: str
    severity: str
    schema_version: str
    data: dict[str, Any]
    correlation: tuple[str | None, str | None, str | None] | None
    attachments: list[dict[str, Any]]
    pii: bool
    retention_class: str
    source_seq: int | None


_TOP_KEYS = frozenset(ENVELOPE_KEYS)
_SOURCE_KEYS = frozenset(SOURCE_KEYS)
_EVENT_KEYS = frozenset(EVENT_KEYS)
_CORRELATION_KEYS = frozenset(CORRELATION_KEYS)
_ATTACHMENT_KEYS = frozenset(ATTACHMENT_KEYS)
_PRIVACY_KEYS = frozenset(PRIVACY_KEYS)
_SYNC_KEYS = frozenset(SYNC_KEYS)
_SOURCE_TYPES = frozenset(SOURCE_TYPES)
_CATEGORIES = frozenset(CATEGORIES)
_SEVERITIES = frozenset(SEVERITIES)
_RETENTION = frozenset(RETENTION_CLASSES)
_SOURCE_ID_FULL = re.compile(SOURCE_ID_PATTERN.removeprefix("^").removesuffix("$"))
_EVENT_TYPE_FULL = re.compile(EVENT_TYPE_PATTERN.removeprefix("^").removesuffix("$"))
_ATTACHMENT_KIND_FULL = re.compile(ATTACHMENT_KIND_PATTERN.removeprefix("^").removesuffix("$"))
_SHA256_FULL = re.compile(SHA256_PATTERN.removeprefix("^").removesuffix("$"))
_MAX_SEQ = 2**63 - 1


def _opt_str(value: Any, max_len: int) -> bool:
    return value is None or (type(value) is str and len(value) <= max_len)


def _fast_fields(obj: dict[str, Any]) -> _Fields | None:
    """Validate the common, well-formed envelope without pydantic (it is most of the CPU).

    Accepts a strict subset of what the pydantic model accepts and yields the same values
    (tests/edgekite/test_fast_path.py holds the two to that); anything unusual returns None and
    pydantic decides, and words the error.
    """
    if not obj.keys() <= _TOP_KEYS:
        return None
    source, event = obj.get("source"), obj.get("event")
    if type(source) is not dict or type(event) is not dict:
        return None
    if not source.keys() <= _SOURCE_KEYS or not event.keys() <= _EVENT_KEYS:
        return None
    source_type, sid = source.get("type"), source.get("id")
    if type(source_type) is not str or source_type not in _SOURCE_TYPES:
        return None
    if sid is not None and (type(sid) is not str or not _SOURCE_ID_FULL.fullmatch(sid)):
        return None
    version, metadata = source.get("version"), source.get("metadata", {})
    if not _opt_str(version, 64) or type(metadata) is not dict:
        return None
    category, etype = event.get("category"), event.get("type")
    severity, schema_version = event.get("severity", "info"), event.get("schema_version", "1.0")
    data = event.get("data", {})
    if type(category) is not str or category not in _CATEGORIES or type(data) is not dict:
        return None
    if type(etype) is not str or not _EVENT_TYPE_FULL.fullmatch(etype):
        return None
    if type(severity) is not str or severity not in _SEVERITIES:
        return None
    if type(schema_version) is not str or len(schema_version) > 16:
        return None
    event_id = obj.get("event_id")
    if event_id is not None:
        if type(event_id) is not str or len(event_id) != 36:
            return None
        try:
            # uuid_utils parses like pydantic (the Rust uuid crate: hyphens where RFC 9562 puts
            # them), ~7x faster than uuid.UUID, which also takes hyphens anywhere.
            eid: bytes | None = uuid_utils.UUID(event_id).bytes
        except ValueError:
            return None
    else:
        eid = None
    try:
        observed = obj.get("observed_at")
        observed_at = None if observed is None else parse_timestamp(observed)
        if obj.get("received_at") is not None:
            parse_timestamp(obj["received_at"])
    except ValueError:
        return None
    corr = obj.get("correlation")
    correlation = None
    if corr is not None:
        if type(corr) is not dict or not corr.keys() <= _CORRELATION_KEYS:
            return None
        cid, sess, inc = corr.get("correlation_id"), corr.get("session_id"), corr.get("incident_id")
        if not (_opt_str(cid, 128) and _opt_str(sess, 128) and _opt_str(inc, 128)):
            return None
        correlation = (cid, sess, inc)
    attachments = _fast_attachments(obj.get("attachments", []))
    if attachments is None:
        return None
    privacy = obj.get("privacy", {})
    if type(privacy) is not dict or not privacy.keys() <= _PRIVACY_KEYS:
        return None
    pii, retention = privacy.get("pii", False), privacy.get("retention_class", "standard")
    if type(pii) is not bool or type(retention) is not str or retention not in _RETENTION:
        return None
    sync = obj.get("sync")
    seq = None
    if sync is not None:
        if type(sync) is not dict or not sync.keys() <= _SYNC_KEYS:
            return None
        seq, synced = sync.get("source_seq"), sync.get("synced")
        if seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX_SEQ):
            return None
        if synced is not None and type(synced) is not bool:
            return None
    return _Fields(
        eid, observed_at, source_type, sid, version, metadata, category, etype, severity, schema_version,
        data, correlation, attachments, pii, retention, seq,
    )  # fmt: skip


def _fast_attachments(items: Any) -> list[dict[str, Any]] | None:
    """Camera events carry a thumbnail reference, so attachments have a fast path too.

    Returns the model's ``model_dump(exclude_none=True)`` of each (its field order, Nones left
    out), or None for anything the model should judge.
    """
    if type(items) is not list or len(items) > ATTACHMENTS_MAX:
        return None
    out = []
    for a in items:
        if type(a) is not dict or not a.keys() <= _ATTACHMENT_KEYS:
            return None
        kind, uri = a.get("kind"), a.get("uri")
        if type(kind) is not str or not _ATTACHMENT_KIND_FULL.fullmatch(kind):
            return None
        if type(uri) is not str or len(uri) > ATTACHMENT_URI_MAX or attachment_uri_problem(uri) is not None:
            return None
        sha, size, ctype = a.get("sha256"), a.get("size_bytes"), a.get("content_type")
        if sha is not None and (type(sha) is not str or not _SHA256_FULL.fullmatch(sha)):
            return None
        if size is not None and (type(size) is not int or size < 0):
            return None
        if not _opt_str(ctype, 128):
            return None
        out.append(attachment_item(kind, uri, sha, size, ctype))
    return out


def attachment_item(
    kind: str, uri: str, sha256: str | None, size_bytes: int | None, content_type: str | None
) -> dict[str, Any]:
    """A validated attachment as stored: the model's field order, absent fields left out."""
    item: dict[str, Any] = {"kind": kind, "uri": uri}
    if sha256 is not None:
        item["sha256"] = sha256
    if size_bytes is not None:
        item["size_bytes"] = size_bytes
    if content_type is not None:
        item["content_type"] = content_type
    return item


def _model_fields(env: Envelope) -> _Fields:
    corr = env.correlation
    return _Fields(
        env.event_id.bytes if env.event_id is not None else None,
        env.observed_at,
        env.source.type,
        env.source.id,
        env.source.version,
        env.source.metadata,
        env.event.category,
        env.event.type,
        env.event.severity,
        env.event.schema_version,
        env.event.data,
        None if corr is None else (corr.correlation_id, corr.session_id, corr.incident_id),
        [a.model_dump(exclude_none=True) for a in env.attachments],
        env.privacy.pii,
        env.privacy.retention_class,
        env.sync.source_seq if env.sync is not None else None,
    )


def envelope_to_row(
    obj: Any,
    *,
    topic_source_id: str | None,
    received_at: int,
    limits: LimitsSection,
    require_source_match: bool,
    index: int | None = None,
    raw: bytes | None = None,
    fast: bool = True,
    shape_checked: bool = False,
    with_facts: bool = True,
) -> EventRow | Rejection:
    """Validate one envelope object and turn it into an ``events`` row (with the edge's
    ``rollup_facts`` unless ``with_facts`` is off: the hub keeps no such rollups)."""

    def reject(code: str, detail: str) -> Rejection:
        return Rejection(code, detail, index, raw if raw is not None else _dump(obj))

    if type(obj) is not dict:
        return reject("not_an_envelope", f"expected a JSON object, got {type(obj).__name__}")
    if not shape_checked:
        shape = check_shape(obj, limits)
        if shape is not None:
            return reject(*shape)
    f = _fast_fields(obj) if fast else None
    if f is None:
        from pydantic import ValidationError

        from edgekite.envelope import Envelope

        try:
            f = _model_fields(Envelope.model_validate(obj))
        except ValidationError as exc:
            return reject("invalid_envelope", describe_validation_error(exc))

    source_id = f.source_id
    if topic_source_id is not None:
        if source_id is None:
            source_id = topic_source_id
        elif source_id != topic_source_id and require_source_match:
            return reject(
                "source_mismatch", f"source.id {source_id!r} does not match the topic's {topic_source_id!r}"
            )
    if source_id is None:
        return reject("invalid_envelope", "source.id: required when the transport names no source")

    observed_at = f.observed_at if f.observed_at is not None else received_at
    flags = 0
    if observed_at > received_at + limits.max_future_skew_secs * 1000:
        flags |= FLAG_SKEW_FUTURE
    elif observed_at < received_at - limits.max_past_age_days * 86_400_000:
        flags |= FLAG_SKEW_PAST

    meta: dict[str, Any] = {}
    if f.source_version is not None:
        meta["source_version"] = f.source_version
    if f.source_metadata:
        meta["source_metadata"] = f.source_metadata
    if f.schema_version != "1.0":
        meta["schema_version"] = f.schema_version
    correlation_id = None
    if f.correlation is not None:
        correlation_id, session_id, incident_id = f.correlation
        if session_id is not None:
            meta["session_id"] = session_id
        if incident_id is not None:
            meta["incident_id"] = incident_id

    try:
        payload_json = orjson.dumps(f.data).decode()
        meta_json = orjson.dumps(meta).decode() if meta else None
        attachments_json = orjson.dumps(f.attachments).decode() if f.attachments else None
    except orjson.JSONEncodeError as exc:  # only reachable from Python callers: JSON input is bounded
        return reject("invalid_envelope", f"the envelope cannot be stored as JSON: {exc}")
    return EventRow(
        f.event_id if f.event_id is not None else new_event_id(),
        observed_at,
        received_at,
        f.source_type,
        source_id,
        f.source_seq,
        f.category,
        f.type,
        f.severity,
        correlation_id,
        payload_json,
        attachments_json,
        int(f.pii),
        f.retention_class,
        meta_json,
        flags,
        rollup_facts(f.category, f.type, f.severity, f.data) if with_facts else None,
    )


def _dump_proves_shape(obj: Any, limits: LimitsSection) -> bool:
    """:func:`shape_cannot_fail` on the object serialised again.

    An element of a JSON array (an HTTP batch, an MQTT array message) has no bytes of its own
    to count, and walking it in Python cost ~10 us of the ~30 us it takes to decode an
    envelope; orjson writes it back in ~1 us. A document too deep for orjson to write is
    walked, and refused, by :func:`check_shape`.
    """
    if type(obj) is not dict:
        return False
    try:
        return shape_cannot_fail(orjson.dumps(obj), limits)
    except orjson.JSONEncodeError:
        return False


def rows_from_objects(
    objs: Iterable[Any],
    *,
    topic_source_id: str | None,
    received_at: int,
    limits: LimitsSection,
    require_source_match: bool,
    indexed: bool,
    shape_checked: bool = False,
) -> Decoded:
    events: list[EventRow] = []
    rejections: list[Rejection] = []
    generated = False
    for i, obj in enumerate(objs):
        result = envelope_to_row(
            obj,
            topic_source_id=topic_source_id,
            received_at=received_at,
            limits=limits,
            require_source_match=require_source_match,
            index=i if indexed else None,
            shape_checked=shape_checked or _dump_proves_shape(obj, limits),
        )
        if isinstance(result, Rejection):
            rejections.append(result)
        else:
            events.append(result)
            if not generated and (type(obj.get("event_id")) is not str):
                generated = True
    return Decoded(events, rejections, generated)


def decode_message(
    payload: bytes,
    *,
    topic_source_id: str | None,
    received_at: int,
    limits: LimitsSection,
    require_source_match: bool = True,
) -> Decoded:
    """Decode one message holding an envelope or a JSON array of envelopes.

    Each element of an array stands alone: a bad one is rejected with its index and the
    good ones around it are kept.
    """
    parsed = parse_json(payload, limits)
    if isinstance(parsed, Rejection):
        return Decoded([], [parsed], False)
    if type(parsed) is list:
        if not parsed:
            return Decoded([], [Rejection("not_an_envelope", "empty JSON array", None, payload)], False)
        if len(parsed) > limits.max_events_per_message:
            return Decoded(
                [],
                [
                    Rejection(
                        "too_many_events",
                        f"{len(parsed)} envelopes in one message (max {limits.max_events_per_message})",
                        None,
                        payload,
                    )
                ],
                False,
            )
        objs: list[Any] = parsed
        indexed = True
    else:
        objs = [parsed]
        indexed = False
    decoded = rows_from_objects(
        objs,
        topic_source_id=topic_source_id,
        received_at=received_at,
        limits=limits,
        require_source_match=require_source_match,
        indexed=indexed,
        shape_checked=shape_cannot_fail(payload, limits),
    )
    if not indexed and decoded.rejections:
        # A single-envelope message: dead-letter the bytes as they came, not our re-encoding.
        r = decoded.rejections[0]
        return Decoded([], [r._replace(raw=payload)], False)
    return decoded


def _dump(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # e.g. nested past orjson's own limit
        return b'"<element not re-encodable; see reason>"'


def event_id_text(event_id: bytes) -> str:
    return str(UUID(bytes=event_id))

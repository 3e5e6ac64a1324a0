"""Pure decoding of inbound messages into rows for the edge store.

Everything here is a function of its arguments (bytes in, rows and rejections out) so every
transport (MQTT, HTTP, a mapped foreign topic) validates the same way and the logic is tested
without I/O. Decoding runs on the receiving thread, not the writer, so validation overlaps with
SQLite work that releases the GIL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson
import uuid_utils
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


def envelope_to_row(
    obj: Any,
    *,
    topic_source_id: str | None,
    received_at: int,
    limits: LimitsSection,
    require_source_match: bool,
    index: int | None = None,
    raw: bytes | None = None,
) -> EventRow | Rejection:
    """Validate one envelope object and turn it into an ``events`` row."""

    def reject(code: str, detail: str) -> Rejection:
        return Rejection(code, detail, index, raw if raw is not None else _dump(obj))

    if type(obj) is not dict:
        return reject("not_an_envelope", f"expected a JSON object, got {type(obj).__name__}")
    shape = check_shape(obj, limits)
    if shape is not None:
        return reject(*shape)
    try:
        env = Envelope.model_validate(obj)
    except ValidationError as exc:
        return reject("invalid_envelope", describe_validation_error(exc))

    source = env.source
    source_id = source.id
    if topic_source_id is not None:
        if source_id is None:
            source_id = topic_source_id
        elif source_id != topic_source_id and require_source_match:
            return reject(
                "source_mismatch", f"source.id {source_id!r} does not match the topic's {topic_source_id!r}"
            )
    if source_id is None:
        return reject("invalid_envelope", "source.id: required when the transport names no source")

    observed_at = env.observed_at if env.observed_at is not None else received_at
    flags = 0
    if observed_at > received_at + limits.max_future_skew_secs * 1000:
        flags |= FLAG_SKEW_FUTURE
    elif observed_at < received_at - limits.max_past_age_days * 86_400_000:
        flags |= FLAG_SKEW_PAST

    body = env.event
    meta: dict[str, Any] = {}
    if source.version is not None:
        meta["source_version"] = source.version
    if source.metadata:
        meta["source_metadata"] = source.metadata
    if body.schema_version != "1.0":
        meta["schema_version"] = body.schema_version
    corr = env.correlation
    correlation_id = None
    if corr is not None:
        correlation_id = corr.correlation_id
        if corr.session_id is not None:
            meta["session_id"] = corr.session_id
        if corr.incident_id is not None:
            meta["incident_id"] = corr.incident_id

    return EventRow(
        env.event_id.bytes if env.event_id is not None else new_event_id(),
        observed_at,
        received_at,
        source.type,
        source_id,
        env.sync.source_seq if env.sync is not None else None,
        body.category,
        body.type,
        body.severity,
        correlation_id,
        orjson.dumps(body.data).decode(),
        orjson.dumps([a.model_dump(exclude_none=True) for a in env.attachments]).decode()
        if env.attachments
        else None,
        int(env.privacy.pii),
        env.privacy.retention_class,
        orjson.dumps(meta).decode() if meta else None,
        flags,
    )


def rows_from_objects(
    objs: Iterable[Any],
    *,
    topic_source_id: str | None,
    received_at: int,
    limits: LimitsSection,
    require_source_match: bool,
    indexed: bool,
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

"""The envelope contract: what producers may send, what the edge fills in, what it refuses."""

from __future__ import annotations

import uuid

import orjson
import pytest

from edgekite import envelope, envelope_rules
from edgekite.config import LimitsSection
from edgekite.envelope import json_schema, parse_timestamp
from edgekite.ingest import (
    FLAG_SKEW_FUTURE,
    FLAG_SKEW_PAST,
    EventRow,
    Rejection,
    decode_message,
    envelope_to_row,
)

NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z
LIMITS = LimitsSection()


def full_envelope(**over: object) -> dict[str, object]:
    env: dict[str, object] = {
        "event_id": "550e8400-e29b-41d4-a716-446655440000",
        "observed_at": "2026-09-21T14:13:19.500Z",
        "received_at": "2020-01-01T00:00:00Z",
        "source": {
            "type": "edge_device",
            "id": "cam-barn-01",
            "version": "1.2.3",
            "metadata": {"site_id": "farm-17"},
        },
        "event": {
            "category": "iot",
            "type": "person_detected",
            "severity": "warn",
            "schema_version": "1.1",
            "data": {"camera_id": "barn", "confidence": 0.94, "bbox": {"x": 1, "y": 2, "w": 3, "h": 4}},
        },
        "correlation": {"correlation_id": "c-1", "session_id": "s-1", "incident_id": "i-1"},
        "attachments": [
            {"kind": "thumbnail", "uri": "file:///media/a.jpg", "sha256": "ab" * 32, "size_bytes": 45000}
        ],
        "privacy": {"pii": True, "retention_class": "long"},
        "sync": {"synced": False, "source_seq": 12345},
    }
    env.update(over)
    return env


def to_row(obj: object, topic_source: str | None = "cam-barn-01", **kw: object) -> EventRow | Rejection:
    return envelope_to_row(
        obj,
        topic_source_id=topic_source,
        received_at=NOW,
        limits=LIMITS,
        require_source_match=True,
        **kw,  # type: ignore[arg-type]
    )


def test_full_envelope_maps_to_every_column() -> None:
    row = to_row(full_envelope())
    assert isinstance(row, EventRow)
    assert row.event_id == uuid.UUID("550e8400-e29b-41d4-a716-446655440000").bytes
    assert row.observed_at == NOW - 500
    assert row.received_at == NOW, "received_at is always the edge's clock"
    assert (row.source_type, row.source_id, row.source_seq) == ("edge_device", "cam-barn-01", 12345)
    assert (row.category, row.type, row.severity) == ("iot", "person_detected", "warn")
    assert row.correlation_id == "c-1"
    assert orjson.loads(row.payload_json) == {
        "camera_id": "barn",
        "confidence": 0.94,
        "bbox": {"x": 1, "y": 2, "w": 3, "h": 4},
    }
    assert orjson.loads(row.attachments_json or "") == [
        {"kind": "thumbnail", "uri": "file:///media/a.jpg", "sha256": "ab" * 32, "size_bytes": 45000}
    ]
    assert (row.pii, row.retention_class, row.flags) == (1, "long", 0)
    assert orjson.loads(row.meta_json or "") == {
        "source_version": "1.2.3",
        "source_metadata": {"site_id": "farm-17"},
        "schema_version": "1.1",
        "session_id": "s-1",
        "incident_id": "i-1",
    }


def test_minimal_form_is_filled_in() -> None:
    row = to_row({"source": {"type": "edge_device"}, "event": {"category": "iot", "type": "motion"}})
    assert isinstance(row, EventRow)
    assert uuid.UUID(bytes=row.event_id).version == 7
    assert row.source_id == "cam-barn-01", "source id comes from the topic"
    assert row.observed_at == row.received_at == NOW
    assert (row.severity, row.retention_class, row.pii, row.payload_json) == ("info", "standard", 0, "{}")
    assert row.source_seq is None, "the writer assigns the per-source sequence"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_790_000_000_123, 1_790_000_000_123),
        ("1790000000123", 1_790_000_000_123),
        ("2026-09-21T14:13:20Z", NOW),
        ("2026-09-21T16:13:20+02:00", NOW),
        ("2026-09-21T14:13:20", NOW),  # naive means UTC
        ("2026-09-21 14:13:20.250Z", NOW + 250),
    ],
)
def test_timestamps_accept_iso_and_epoch_ms(value: object, expected: int) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "", True, [1], "2026-13-45T00:00:00Z", -5, 10**17])
def test_unparseable_timestamps_are_refused(value: object) -> None:
    result = to_row(full_envelope(observed_at=value))
    assert isinstance(result, Rejection)
    assert result.code == "invalid_envelope"
    assert "observed_at" in result.detail


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"event": {"category": "weather", "type": "x"}}, "event.category"),
        ({"event": {"category": "iot", "type": "x", "severity": "fatal"}}, "event.severity"),
        ({"source": {"type": "toaster"}}, "source.type"),
        ({"privacy": {"retention_class": "forever"}}, "privacy.retention_class"),
        ({"event": {"category": "iot"}}, "event.type"),
        ({"event": {"category": "iot", "type": "has space"}}, "event.type"),
        ({"event": {"category": "iot", "type": "x", "data": "not an object"}}, "event.data"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"unexpected": 1}, "unexpected"),
        ({"source": {"type": "server", "colour": "red"}}, "source.colour"),
        ({"sync": {"source_seq": "many"}}, "sync.source_seq"),
    ],
)
def test_invalid_envelopes_are_refused_with_the_field_named(patch: dict[str, object], field: str) -> None:
    env = full_envelope()
    env.pop("source") if "source" in patch else None
    env.update(patch)
    if "source" not in env:
        env["source"] = {"type": "edge_device"}
    result = to_row(env)
    assert isinstance(result, Rejection), result
    assert result.code == "invalid_envelope"
    assert field in result.detail


def test_missing_source_and_event_are_required() -> None:
    result = to_row({"event_id": str(uuid.uuid4())})
    assert isinstance(result, Rejection)
    assert "source: Field required" in result.detail
    assert "event: Field required" in result.detail


@pytest.mark.parametrize(
    "attachment",
    [
        {"kind": "thumbnail", "uri": "data:image/jpeg;base64,/9j/4AAQ"},
        {"kind": "thumbnail", "uri": "DATA:image/png;base64,AAAA"},
        {"kind": "thumbnail", "uri": "file:///a.jpg", "bytes": "/9j/4AAQSkZJRg"},
        {"kind": "thumbnail", "uri": "file:///a.jpg", "sha256": "xyz"},
        {"kind": "thumbnail", "uri": "javascript:alert(1)"},
        {"kind": "thumbnail", "uri": "file:///a.jpg", "size_bytes": -1},
    ],
)
def test_attachments_are_references_only(attachment: dict[str, object]) -> None:
    result = to_row(full_envelope(attachments=[attachment]))
    assert isinstance(result, Rejection)
    assert "attachments.0" in result.detail


def test_source_id_must_match_the_topic() -> None:
    result = to_row(full_envelope(), topic_source="cam-gate-02")
    assert isinstance(result, Rejection)
    assert result.code == "source_mismatch"
    lenient = envelope_to_row(
        full_envelope(), topic_source_id="gw-1", received_at=NOW, limits=LIMITS, require_source_match=False
    )
    assert isinstance(lenient, EventRow) and lenient.source_id == "cam-barn-01"


def test_http_transport_needs_source_id() -> None:
    env = full_envelope(source={"type": "server"})
    result = to_row(env, topic_source=None)
    assert isinstance(result, Rejection) and "source.id" in result.detail


def test_clock_skew_is_kept_but_flagged() -> None:
    ahead = to_row(full_envelope(observed_at=NOW + 3_600_000))
    behind = to_row(full_envelope(observed_at=NOW - 400 * 86_400_000))
    fine = to_row(full_envelope(observed_at=NOW + 60_000))
    assert isinstance(ahead, EventRow) and ahead.flags == FLAG_SKEW_FUTURE
    assert isinstance(behind, EventRow) and behind.flags == FLAG_SKEW_PAST
    assert isinstance(fine, EventRow) and fine.flags == 0


@pytest.mark.parametrize("depth", [1000, 5000])
def test_deep_nesting_is_refused_without_recursion_error(depth: int) -> None:
    data = b'{"a":' * depth + b"1" + b"}" * depth
    payload = b'{"source":{"type":"edge_device"},"event":{"category":"iot","type":"x","data":' + data + b"}}"
    decoded = decode_message(payload, topic_source_id="cam-barn-01", received_at=NOW, limits=LIMITS)
    assert decoded.events == []
    assert [r.code for r in decoded.rejections] == ["too_deep"]
    assert "deeper than" in decoded.rejections[0].detail


def test_sizes_are_bounded() -> None:
    big = decode_message(
        b"[" + b" " * (LIMITS.max_message_bytes + 1) + b"]",
        topic_source_id="s",
        received_at=NOW,
        limits=LIMITS,
    )
    assert [r.code for r in big.rejections] == ["too_large"]
    long_string = full_envelope(event={"category": "iot", "type": "x", "data": {"note": "x" * 10_000}})
    wide = full_envelope(event={"category": "iot", "type": "x", "data": {f"k{i}": i for i in range(300)}})
    for env in (long_string, wide):
        result = to_row(env)
        assert isinstance(result, Rejection) and result.code == "too_big"


def test_every_element_of_an_array_is_bounded_like_a_message_of_its_own() -> None:
    """Elements are proved small from their own bytes or walked; either way the limits hold."""
    deep: object = {"leaf": 1}
    for _ in range(LIMITS.max_depth + 2):
        deep = {"d": deep}
    # orjson reads 300 levels but cannot write them back: the walk must refuse this one.
    too_deep_for_orjson = b"[" * 300 + b"1" + b"]" * 300
    elements = [
        full_envelope(event_id=str(uuid.uuid4())),
        full_envelope(event={"category": "iot", "type": "x", "data": {"note": "x" * 10_000}}),
        full_envelope(event={"category": "iot", "type": "x", "data": deep}),
        full_envelope(event={"category": "iot", "type": "x", "data": {f"k{i}": i for i in range(300)}}),
        full_envelope(event={"category": "iot", "type": "x", "data": {"d": "HERE"}}),
        full_envelope(event_id=str(uuid.uuid4())),
    ]
    payload = orjson.dumps(elements).replace(b'"HERE"', too_deep_for_orjson)
    decoded = decode_message(payload, topic_source_id="cam-barn-01", received_at=NOW, limits=LIMITS)
    assert len(decoded.events) == 2
    assert [(r.position, r.code) for r in decoded.rejections] == [
        (1, "too_big"),
        (2, "too_deep"),
        (3, "too_big"),
        (4, "too_deep"),
    ]


def test_array_message_keeps_the_good_and_names_the_bad() -> None:
    good = full_envelope(event_id=str(uuid.uuid4()))
    bad = full_envelope(event={"category": "nope", "type": "x"})
    decoded = decode_message(
        orjson.dumps([good, bad, good | {"event_id": str(uuid.uuid4())}]),
        topic_source_id="cam-barn-01",
        received_at=NOW,
        limits=LIMITS,
    )
    assert len(decoded.events) == 2
    assert [(r.code, r.position) for r in decoded.rejections] == [("invalid_envelope", 1)]
    assert orjson.loads(decoded.rejections[0].raw)["event"]["category"] == "nope"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00binary\x00", "invalid_json"),
        (b"", "invalid_json"),
        (b"42", "not_an_envelope"),
        (b"[]", "not_an_envelope"),
        (b'"text"', "not_an_envelope"),
        (b"[" + b"{}," * 1000 + b"{}]", "too_many_events"),
        (b'{"a": NaN}', "invalid_json"),
    ],
)
def test_garbage_messages_get_a_reason(payload: bytes, code: str) -> None:
    decoded = decode_message(payload, topic_source_id="s", received_at=NOW, limits=LIMITS)
    assert decoded.events == []
    assert [r.code for r in decoded.rejections] == [code]
    assert decoded.rejections[0].raw == payload, "single messages are dead-lettered as they came"
    assert decoded.rejections[0].detail


def test_json_schema_covers_the_envelope() -> None:
    schema = json_schema()
    assert schema["title"] == "EdgeKite event envelope"
    assert set(schema["required"]) == {"source", "event"}
    for part in ("Source", "EventBody", "Attachment", "Privacy", "Correlation", "Sync"):
        assert part in schema["$defs"]
    assert schema["$defs"]["EventBody"]["properties"]["category"]["enum"] == [
        "web",
        "iot",
        "app",
        "ops",
        "security",
    ]


def test_the_byte_count_shortcut_never_skips_a_shape_that_fails() -> None:
    from edgekite.ingest import check_shape, shape_cannot_fail

    limits = LimitsSection(max_depth=4, max_keys=8, max_string_chars=64)
    cases = [
        {"a": {"b": {"c": 1}}},
        {"a": {"b": {"c": {"d": {"e": 1}}}}},
        {f"k{i}": i for i in range(9)},
        {"s": "x" * 70},
        {"l": list(range(5))},
        {"a": "{[{[{[", "b": ":::::::::::"},
    ]
    for obj in cases:
        payload = orjson.dumps(obj)
        if shape_cannot_fail(payload, limits):
            assert check_shape(obj, limits) is None, obj
    assert shape_cannot_fail(orjson.dumps(cases[0]), limits)
    assert not shape_cannot_fail(orjson.dumps(cases[1]), limits)


def test_the_plain_rules_name_the_models_fields_in_order() -> None:
    """The fast path (no pydantic) and the models must agree on which keys an envelope may hold."""
    pairs = [
        (envelope_rules.ENVELOPE_KEYS, envelope.Envelope),
        (envelope_rules.SOURCE_KEYS, envelope.Source),
        (envelope_rules.EVENT_KEYS, envelope.EventBody),
        (envelope_rules.CORRELATION_KEYS, envelope.Correlation),
        (envelope_rules.ATTACHMENT_KEYS, envelope.Attachment),
        (envelope_rules.PRIVACY_KEYS, envelope.Privacy),
        (envelope_rules.SYNC_KEYS, envelope.Sync),
    ]
    for keys, model in pairs:
        assert keys == tuple(model.model_fields), model.__name__

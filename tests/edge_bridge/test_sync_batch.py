"""Batches as the hub receives them: faithful envelopes, the privacy border, the limits."""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson
import pytest
import zstandard

from edge_bridge.backoff import Backoff
from edge_bridge.sync_batch import PrivacyPolicy, envelope_json, form_batch, keyed_hash, rebuild_batch
from edgekite import sync_protocol
from edgekite.config import LimitsSection
from edgekite.ingest import EventRow, envelope_to_row
from edgekite.sync_protocol import BatchError, BatchHeader

LIMITS = LimitsSection()


def stored(obj: dict[str, Any], received_at: int = 1_790_000_000_000) -> EventRow:
    row = envelope_to_row(
        obj, topic_source_id="cam-1", received_at=received_at, limits=LIMITS, require_source_match=True
    )
    assert isinstance(row, EventRow), row
    return row


def as_read(rowid: int, row: EventRow) -> tuple[Any, ...]:
    """What outbox.read_rows returns: (rowid, *EVENT_COLUMNS) with uncompressed JSON columns."""
    return (rowid, *row[:16], 0)


def ident(v: Any) -> str | None:
    return v


RICH = {
    "event_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "observed_at": 1_789_999_999_000,
    "source": {"type": "edge_device", "id": "cam-1", "version": "fw-2.1", "metadata": {"site": "barn"}},
    "event": {
        "category": "iot",
        "type": "person_detected",
        "severity": "warn",
        "schema_version": "1.2",
        "data": {"confidence": 0.93, "zone": "gate", "nested": {"a": [1, 2, {"b": None}]}},
    },
    "correlation": {"correlation_id": "c-1", "session_id": "s-9", "incident_id": "inc-4"},
    "attachments": [{"kind": "snapshot", "uri": "file:///media/1.jpg", "size_bytes": 1234}],
    "privacy": {"pii": False, "retention_class": "long"},
    "sync": {"source_seq": 77},
}


def test_the_envelope_sent_is_stored_identically_at_the_hub() -> None:
    row = stored(RICH)
    sent = orjson.loads(envelope_json(as_read(5, row), ident, PrivacyPolicy()))
    # The hub validates with the same function, taking the edge's received_at as given.
    again = envelope_to_row(
        sent, topic_source_id=None, received_at=sent["received_at"], limits=LIMITS, require_source_match=False
    )
    assert isinstance(again, EventRow)
    assert again[:16] == row[:16]
    assert sent["sync"] == {"source_seq": 77} and sent["received_at"] == 1_790_000_000_000


def test_pii_fields_are_hashed_with_the_edge_key_or_dropped() -> None:
    obj = {
        "source": {"type": "browser", "id": "site-a"},
        "event": {
            "category": "web",
            "type": "pageview",
            "data": {"url": "/x", "ip": "203.0.113.9", "user": {"email": "a@b.c"}},
        },
        "privacy": {"pii": True},
    }
    row = as_read(1, stored({**obj, "source": {"type": "browser", "id": "cam-1"}}))
    fields = ("ip", "user.email", "absent.path")
    hashed = orjson.loads(envelope_json(row, ident, PrivacyPolicy("hash", fields, b"k1")))["event"]["data"]
    assert hashed["url"] == "/x"
    assert hashed["ip"] == keyed_hash(b"k1", "203.0.113.9") != "203.0.113.9"
    assert hashed["user"]["email"] == keyed_hash(b"k1", "a@b.c")
    assert keyed_hash(b"k2", "203.0.113.9") != hashed["ip"], "keyed: another edge key gives another hash"
    dropped = orjson.loads(envelope_json(row, ident, PrivacyPolicy("drop", fields, b"k1")))["event"]["data"]
    assert dropped == {"url": "/x", "user": {}}
    sent = orjson.loads(envelope_json(row, ident, PrivacyPolicy("send", fields, b"k1")))["event"]["data"]
    assert sent["ip"] == "203.0.113.9"


def test_withheld_rows_advance_the_range_but_are_not_sent_and_are_counted() -> None:
    base = {"source": {"type": "edge_device"}, "event": {"category": "iot", "type": "t", "data": {}}}
    rows = [
        as_read(10, stored(base)),
        as_read(11, stored({**base, "privacy": {"pii": True}})),
        as_read(12, stored({**base, "privacy": {"retention_class": "short"}})),
        as_read(13, stored(base)),
        as_read(14, stored({**base, "privacy": {"pii": True}})),
    ]
    policy = PrivacyPolicy(pii="local", short="local")
    batch = form_batch(rows, decode=ident, policy=policy, max_events=100, max_bytes=10**6)
    assert batch is not None
    assert (batch.first_seq, batch.last_seq) == (10, 14)
    assert len(batch.events_json) == 2
    assert batch.withheld == {"pii": 2, "short": 1}
    assert rebuild_batch(rows, decode=ident, policy=policy, first_seq=10, last_seq=14).events_json == (
        batch.events_json
    ), "a rebuilt batch is byte-identical"


def test_batches_respect_count_and_byte_limits_and_keep_order() -> None:
    rows = [
        as_read(
            i,
            stored(
                {
                    "source": {"type": "edge_device"},
                    "event": {"category": "iot", "type": "t", "data": {"i": i, "pad": "p" * 200}},
                }
            ),
        )
        for i in range(1, 101)
    ]
    by_count = form_batch(rows, decode=ident, policy=PrivacyPolicy(), max_events=30, max_bytes=10**6)
    assert by_count is not None and len(by_count.events_json) == 30
    assert (by_count.first_seq, by_count.last_seq) == (1, 30)
    by_bytes = form_batch(rows, decode=ident, policy=PrivacyPolicy(), max_events=100, max_bytes=4096)
    assert by_bytes is not None and 0 < by_bytes.nbytes <= 4096
    assert [orjson.loads(e)["event"]["data"]["i"] for e in by_bytes.events_json] == list(
        range(1, len(by_bytes.events_json) + 1)
    )
    one = form_batch(rows, decode=ident, policy=PrivacyPolicy(), max_events=100, max_bytes=16)
    assert one is not None and len(one.events_json) == 1, "an event larger than the limit still goes alone"


def test_batch_round_trip_and_signature() -> None:
    events = [orjson.dumps({"n": i}) for i in range(3)]
    header = BatchHeader(
        edge_id="edge-7", batch_id="ab12:1-3", first_seq=1, last_seq=3, created_at=1, count=3, backlog=9
    )
    payload = sync_protocol.encode_batch(header, events)
    got, evs = sync_protocol.decode_batch(payload)
    assert got == header and evs == [{"n": 0}, {"n": 1}, {"n": 2}]
    sig = sync_protocol.sign("k" * 20, payload)
    assert sync_protocol.verify("k" * 20, payload, sig)
    assert not sync_protocol.verify("x" * 20, payload, sig)
    assert not sync_protocol.verify("k" * 20, payload + b"\0", sig)
    assert not sync_protocol.verify("k" * 20, payload, None)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not zstd", "bad_compression"),
        (zstandard.ZstdCompressor().compress(b"[1]"), "invalid_batch"),
        (zstandard.ZstdCompressor().compress(b"{oops"), "invalid_json"),
    ],
)
def test_unreadable_batches_are_clear_errors(payload: bytes, code: str) -> None:
    with pytest.raises(BatchError) as err:
        sync_protocol.decode_batch(payload)
    assert err.value.code == code


def test_a_lying_count_is_refused() -> None:
    header = BatchHeader(edge_id="e", batch_id="b:1-2", first_seq=1, last_seq=2, created_at=1, count=5)
    with pytest.raises(BatchError, match="count"):
        sync_protocol.decode_batch(sync_protocol.encode_batch(header, [b"{}"]))


def test_batch_ids_are_stable_per_database_and_distinct_across_databases() -> None:
    a = sync_protocol.make_batch_id("aaaa", 1, 2000)
    assert a == sync_protocol.make_batch_id("aaaa", 1, 2000)
    assert a != sync_protocol.make_batch_id("bbbb", 1, 2000), "a wiped edge never reuses an id"
    assert sync_protocol.valid_batch_id(a)
    assert not sync_protocol.valid_batch_id("../../etc")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    b = Backoff(1, 300, random.Random(7))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        base = min(300, 2**n)
        assert base * 0.5 <= d <= base
    assert len({round(d, 6) for d in delays[-4:]}) == 4, "jittered: capped delays still differ"
    b.reset()
    assert b.next_delay() <= 1


def test_event_ids_survive_as_text() -> None:
    row = stored({**RICH, "event_id": str(uuid.UUID(int=5))})
    assert orjson.loads(envelope_json(as_read(1, row), ident, PrivacyPolicy()))["event_id"] == str(
        uuid.UUID(int=5)
    )

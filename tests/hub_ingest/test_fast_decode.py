"""The msgspec fast path must decode a batch exactly as the reference path does, or step aside.

Every case runs both: ``decode_batch`` + ``decode_events`` (the reference, which words every
refusal) and ``parse_batch_fast`` + ``decode_events_fast``. The fast path may return None (the
hub then runs the reference); when it answers, its columns, counts and rejections must equal
the reference's.
"""

from __future__ import annotations

import copy
import json
import random
import time
from typing import Any

import orjson
import pytest

from edgekite.config import LimitsSection
from edgekite.sync_protocol import BatchHeader, decode_batch, encode_batch
from edgekite.visitor import DailySalts
from hub_ingest import prepare
from hub_ingest.decode import DecodedBatch, decode_events
from hub_ingest.fast_decode import decode_events_fast, parse_batch_fast
from hub_ingest.prepare import PrepareContext, PreparedBatch, prepare_payload
from tests.edgekite.test_fast_path import mutate
from tests.hub_ingest.helpers import envelopes

NOW = int(time.time() * 1000)
SALTS = {d: bytes([d % 251]) * 16 for d in range(NOW // 86_400_000 - 3, NOW // 86_400_000 + 2)}


def dumps(obj: Any) -> bytes:
    """The edge's encoding, or the stdlib's for what orjson cannot write (integers past 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def raw_batch(events_json: list[bytes], **header: Any) -> bytes:
    fields: dict[str, Any] = {
        "edge_id": "edge-a",
        "batch_id": "b1:1-9",
        "first_seq": 1,
        "last_seq": 9,
        "created_at": NOW,
        "count": len(events_json),
    }
    fields.update(header)
    return encode_batch(BatchHeader(**fields), events_json)


def both(payload: bytes, limits: LimitsSection | None = None) -> tuple[DecodedBatch | None, DecodedBatch]:
    limits = limits or LimitsSection()
    salts = DailySalts(SALTS, 2)
    header, events = decode_batch(payload)
    ref = decode_events(
        header, events, hub_received_at=NOW, limits=limits, dead_letter_max_bytes=4096, salts=salts
    )
    parsed = parse_batch_fast(payload)
    if parsed is None:
        return None, ref
    fast = decode_events_fast(parsed[0], parsed[1], hub_received_at=NOW, limits=limits, salts=salts)
    return fast, ref


def test_simulator_batches_take_the_fast_path_and_match_the_reference() -> None:
    for seed in range(3):
        evs = envelopes(500, seed=seed, received_at=NOW - 5000)
        fast, ref = both(raw_batch([dumps(e) for e in evs]))
        assert fast is not None
        assert ref.accepted == 500 and not ref.rejected
        assert fast == ref
        assert any(v for v in fast.columns["visitor_id"]), "web visitors got their salted ids"
        assert any(a != "[]" for a in fast.columns["attachments"]), "camera thumbnails included"


def test_in_batch_duplicates_and_uppercase_ids_are_read_alike() -> None:
    evs = envelopes(20, received_at=NOW)
    evs[3]["event_id"] = evs[3]["event_id"].upper()
    evs.append(copy.deepcopy(evs[3]))
    evs.append({**copy.deepcopy(evs[5]), "event_id": evs[5]["event_id"].upper()})
    fast, ref = both(raw_batch([dumps(e) for e in evs]))
    assert ref.duplicates_in_batch == 2
    assert fast == ref


@pytest.mark.parametrize("seed", range(3))
def test_mutated_batches_are_decoded_alike_or_left_to_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    base = envelopes(300, seed=seed, received_at=NOW)
    answered = 0
    for i in range(0, 300, 3):
        evs = copy.deepcopy(base[i : i + 3])
        evs[1] = mutate(evs[1], rng)
        fast, ref = both(raw_batch([dumps(e) for e in evs]))
        if fast is not None:
            assert fast == ref, evs[1]
            answered += 1
        else:
            assert ref.rejected or ref.accepted == 3, "stepping aside is only for refusals and odd shapes"
    assert answered > 10, "harmless mutations should stay on the fast path"


ODD_JSON = [
    b'{"n": 123456789012345678901234567890}',  # orjson reads a float, msgspec an int
    b'{"n": -9223372036854775809}',
    b'{"n": 18446744073709551615}',
    b'{"a": 1, "a": 2}',
    b'{"s": "\\u00e9\\ud83d\\ude00", "f": 1.5e300, "z": -0.0}',
    b'{"deep": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"long": "' + b"x" * 9000 + b'"}',
]


@pytest.mark.parametrize("data", ODD_JSON)
def test_values_the_two_parsers_read_differently_never_diverge(data: bytes) -> None:
    evs = envelopes(3, received_at=NOW)
    evs[1]["event"]["data"] = {"odd": 0}
    docs = [dumps(e) for e in evs]
    docs[1] = docs[1].replace(b'{"odd":0}', data)
    fast, ref = both(raw_batch(docs))
    if fast is not None:
        assert fast == ref


@pytest.mark.parametrize(
    "patch",
    [
        {"observed_at": 1.5e12},  # a float time: the reference accepts it, the fast path steps aside
        {"observed_at": "2026-11-23T10:00:00+01:00"},
        {"observed_at": NOW + 86_400_000},  # clock skew is flagged alike
        {"observed_at": NOW - 400 * 86_400_000},
        {"received_at": "1795400000000"},
        {"observed_at": 32_503_680_000_000},  # the last valid millisecond, and one past it
        {"observed_at": 32_503_680_000_001},
        {"received_at": -1},
        {"received_at": 0},
        {"privacy": {"pii": True, "retention_class": "short"}},
        {"correlation": {}},
        {"correlation": None},
        {"sync": None},
        {"sync": {"synced": True}},
        {"attachments": [{"kind": "clip", "uri": "DATA:x"}]},
        {"attachments": [{"kind": "clip", "uri": "s3://b/k", "size_bytes": 10**30}]},
    ],
)
def test_edge_cases_of_the_envelope_agree(patch: dict[str, Any]) -> None:
    evs = envelopes(4, received_at=NOW)
    evs[2].update(patch)
    fast, ref = both(raw_batch([dumps(e) for e in evs]))
    if fast is not None:
        assert fast == ref


@pytest.mark.parametrize(
    ("part", "patch"),
    [
        ("event", {"schema_version": ""}),  # read as "1.0"
        ("event", {"schema_version": "2.1", "severity": "critical"}),
        ("event", {"data": {}}),
        ("source", {"metadata": {}}),
        ("source", {"metadata": {"site_id": "shop-9"}, "version": "1.2.3"}),
        ("source", {"version": None}),
    ],
)
def test_defaults_and_empty_parts_are_read_alike(part: str, patch: dict[str, Any]) -> None:
    evs = envelopes(6, received_at=NOW)
    for e in evs:
        e[part].update(patch)
    fast, ref = both(raw_batch([dumps(e) for e in evs]))
    assert fast is not None and fast == ref


def test_tight_limits_are_enforced_by_stepping_aside() -> None:
    limits = LimitsSection(max_string_chars=64, max_depth=4, max_keys=8)
    evs = envelopes(30, received_at=NOW)
    fast, ref = both(raw_batch([dumps(e) for e in evs]), limits)
    assert ref.rejected, "these limits refuse some simulator events"
    assert fast is None


def test_odd_headers_are_left_to_the_reference() -> None:
    docs = [dumps(e) for e in envelopes(2, received_at=NOW)]
    good = raw_batch(docs)
    assert parse_batch_fast(good) is not None
    assert parse_batch_fast(good[:-3]) is None  # cut zstd frame
    header = BatchHeader(edge_id="e", batch_id="b:1-2", first_seq=1, last_seq=2, created_at=NOW, count=3)
    assert parse_batch_fast(encode_batch(header, docs)) is None  # count says 3, holds 2


def test_prepare_payload_stores_the_same_arrow_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = PrepareContext(LimitsSection(), 4096, {})
    payload = raw_batch([dumps(e) for e in envelopes(200, seed=4, received_at=NOW)])
    fast = prepare_payload(ctx, "edge-a", payload, None, None, "mqtt", NOW, SALTS)
    monkeypatch.setattr(prepare, "parse_batch_fast", lambda payload: None)
    ref = prepare_payload(ctx, "edge-a", payload, None, None, "mqtt", NOW, SALTS)
    assert isinstance(fast, PreparedBatch) and isinstance(ref, PreparedBatch)
    assert fast.events_ipc is not None and fast.events_ipc == ref.events_ipc
    assert fast.decoded == ref.decoded


def nested(levels: int, leaf: Any = 1) -> Any:
    node = leaf
    for i in range(levels):
        node = {"k": node} if i % 2 else [node]
    return node


@pytest.mark.parametrize("part", ["data", "metadata"])
@pytest.mark.parametrize(
    "limits",
    [LimitsSection(), LimitsSection(max_depth=6, max_keys=12, max_string_chars=4096)],
    ids=["defaults", "tight"],
)
def test_free_form_parts_at_the_limits_are_never_let_through(part: str, limits: LimitsSection) -> None:
    answered = 0
    for levels in range(limits.max_depth + 2):
        for wide in (1, limits.max_keys - 3, limits.max_keys + 1):
            evs = envelopes(3, received_at=NOW)
            value = {"n": nested(levels), **{f"w{i}": i for i in range(wide - 1)}}
            target = evs[1]["event"] if part == "data" else evs[1]["source"]
            target[part] = value
            fast, ref = both(raw_batch([dumps(e) for e in evs]), limits)
            if fast is not None:
                assert fast == ref, (levels, wide)
                answered += 1
    assert answered > 3

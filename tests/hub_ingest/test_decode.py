"""Pure parts of hub ingest: envelope validation into columns, and the token bucket."""

from __future__ import annotations

from edgekite.config import LimitsSection
from edgekite.sync_protocol import BatchHeader
from hub_ingest.decode import decode_events
from hub_ingest.ratelimit import RateLimiter
from tests.hub_ingest.helpers import envelopes

HEADER = BatchHeader(edge_id="e1", batch_id="s:1-10", first_seq=1, last_seq=10, created_at=1, count=0)


def _decode(events: list[object]) -> object:
    return decode_events(
        HEADER,
        list(events),
        hub_received_at=1_800_000_000_000,
        limits=LimitsSection(),
        dead_letter_max_bytes=64,
    )


def test_good_envelopes_become_columns() -> None:
    evs = envelopes(50)
    d = _decode(evs)
    assert d.accepted == 50 and not d.rejected  # type: ignore[attr-defined]
    cols = d.columns  # type: ignore[attr-defined]
    assert cols["event_id"] == [e["event_id"] for e in evs]
    assert cols["edge_id"] == ["e1"] * 50 and cols["batch_id"] == ["s:1-10"] * 50
    assert {len(v) for v in cols.values()} == {50}


def test_bad_envelopes_are_rejected_with_reasons_and_good_ones_kept() -> None:
    evs = envelopes(4)
    no_id = {**evs[1]}
    del no_id["event_id"]
    no_received = {**evs[2]}
    del no_received["received_at"]
    bad_category = {**evs[3], "event": {**evs[3]["event"], "category": "weather"}}
    deep: dict[str, object] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    too_deep = {**evs[0], "event_id": "11111111-1111-4111-8111-111111111111"}
    too_deep["event"] = {**evs[0]["event"], "data": deep}
    d = _decode([evs[0], no_id, no_received, bad_category, "nope", too_deep, evs[0]])
    assert d.accepted == 1  # type: ignore[attr-defined]
    assert d.duplicates_in_batch == 1  # type: ignore[attr-defined]  # evs[0] twice: kept once
    codes = {r.index: r.code for r in d.rejected}  # type: ignore[attr-defined]
    assert codes == {
        1: "missing_event_id",
        2: "missing_received_at",
        3: "invalid_envelope",
        4: "not_an_envelope",
        5: "too_deep",
    }
    assert all(len(dl.payload) <= 64 for dl in d.dead_letters)  # type: ignore[attr-defined]
    assert "category" in next(r.reason for r in d.rejected if r.index == 3)  # type: ignore[attr-defined]


def test_token_bucket_admits_the_rate_and_names_the_wait() -> None:
    rl = RateLimiter(1000, 1000)
    assert rl.check("e1", 800, now=0.0) == 0
    wait = rl.check("e1", 800, now=0.0)
    assert 0.55 < wait < 0.65  # 600 more tokens at 1000/s
    assert rl.check("e2", 800, now=0.0) == 0  # per edge
    assert rl.check("e1", 800, now=wait) == 0
    # a batch bigger than the burst passes on a full bucket, never refused forever
    assert rl.check("e3", 5000, now=0.0) == 0


def _web(
    ip: str, ua: str, site: str = "shop.example", observed_at: int = 1_800_000_000_000
) -> dict[str, object]:
    import uuid

    return {
        "event_id": str(uuid.uuid4()),
        "observed_at": observed_at,
        "received_at": observed_at,
        "source": {"type": "browser", "id": "tracker"},
        "event": {
            "category": "web",
            "type": "page_view",
            "data": {"url": "/", "ip": ip, "user_agent": ua, "site": site},
        },
        "privacy": {"pii": True},
    }


def test_web_visitors_get_a_salted_id_and_the_raw_ip_is_never_kept() -> None:
    import orjson

    from edgekite.visitor import DailySalts, utc_day

    day = utc_day(1_800_000_000_000)
    salts = DailySalts({day: b"s" * 32})
    evs = [
        _web("203.0.113.9", "UA-1"),
        _web("203.0.113.9", "UA-1"),  # the same person again
        _web("203.0.113.10", "UA-1"),  # a neighbour on the same /24
        _web("203.0.113.9", "UA-1", site="other.example"),  # the same person on another site
        _web("2001:db8:1234:5678::1", "UA-2"),
    ]
    d = decode_events(
        HEADER,
        evs,
        hub_received_at=1_800_000_000_000,
        limits=LimitsSection(),
        dead_letter_max_bytes=64,
        salts=salts,
    )
    vids = d.columns["visitor_id"]
    assert vids[0] == vids[1] != 0
    assert vids[2] != vids[0], "the id is from the full address, not the truncated one"
    assert vids[3] != vids[0], "ids are per site"
    stored_ips = [orjson.loads(x)["ip"] for x in d.columns["data"]]
    assert stored_ips == ["203.0.113.0", "203.0.113.0", "203.0.113.0", "203.0.113.0", "2001:db8:1234::"]
    other_salt = decode_events(
        HEADER, evs[:1], hub_received_at=1_800_000_000_000, limits=LimitsSection(), dead_letter_max_bytes=64,
        salts=DailySalts({day: b"t" * 32}),
    )  # fmt: skip
    assert other_salt.columns["visitor_id"][0] != vids[0], "a new day's salt, a new id"
    dropped = decode_events(
        HEADER, evs[:1], hub_received_at=1_800_000_000_000, limits=LimitsSection(), dead_letter_max_bytes=64,
        salts=salts, ip_mode="drop",
    )  # fmt: skip
    assert "ip" not in orjson.loads(dropped.columns["data"][0])
    unsalted = decode_events(
        HEADER, evs[:1], hub_received_at=1_800_000_000_000, limits=LimitsSection(), dead_letter_max_bytes=64
    )
    assert unsalted.columns["visitor_id"] == [0]
    assert orjson.loads(unsalted.columns["data"][0])["ip"] == "203.0.113.0", "no salt: still no raw IP"


def test_an_edge_hashed_ip_is_kept_and_counts_garbage_is_dropped() -> None:
    import orjson

    from edgekite.visitor import DailySalts, utc_day

    salts = DailySalts({utc_day(1_800_000_000_000): b"s" * 32})
    hashed = "hmac256:" + "ab" * 16
    evs = [_web(hashed, "UA"), _web(hashed, "UA"), _web("not an address", "UA")]
    d = decode_events(
        HEADER,
        evs,
        hub_received_at=1_800_000_000_000,
        limits=LimitsSection(),
        dead_letter_max_bytes=64,
        salts=salts,
    )
    vids = d.columns["visitor_id"]
    assert vids[0] == vids[1] != 0 and vids[2] == 0
    data = [orjson.loads(x) for x in d.columns["data"]]
    assert data[0]["ip"] == hashed and "ip" not in data[2]

"""Cookieless visitor ids, daily salts and IP truncation (edgekite.visitor)."""

from __future__ import annotations

import pytest

from edgekite.visitor import DAY_MS, DailySalts, new_salt, normalise_ip, truncate_ip, utc_day, visitor_id

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0"
SALT_A = b"a" * 32
SALT_B = b"b" * 32


def test_visitor_id_is_stable_within_a_salt_and_differs_across_salts_and_sites() -> None:
    vid = visitor_id("site-1", "203.0.113.7", UA, SALT_A)
    assert vid == visitor_id("site-1", "203.0.113.7", UA, SALT_A)
    assert 0 < vid < 2**64
    assert vid != visitor_id("site-1", "203.0.113.7", UA, SALT_B)  # next day
    assert vid != visitor_id("site-2", "203.0.113.7", UA, SALT_A)  # another site
    assert vid != visitor_id("site-1", "203.0.113.8", UA, SALT_A)  # another address
    assert vid != visitor_id("site-1", "203.0.113.7", UA + " Edg/124", SALT_A)  # another browser
    # parts are separated, so shifting characters between them changes the id
    assert visitor_id("ab", "c", "", SALT_A) != visitor_id("a", "bc", "", SALT_A)


def test_visitor_id_known_value() -> None:
    # Pinned so a change of the scheme (which would split every visitor at the change) is deliberate.
    assert visitor_id("site-1", "203.0.113.7", "UA", b"\x00" * 32) == 0xB66336803E8ADEC4


def test_visitor_id_needs_a_salt() -> None:
    with pytest.raises(ValueError, match="salt"):
        visitor_id("s", "203.0.113.7", UA, b"")


@pytest.mark.parametrize(
    ("ip", "args", "expected"),
    [
        ("203.0.113.77", {}, "203.0.113.0"),
        ("203.0.113.77", {"v4_prefix": 16}, "203.0.0.0"),
        ("203.0.113.77", {"v4_prefix": 32}, "203.0.113.77"),
        ("203.0.113.77", {"v4_prefix": 0}, "0.0.0.0"),
        (" 198.51.100.255 ", {}, "198.51.100.0"),
        ("2001:db8:abcd:12:1:2:3:4", {}, "2001:db8:abcd::"),
        ("2001:db8:abcd:12:1:2:3:4", {"v6_prefix": 64}, "2001:db8:abcd:12::"),
        ("2001:DB8::1", {}, "2001:db8::"),
        ("::ffff:203.0.113.9", {}, "203.0.113.0"),  # IPv4-mapped: truncated as IPv4
        ("fe80::1%eth0", {}, "fe80::"),
        ("[2001:db8::1]", {}, "2001:db8::"),
        ("203.0.113.0/24", {}, "203.0.113.0"),
        ("", {}, ""),
        ("not-an-ip", {}, ""),
        ("hmac256:0123456789abcdef", {}, ""),
        ("999.1.1.1", {}, ""),
    ],
)
def test_truncate_ip(ip: str, args: dict[str, int], expected: str) -> None:
    assert truncate_ip(ip, **args) == expected


def test_truncate_ip_rejects_bad_prefixes() -> None:
    with pytest.raises(ValueError, match="prefix"):
        truncate_ip("203.0.113.1", v4_prefix=33)
    with pytest.raises(ValueError, match="prefix"):
        truncate_ip("2001:db8::1", v6_prefix=-1)


def test_normalise_ip() -> None:
    assert normalise_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalise_ip("2001:0db8:0000::0001") == "2001:db8::1"
    assert normalise_ip("x") == ""


NOW = 20_000 * DAY_MS + 3_600_000  # 01:00 UTC on day 20000


def test_daily_salts_rotation() -> None:
    empty = DailySalts(keep_days=2)
    assert empty.missing(NOW) == [20_000]
    salts = empty.rotated(NOW, make=lambda: SALT_A)
    assert dict(salts.salts) == {20_000: SALT_A}
    assert salts.added(empty) == {20_000: SALT_A}
    assert salts.missing(NOW) == [] and salts.expired(NOW) == []
    assert salts.rotated(NOW) == salts  # idempotent within a day
    # next day: a new salt, yesterday's kept
    tomorrow = NOW + DAY_MS
    salts2 = salts.rotated(tomorrow, make=lambda: SALT_B)
    assert dict(salts2.salts) == {20_000: SALT_A, 20_001: SALT_B}
    # the day after: the oldest one expires
    later = NOW + 2 * DAY_MS
    assert salts2.expired(later) == [20_000]
    salts3 = salts2.rotated(later, make=lambda: b"c" * 32)
    assert sorted(salts3.salts) == [20_001, 20_002]
    assert list(salts3.live_days(later)) == [20_001, 20_002]


def test_a_salt_from_the_future_is_expired() -> None:
    salts = DailySalts({20_000: SALT_A, 20_005: SALT_B}, keep_days=1)
    assert salts.expired(NOW) == [20_005]


def test_salt_for_an_event() -> None:
    salts = DailySalts({20_000: SALT_A, 20_001: SALT_B}, keep_days=2)
    today = NOW + DAY_MS
    assert salts.salt_for(NOW) == SALT_A  # yesterday's event: yesterday's salt
    assert salts.salt_for(today) == SALT_B
    # a week-old event from an edge that was offline: no salt for its day, the receive day's salt
    assert salts.salt_for(NOW - 7 * DAY_MS) is None
    assert salts.salt_for(NOW - 7 * DAY_MS, fallback_ms=today) == SALT_B
    # a device clock in the future: same fallback
    assert salts.salt_for(NOW + 400 * DAY_MS, fallback_ms=today) == SALT_B
    assert salts.visitor_id("s", "203.0.113.7", UA, today) == visitor_id("s", "203.0.113.7", UA, SALT_B)
    assert salts.visitor_id("s", "", UA, today) == 0
    assert salts.visitor_id("s", "203.0.113.7", UA, NOW - 7 * DAY_MS) == 0


def test_salts_are_random_and_immutable() -> None:
    assert new_salt() != new_salt() and len(new_salt()) == 32
    salts = DailySalts({1: SALT_A})
    with pytest.raises(TypeError):
        salts.salts[2] = SALT_B  # type: ignore[index]
    with pytest.raises(ValueError, match="keep_days"):
        DailySalts(keep_days=0)
    assert utc_day(DAY_MS - 1) == 0 and utc_day(DAY_MS) == 1

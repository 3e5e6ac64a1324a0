"""Geo lookups on small MaxMind-format databases the tests build with mmdb-writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edgekite.visitor import truncate_ip
from hub_enrich.geo import EMPTY_GEO, Geo, GeoLookup, geo_from_record


def _city(country: str, sub: dict[str, object] | None, city: str | None) -> dict[str, object]:
    record: dict[str, object] = {"country": {"iso_code": country, "names": {"en": country}}}
    if sub is not None:
        record["subdivisions"] = [sub]
    if city is not None:
        record["city"] = {"names": {"en": city}}
    return record


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A City-schema database for IPv4 (mapped) and IPv6, like GeoLite2-City."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test-City", languages=["en", "de"])
    munich = _city("DE", {"iso_code": "BY", "names": {"en": "Bavaria", "de": "Bayern"}}, "Munich")
    munich["city"] = {"names": {"en": "Munich", "de": "München"}}
    writer.insert_network(IPSet(["203.0.113.0/24"]), munich)
    writer.insert_network(IPSet(["198.51.100.0/24"]), _city("US", {"iso_code": "CA"}, "San Francisco"))
    writer.insert_network(IPSet(["192.0.2.0/25"]), {"registered_country": {"iso_code": "FR"}})
    writer.insert_network(
        IPSet(["2001:db8::/48"]), _city("NL", {"names": {"en": "North Holland"}}, "Amsterdam")
    )
    writer.insert_network(IPSet(["2001:db8:1::/48"]), {"country": {"iso_code": "jp"}})
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def country_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Country-schema, IPv4-only database, like GeoLite2-Country."""
    writer = MMDBWriter(ip_version=4, database_type="Test-Country")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "AT"}})
    path = tmp_path_factory.mktemp("geo") / "country.mmdb"
    writer.to_db_file(str(path))
    return path


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.77", Geo("DE", "DE-BY", "Munich")),
        ("203.0.113.0", Geo("DE", "DE-BY", "Munich")),  # truncated /24
        ("203.0.113.0/24", Geo("DE", "DE-BY", "Munich")),
        ("::ffff:203.0.113.9", Geo("DE", "DE-BY", "Munich")),  # IPv4-mapped IPv6
        ("198.51.100.200", Geo("US", "US-CA", "San Francisco")),
        ("192.0.2.5", Geo("FR", "", "")),  # registered country only
        ("192.0.2.200", EMPTY_GEO),  # outside every network
        ("2001:db8::1234:5678", Geo("NL", "North Holland", "Amsterdam")),  # a region without a code
        ("2001:db8::", Geo("NL", "North Holland", "Amsterdam")),  # truncated /48
        ("2001:db8:1:ffff::1", Geo("JP", "", "")),  # a Country-schema record
        ("", EMPTY_GEO),
        ("not an ip", EMPTY_GEO),
        ("hmac256:0123456789abcdef0123456789abcdef", EMPTY_GEO),  # the edge's keyed hash
    ],
)
def test_city_lookups(city_db: Path, ip: str, expected: Geo) -> None:
    with GeoLookup(city_db) as geo:
        assert geo.available and geo.database_type == "Test-City"
        assert geo(ip) == expected


def test_truncation_keeps_the_location(city_db: Path) -> None:
    geo = GeoLookup(city_db)
    for ip in ("203.0.113.77", "198.51.100.9", "2001:db8::99:1"):
        assert geo(truncate_ip(ip)) == geo(ip) != EMPTY_GEO


def test_language(city_db: Path) -> None:
    assert GeoLookup(city_db, language="de")("203.0.113.1") == Geo("DE", "DE-BY", "München")
    assert GeoLookup(city_db, language="fr")("203.0.113.1").city == "Munich"  # falls back to English


def test_country_database_and_ipv6_in_an_ipv4_database(country_db: Path) -> None:
    geo = GeoLookup(country_db)
    assert geo("203.0.113.5") == Geo("AT", "", "")
    assert geo("2001:db8::1") == EMPTY_GEO  # no error: an IPv4-only database cannot answer


def test_missing_or_broken_database_gives_empty_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = GeoLookup(tmp_path / "absent.mmdb")
    assert not missing.available and missing("203.0.113.5") == EMPTY_GEO
    assert "unusable" in caplog.text
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"this is not a maxmind database" * 10)
    assert GeoLookup(broken)("203.0.113.5") == EMPTY_GEO
    none = GeoLookup(None)
    assert none("203.0.113.5") == EMPTY_GEO and none.fingerprint == "none"


def test_fingerprint_and_cache(city_db: Path) -> None:
    geo = GeoLookup(city_db, cache_size=2)
    assert geo.fingerprint.startswith("Test-City@")
    geo("203.0.113.1")
    geo("203.0.113.1")
    assert geo.cache_info().hits == 1
    geo.close()
    assert geo("203.0.113.1") == EMPTY_GEO


def test_record_junk() -> None:
    assert geo_from_record(None) == EMPTY_GEO
    assert geo_from_record({"country": "DE", "subdivisions": "x", "city": []}) == EMPTY_GEO
    assert geo_from_record({"subdivisions": [{"iso_code": "BY"}]}) == Geo("", "BY", "")

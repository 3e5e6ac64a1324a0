"""IP → country, region, city from a user-supplied MaxMind-format database (GeoLite2/GeoIP2, DB-IP...).

Why user-supplied: the databases' licences forbid redistributing them, so the hub ships none;
an operator downloads one (GeoLite2-City or -Country, DB-IP City Lite, IPinfo's mmdb) and points
the config at it. Without one, or with a broken one, every lookup answers empty values: geo is a
nice-to-have, never a reason to stop enrichment.

Output, all ``""`` when unknown:

- ``country``: ISO 3166-1 alpha-2 ("DE"), falling back to the *registered* country when the
  database has no location country for the network (anycast, some mobile carriers);
- ``region``: ISO 3166-2 code of the first (largest) subdivision ("DE-BY"), as Plausible stores
  it, or its English name when the database has no code;
- ``city``: the English city name ("Munich"); a Country database gives only ``country``.

Truncated addresses work as they are: ``203.0.113.0`` (or ``203.0.113.0/24``) looks up the /24's
network, which in City databases is nearly always the same record as the full address, so the hub
may truncate IPs at ingest and still geolocate later. Anything that is not an address (the edge's
keyed hashes, garbage) answers empty values.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import maxminddb

from edgekite.visitor import normalise_ip

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 65_536


class Geo(NamedTuple):
    country: str
    region: str
    city: str


EMPTY_GEO = Geo("", "", "")


def _name(record: Any, language: str) -> str:
    if not isinstance(record, dict):
        return ""
    names = record.get("names")
    if not isinstance(names, dict) or not names:
        return ""
    name = names.get(language) or names.get("en") or next(iter(names.values()))
    return name if isinstance(name, str) else ""


def _iso(record: Any) -> str:
    if not isinstance(record, dict):
        return ""
    code = record.get("iso_code")
    return code.upper() if isinstance(code, str) else ""


def geo_from_record(record: Any, language: str = "en") -> Geo:
    """A :class:`Geo` from one MaxMind City/Country-schema record (``{}`` or junk: empty values)."""
    if not isinstance(record, dict):
        return EMPTY_GEO
    country = _iso(record.get("country")) or _iso(record.get("registered_country"))
    region = ""
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions:
        first = subdivisions[0]
        code = _iso(first)
        # ISO 3166-2 is "<country>-<subdivision>"; databases store only the second half.
        region = (f"{country}-{code}" if country else code) if code else _name(first, language)
    return Geo(country, region, _name(record.get("city"), language))


class GeoLookup:
    """``lookup(ip) -> Geo`` over one MaxMind-format database, cached per address.

    Args:
        path: the ``.mmdb`` file; ``None``, missing or unreadable means "no geo" (logged once).
        language: the ``names`` language to prefer for region and city names.
    """

    def __init__(
        self, path: str | Path | None, *, language: str = "en", cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.language = language
        self._reader: maxminddb.Reader | None = None
        self.database_type = ""
        self.build_epoch = 0
        if self.path is not None:
            try:
                self._reader = maxminddb.open_database(str(self.path))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                logger.warning("geo database %s unusable, geo columns stay empty: %s", self.path, exc)
            else:
                meta = self._reader.metadata()
                self.database_type = str(meta.database_type)
                self.build_epoch = int(meta.build_epoch)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @property
    def available(self) -> bool:
        """Whether a database is open (else every lookup answers :data:`EMPTY_GEO`)."""
        return self._reader is not None

    @property
    def fingerprint(self) -> str:
        """Identifies the database build: changes when the operator installs a new one."""
        return f"{self.database_type}@{self.build_epoch}" if self._reader is not None else "none"

    def __call__(self, ip: str) -> Geo:
        """The location of ``ip`` (a full or truncated address); :data:`EMPTY_GEO` if unknown."""
        if self._reader is None or not ip:
            return EMPTY_GEO
        return self._cached(ip)

    lookup = __call__

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()

    def _lookup_uncached(self, ip: str) -> Geo:
        reader = self._reader
        address = normalise_ip(ip)
        if reader is None or not address:
            return EMPTY_GEO
        try:
            record = reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):  # IPv6 in an IPv4-only DB, corrupt node
            return EMPTY_GEO
        return geo_from_record(record, self.language)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._cached.cache_clear()

    def __enter__(self) -> GeoLookup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

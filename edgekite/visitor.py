"""Cookieless visitor ids and IP truncation, shared by hub ingest (which sees raw IPs) and enrichment.

Why this module is in ``edgekite`` and not ``hub_enrich``: the hub must compute a visitor id while
the raw IP is still in the event, i.e. at ingest, *before* the IP is dropped or truncated for
storage (the hub never stores raw visitor IPs by default). Enrichment, which may run again much
later (``--rerun``), then reads the stored id; it can only compute one itself while an IP and the
day's salt still exist.

The scheme is Plausible's: ``visitor_id = hash(salt, site, ip, user_agent)`` with a random salt
per UTC day that is deleted after ``keep_days``. Within a day (and a site) the same browser on the
same address gets the same id, so visitors and visits can be counted; across days, or once the
salt is gone, nobody (the hub operator included) can link the id back to an address or to the
same person's id on another day. No cookie, no device fingerprint stored.

Everything here is pure: storing the salts (a small table or file) is the caller's I/O.
:class:`DailySalts` only decides which salt applies to an event and which salts have expired.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DAY_MS = 86_400_000
SALT_BYTES = 32
"""Salt length: 256 bits from :func:`secrets.token_bytes`; BLAKE2b accepts keys up to 64 bytes."""

_SEP = b"\x00"


def visitor_id(site: str, ip: str, user_agent: str, salt: bytes) -> int:
    """A UInt64 visitor id: keyed BLAKE2b-64 of ``site``, ``ip`` and ``user_agent`` under ``salt``.

    The salt is the BLAKE2b *key* (a MAC, not a plain prefix), so the id reveals nothing about
    its inputs without the salt, and the parts are NUL-separated so ``("ab", "c")`` and
    ``("a", "bc")`` cannot collide by concatenation. ``ip`` is used as given: an address the edge
    replaced by a keyed hash (``pii = "hash"``) still identifies one visitor consistently.
    The result fits ClickHouse ``UInt64``; 0 is never returned, so callers can use 0 as
    "no visitor id" (the chance of a real 0 is 2^-64, mapped to 1).
    """
    if not salt:
        raise ValueError("visitor_id needs a non-empty salt")
    h = hashlib.blake2b(digest_size=8, key=salt[:64])
    h.update(site.encode("utf-8", "surrogatepass"))
    h.update(_SEP)
    h.update(ip.encode("utf-8", "surrogatepass"))
    h.update(_SEP)
    h.update(user_agent.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big") or 1


def _parse_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = ip.strip()
    if not text:
        return None
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" as some proxies write it
        text = text[1 : text.index("]")]
    text = text.split("%", 1)[0]  # zone index of a link-local address
    if "/" in text:  # an already truncated "203.0.113.0/24"
        text = text.split("/", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # "::ffff:203.0.113.7" is an IPv4 visitor behind a dual-stack socket
    return addr


# The stdlib's ipaddress parser is pure Python (~10 µs an address) and a batch repeats its
# visitors' addresses, so both helpers are memoised. The caches live in memory only, bounded,
# in the process that already holds those addresses in the batch it is decoding.
_IP_CACHE = 16_384


@functools.lru_cache(maxsize=_IP_CACHE)
def normalise_ip(ip: str) -> str:
    """The canonical text of an address ("" if ``ip`` is not one), IPv4-mapped IPv6 unwrapped."""
    addr = _parse_ip(ip)
    return "" if addr is None else str(addr)


@functools.lru_cache(maxsize=_IP_CACHE)
def truncate_ip(ip: str, v4_prefix: int = 24, v6_prefix: int = 48) -> str:
    """The network address of ``ip``'s /``v4_prefix`` or /``v6_prefix``: ``"203.0.113.0"``.

    What the hub may keep instead of a raw address: enough for a country/region lookup (most geo
    databases are /24-granular for IPv4) and for network-level abuse analysis, not enough to
    identify a household. /48 is the usual size of one IPv6 site allocation. Anything that is not
    an IP address (empty, a keyed hash from the edge, garbage) gives ``""``: a value that cannot
    be truncated must not be stored.
    """
    if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
        raise ValueError("prefix out of range (IPv4 0..32, IPv6 0..128)")
    addr = _parse_ip(ip)
    if addr is None:
        return ""
    prefix = v4_prefix if addr.version == 4 else v6_prefix
    return str(ipaddress.ip_network((addr, prefix), strict=False).network_address)


def utc_day(ms: int) -> int:
    """Days since 1970-01-01 UTC of a Unix-millisecond time (the salts' key)."""
    return ms // DAY_MS


def new_salt() -> bytes:
    """A fresh random salt (32 bytes from the OS CSPRNG)."""
    return secrets.token_bytes(SALT_BYTES)


@dataclass(frozen=True)
class DailySalts:
    """The set of live salts, keyed by UTC day number, and the rules for using and expiring them.

    ``keep_days`` is how many days' salts exist at once, today included: 2 (the default) keeps
    today's and yesterday's, so an event that arrives a little after midnight, or from an edge
    that was offline since yesterday, still gets its own day's salt, while nothing older than
    about 48 hours can be re-identified. Events whose day has no salt (older than the kept ones,
    or from a device clock in the future) get the salt of the ``fallback_ms`` day, normally the
    hub's receive time: all of a long-offline edge's backlog is then hashed with one salt, which
    keeps that backlog's visitors consistent among themselves.

    Usage by the owner of the salt store (once at start and then every few minutes)::

        salts = DailySalts(load_from_store(), keep_days=2)
        new = salts.rotated(now_ms)          # today's salt created if missing, expired dropped
        save(added=new.added(salts), deleted=salts.expired(now_ms))
    """

    salts: Mapping[int, bytes] = field(default_factory=dict)
    keep_days: int = 2

    def __post_init__(self) -> None:
        if self.keep_days < 1:
            raise ValueError("keep_days must be >= 1 (today's salt)")
        object.__setattr__(self, "salts", MappingProxyType(dict(self.salts)))

    def live_days(self, now_ms: int) -> range:
        """The day numbers whose salts may exist at ``now_ms`` (today and ``keep_days - 1`` before)."""
        today = utc_day(now_ms)
        return range(today - self.keep_days + 1, today + 1)

    def expired(self, now_ms: int) -> list[int]:
        """Days whose salts must be deleted now (older than the kept window), oldest first.

        A salt for a day *after* today (a clock that went backwards) is also dropped: it was never
        used legitimately and keeping it would extend its life.
        """
        live = self.live_days(now_ms)
        return sorted(day for day in self.salts if day not in live)

    def missing(self, now_ms: int) -> list[int]:
        """Days that need a salt now: today's, if it does not exist yet (earlier days never do)."""
        today = utc_day(now_ms)
        return [] if today in self.salts else [today]

    def rotated(self, now_ms: int, make: Callable[[], bytes] = new_salt) -> DailySalts:
        """A copy with today's salt created if missing and the expired ones removed."""
        expired = set(self.expired(now_ms))
        kept = {day: salt for day, salt in self.salts.items() if day not in expired}
        for day in self.missing(now_ms):
            kept[day] = make()
        return DailySalts(kept, self.keep_days)

    def added(self, older: DailySalts) -> dict[int, bytes]:
        """Salts in ``self`` but not in ``older`` (what a rotation created, for the store)."""
        return {day: salt for day, salt in self.salts.items() if day not in older.salts}

    def salt_for(self, observed_at_ms: int, fallback_ms: int | None = None) -> bytes | None:
        """The salt for an event observed at ``observed_at_ms``; see the class doc for the fallback.

        ``None`` when neither day has a salt (the caller then stores visitor id 0: unknown).
        """
        salt = self.salts.get(utc_day(observed_at_ms))
        if salt is None and fallback_ms is not None:
            salt = self.salts.get(utc_day(fallback_ms))
        return salt

    def visitor_id(
        self, site: str, ip: str, user_agent: str, observed_at_ms: int, fallback_ms: int | None = None
    ) -> int:
        """:func:`visitor_id` with the applicable day's salt; 0 when no salt applies or no IP is known."""
        if not ip:
            return 0
        salt = self.salt_for(observed_at_ms, fallback_ms)
        return 0 if salt is None else visitor_id(site, ip, user_agent, salt)


def site_of(data: Any, source_metadata: Any, source_id: str) -> str:
    """The site an event belongs to: ``data.site``, else ``source.metadata.site_id``, else the source.

    One definition for hub ingest (visitor ids are per site) and enrichment (the ``site`` column).
    """
    if isinstance(data, Mapping):
        site = data.get("site")
        if isinstance(site, str) and site:
            return site
    if isinstance(source_metadata, Mapping):
        site = source_metadata.get("site_id")
        if isinstance(site, str) and site:
            return site
    return source_id

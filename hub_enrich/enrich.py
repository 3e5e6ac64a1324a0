"""One stored raw event → its enrichment row: the pure core that the hub's enrichment consumers run.

Input: one row of the hub's ``events`` table as a mapping of its columns
(:data:`edgekite.hubstore.schema.EVENT_COLUMNS`), ``data`` and ``source_metadata`` as JSON text
(as stored) or already parsed, ``event_id`` as text or :class:`uuid.UUID`, times as Unix ms or
:class:`datetime.datetime`. An optional ``visitor_id`` column (UInt64) is used when hub ingest
stored one. Output: the columns in :data:`ENRICHED_COLUMNS`, whose values are plain Python
(``str``, ``int``), ready for an Arrow/columnar insert.

Why pure: enrichment must be re-runnable (``edgekite hub enrich --rerun``) after a parser, list
or definition changes, and give the same answer for the same inputs and lists, so the consumer
can write rows keyed by ``event_id`` with :data:`ENRICHMENT_VERSION` into a ReplacingMergeTree
and a rerun replaces rows instead of adding them. Nothing here reads a clock or a table.

Rules the views rely on (docs/enrichment.md has the full text):

- **site**: ``data.site`` if the producer sent one, else ``source.metadata.site_id``, else
  ``source_id``. The edge's tracker (``t.js``) sends ``source.id = data-site`` (default: the
  page's hostname); the simulator puts ``site_id`` in the source metadata of ``site-N-web``.
- **web events** are ``category == "web"`` (page views and custom events alike). Every other
  event gets the neutral values: ``""`` strings, ``is_bot = 0``, ``device_type = ""``,
  ``channel = ""``; its ``site``, carried columns and a stored visitor id are still filled.
- **keys read from data**: ``url`` (or ``href``, ``path``), ``referrer`` (or ``referer``),
  ``title``, ``user_agent`` (or ``ua``, ``userAgent``), ``ip`` (or ``client_ip``), ``hostname``
  (or ``host``), ``utm_*`` (used when the URL's query lacks them), ``visitor_id``.
- **bots**: see :mod:`hub_enrich.bots`; an *empty* user agent counts as a bot only on events
  that should have one: ``page_view`` or an event whose data has a user-agent key. (The tracker's
  custom events carry no user agent; they must not all become bots.) uap-core's ``Spider`` device
  also makes a bot. A bot's ``device_type`` is ``bot``.
- **visitor_id**: the stored ``visitor_id`` column if non-zero; else a producer-sent
  ``data.visitor_id`` (a login id: hashed, unsalted, with the site, so it is stable across days
  as the producer intends); else ``hash(salt of the day, site, ip, user agent)`` if an IP and a
  salt for the day are known (:class:`edgekite.visitor.DailySalts`); else 0 (unknown).
- **geo** uses ``data.ip`` as stored, full or truncated; the raw IP is never an output column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import orjson

from edgekite.hubstore.enriched import ENRICHED_COLUMNS
from edgekite.visitor import DailySalts, site_of
from hub_enrich.bots import BotDetector
from hub_enrich.geo import EMPTY_GEO, Geo, GeoLookup
from hub_enrich.referrer import UTM_KEYS, RefInfo, SourceList, classify, default_sources, normalise_host
from hub_enrich.ua import UaParser

ENRICHMENT_VERSION: int = 1
"""Bump when a rule in this package changes what a row would hold; the consumer stores it per row
and ``--rerun`` replaces rows of older versions. List/database updates that need no code change
are detected by :attr:`Enricher.fingerprint` instead."""

# The enriched table's columns are storage's to define (edgekite.hubstore.enriched); the
# enricher produces exactly them, in that order.


COLUMN_NAMES: tuple[str, ...] = tuple(ENRICHED_COLUMNS)

MAX_PATH_CHARS = 1024
MAX_TITLE_CHARS = 512
PAGE_VIEW = "page_view"
_UA_KEYS = ("user_agent", "ua", "userAgent")
_URL_KEYS = ("url", "href", "path")
# A non-web event's derived columns between ``site`` and ``visitor_id``: page, referrer and UTM
# (11), user agent (5), is_bot, bot_name, geo (3).
_NON_WEB: tuple[str | int, ...] = ("",) * 16 + (0,) + ("",) * 4


def _ms(value: Any) -> int:
    """Unix milliseconds from an int (as stored by the edge), a float, or a datetime (as read back)."""
    if type(value) is int:
        return value
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if value is None:
        return 0
    return int(value)


def _json(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str | bytes) and value:
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _text(data: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """The first of ``keys`` present in ``data`` as text (``None`` if none is present)."""
    for key in keys:
        value = data.get(key)
        if value is not None:
            return value if isinstance(value, str) else str(value)
    return None


def _looks_like_host(site: str) -> bool:
    return "." in site and not any(c in site for c in " /:@") and not site.startswith(".")


def _hashed_id(site: str, value: str) -> int:
    digest = hashlib.blake2b(f"id\x00{site}\x00{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def page_path(url: str) -> str:
    """The path of a URL without query or fragment (``"/"`` for a bare host; ``""`` for no URL)."""
    if not url:
        return ""
    try:
        path = urlsplit(url.strip()).path
    except ValueError:
        path = url.split("?", 1)[0].split("#", 1)[0]
    return (path or "/")[:MAX_PATH_CHARS]


class Enricher:
    """The enrichment rules bound to their lists: ``enrich(row)``, ``enrich_many(rows)``.

    Args:
        ua: user-agent parser (default: a new :class:`UaParser`).
        bots: bot detector (default: crawlerdetect's list only).
        geo: geo lookup (default: none, geo columns stay empty).
        site_hosts: each site's own hostnames (``{"site-1": ["example.com"]}``): a referrer on one
            of them, or on a subdomain of one, is ``internal``. A site id that is itself a
            hostname (the tracker's default) needs no entry.
        salts: the live daily salts, to compute visitor ids for events that have an IP but no
            stored id. Assign ``enricher.salts`` again after each rotation.
        sources: known referrer sources (default: the packaged list).

    One instance per consumer: the caches inside the parsers are what makes it fast. Not safe to
    share between threads while ``salts`` or ``site_hosts`` are being reassigned.
    """

    def __init__(
        self,
        ua: UaParser | None = None,
        bots: BotDetector | None = None,
        geo: GeoLookup | None = None,
        *,
        site_hosts: Mapping[str, Iterable[str]] | None = None,
        salts: DailySalts | None = None,
        sources: SourceList | None = None,
    ) -> None:
        self.ua = ua if ua is not None else UaParser()
        self.bots = bots if bots is not None else BotDetector()
        self.geo = geo
        self.salts = salts
        self.sources = sources if sources is not None else default_sources()
        self.site_hosts: dict[str, frozenset[str]] = {
            site: frozenset(normalise_host(h) for h in hosts if h)
            for site, hosts in (site_hosts or {}).items()
        }
        self._ua_cache: dict[tuple[str, bool], tuple[str, str, str, str, str, int, str]] = {}
        self._page_cache: dict[
            tuple[str, str, str, str, tuple[str, ...] | None], tuple[str, str, RefInfo]
        ] = {}
        self._cache_limit = 50_000

    # -- identity of the rules ------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the output: code version, parsers, lists, geo DB, hosts.

        The consumer stores it with its watermark; when it differs at start, enrichment rules or
        lists changed and a ``--rerun`` is due (the operator decides; rows are never stale-merged).
        """
        h = hashlib.sha256()
        parts = [
            f"v={ENRICHMENT_VERSION}",
            f"uap={_dist_version('ua-parser')}/{_dist_version('ua-parser-builtins')}",
            f"bots={self.bots.fingerprint}",
            f"geo={self.geo.fingerprint if self.geo is not None else 'none'}",
            f"sources={self.sources.fingerprint}",
            "hosts=" + ";".join(f"{s}:{','.join(sorted(h))}" for s, h in sorted(self.site_hosts.items())),
        ]
        h.update("\n".join(parts).encode())
        return h.hexdigest()[:16]

    # -- per-event pieces (cached) ------------------------------------------------------------

    def _ua_facts(self, ua: str, empty_is_bot: bool) -> tuple[str, str, str, str, str, int, str]:
        key = (ua, empty_is_bot)
        facts = self._ua_cache.get(key)
        if facts is not None:
            return facts
        info = self.ua(ua)
        device_type = info.device_type
        if not ua and not empty_is_bot:
            is_bot, bot_name = 0, ""
        else:
            verdict = self.bots(ua)
            is_bot, bot_name = int(verdict.is_bot), verdict.name
            if verdict.rule != "allow" and device_type == "bot":
                # uap-core knows this crawler: its family ("AhrefsBot") names it better than the
                # token crawlerdetect happened to match ("Ahrefs").
                is_bot, bot_name = 1, info.browser or verdict.name or "(spider)"
            if is_bot:
                device_type = "bot"
            elif device_type == "bot":  # allow-listed, yet uap-core calls it a spider
                device_type = "other"
        facts = (info.browser, info.browser_version, info.os, info.os_version, device_type, is_bot, bot_name)
        if len(self._ua_cache) >= self._cache_limit:
            self._ua_cache.clear()  # a flood of unique UAs: start over rather than grow without bound
        self._ua_cache[key] = facts
        return facts

    def _page(
        self, site: str, url: str, referrer: str, host: str, utm: tuple[str, ...] | None
    ) -> tuple[str, str, RefInfo]:
        key = (site, url, referrer, host, utm)
        hit = self._page_cache.get(key)
        if hit is not None:
            return hit
        hosts = self.site_hosts.get(site, frozenset())
        extra = [normalise_host(h) for h in (host, site if _looks_like_host(site) else "") if h]
        if extra:
            hosts = hosts | frozenset(extra)
        url_host = ""
        if url and "//" in url:
            try:
                url_host = normalise_host(urlsplit(url.strip()).hostname or "")
            except ValueError:
                url_host = ""
        if not url_host and host:
            url_host = normalise_host(host)
        ref = classify(
            url,
            referrer,
            hosts,
            utm=dict(zip(UTM_KEYS, utm, strict=True)) if utm is not None else None,
            sources=self.sources,
        )
        result = (url_host, page_path(url), ref)
        if len(self._page_cache) >= self._cache_limit:
            self._page_cache.clear()
        self._page_cache[key] = result
        return result

    def _visitor(self, row: Mapping[str, Any], data: Mapping[str, Any], site: str, ip: str, ua: str) -> int:
        stored = row.get("visitor_id")
        if stored:
            return int(stored)
        given = data.get("visitor_id")
        if given is not None and given != "":
            return _hashed_id(site, str(given))
        salts = self.salts
        if salts is None or not ip:
            return 0
        fallback = row.get("hub_received_at") or row.get("received_at")
        return salts.visitor_id(
            site, ip, ua, _ms(row.get("observed_at")), _ms(fallback) if fallback is not None else None
        )

    # -- public API -------------------------------------------------------------------------

    def site_of(self, row: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> str:
        """The event's site: ``data.site``, else ``source_metadata.site_id``, else ``source_id``."""
        d = data if data is not None else _json(row.get("data"))
        if isinstance(d.get("site"), str) and d["site"]:
            return str(d["site"])  # the common case, without parsing source_metadata
        return site_of(d, _json(row.get("source_metadata")), str(row.get("source_id") or ""))

    def enrich_tuple(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The enrichment of ``row`` as a tuple in :data:`COLUMN_NAMES` order (the fast path)."""
        data = _json(row.get("data"))
        site = self.site_of(row, data)
        event_id = row.get("event_id")
        carried = (
            event_id if isinstance(event_id, str) else str(event_id or ""),
            _ms(row.get("observed_at")),
            row.get("edge_id") or "",
            row.get("source_id") or "",
            row.get("category") or "",
            row.get("type") or "",
            site,
        )
        if row.get("category") != "web":
            stored = row.get("visitor_id")
            given = data.get("visitor_id")
            vid = int(stored) if stored else (_hashed_id(site, str(given)) if given not in (None, "") else 0)
            return (*carried, *_NON_WEB, vid, ENRICHMENT_VERSION)
        ua_raw = _text(data, _UA_KEYS)
        ua = ua_raw or ""
        facts = self._ua_facts(ua, ua_raw is not None or row.get("type") == PAGE_VIEW)
        url = _text(data, _URL_KEYS) or ""
        referrer = _text(data, ("referrer", "referer")) or ""
        host = _text(data, ("hostname", "host")) or ""
        utm: tuple[str, ...] | None = None
        if "utm_" not in url and "utm_source" in data:
            utm = tuple(str(data.get(k) or "") for k in UTM_KEYS)
        url_host, url_path, ref = self._page(site, url, referrer, host, utm)
        ip = _text(data, ("ip", "client_ip")) or ""
        geo: Geo = self.geo(ip) if self.geo is not None and ip else EMPTY_GEO
        title = data.get("title")
        return (
            *carried,
            url_host,
            url_path,
            title[:MAX_TITLE_CHARS] if isinstance(title, str) else "",
            *ref,
            *facts,
            *geo,
            self._visitor(row, data, site, ip, ua),
            ENRICHMENT_VERSION,
        )

    def enrich(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The enrichment columns of one stored event (see the module doc)."""
        return dict(zip(COLUMN_NAMES, self.enrich_tuple(row), strict=True))

    def enrich_many(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """The enrichment of many events as columns (``{name: [values...]}``), for columnar inserts."""
        tuples = [self.enrich_tuple(row) for row in rows]
        if not tuples:
            return {name: [] for name in COLUMN_NAMES}
        return {
            name: list(values) for name, values in zip(COLUMN_NAMES, zip(*tuples, strict=True), strict=True)
        }

    def enrich_columns(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """:meth:`enrich_many` for input already in columns (e.g. ``arrow_table.to_pydict()``)."""
        names = list(columns)
        return self.enrich_many(
            dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)
        )


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"

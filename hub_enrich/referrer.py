"""Referrer → normalised host, source and channel; UTM parameters from the page URL.

The channel scheme is Google Analytics 4's default channel grouping as Plausible implements it
(``Plausible.Ingestion.Acquisition``), folded onto the seven channels this product shows. First
rule that matches wins:

1. ``internal``: the referrer is the site itself (one of the site's hosts or a subdomain of one,
   or the page URL's own host). A navigation inside the site, whatever the URL's UTM tags say
   (trackers keep the query string across single-page-app navigations).
2. ``campaign`` (paid): ``utm_medium`` is paid (``cpc``, ``ppc``, ``paid*``, ``*cp*``,
   ``retargeting``) or display (``display``, ``banner``, ``cpm``, ``interstitial``,
   ``expandable``), ``utm_campaign`` contains ``cross-network``, or the URL carries an ad click id
   (``gclid``, ``gbraid``, ``wbraid``, ``dclid``, ``msclkid``, ``gad_source``).
3. ``email``: the source is a webmail (list below), or ``utm_source``/``utm_medium`` contains
   ``email``, ``e-mail``, ``e_mail``, ``e mail`` or ``newsletter``.
4. ``social``: the source is a social network, or ``utm_medium`` is ``social``, ``sm``,
   ``social-network``, ``social-media``, ``social network`` or ``social media``.
5. ``search``: the source is a search engine, or ``utm_medium`` is ``organic``.
6. ``campaign`` (other tagged traffic): any ``utm_source``, ``utm_medium`` or ``utm_campaign``.
7. ``referral``: any other referrer.
8. ``direct``: no referrer, no tags.

"The source" is looked up twice, ``utm_source`` first (by name, case-insensitively, or by the
shorthands in the data file: ``fb``, ``ig``, ``yt``...) and then the referrer host, and the first
known one decides the category. ``referrer_source`` is Plausible's *source* dimension: the known
name of ``utm_source`` or of the referrer ("Google" for google.de and google.co.uk alike), else
the raw ``utm_source`` or the referrer host; empty for internal and direct traffic.

Known hosts live in ``hub_enrich/data/referrers.json`` (see its ``_doc``). Hosts are normalised:
lowercase, no port, no trailing dot, and leading ``www.``, ``m.``, ``l.``, ``lm.`` (Facebook's
link shims), ``mobile.`` removed.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

import orjson

CHANNELS: tuple[str, ...] = ("direct", "internal", "search", "social", "email", "campaign", "referral")
CATEGORIES: tuple[str, ...] = ("search", "social", "email")
UTM_KEYS: tuple[str, ...] = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CLICK_ID_KEYS = frozenset({"gclid", "gbraid", "wbraid", "dclid", "msclkid", "gad_source"})
MAX_UTM_CHARS = 256
"""UTM values are cut to this: they are labels, and a bound keeps a hostile URL from bloating rows."""

_STRIP_PREFIXES = ("www.", "m.", "l.", "lm.", "mobile.")
_PAID_MEDIUM = re.compile(r"^(?:.*cp.*|ppc|retargeting|paid.*)$")
_DISPLAY_MEDIUMS = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SOCIAL_MEDIUMS = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
_EMAIL_TAGS = ("email", "e-mail", "e_mail", "e mail", "newsletter")
_ANDROID_APP = "android-app://"
_TLD_LABEL = re.compile(r"^[a-z]{2,6}$")


class RefInfo(NamedTuple):
    referrer_host: str  # normalised host, "android-app://<package>" for Android apps, or ""
    referrer_source: str  # "Google", "Facebook", a raw utm_source, or the host; "" if none
    channel: str  # one of CHANNELS
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_term: str
    utm_content: str


DIRECT = RefInfo("", "", "direct", "", "", "", "", "")


class Known(NamedTuple):
    category: str  # "search" | "social" | "email"
    name: str


@dataclass(frozen=True)
class SourceList:
    """The curated known sources: exact hosts (matched with subdomains), ``name.*`` brands, aliases."""

    hosts: Mapping[str, Known]
    brands: Mapping[str, Known]
    names: Mapping[str, Known]  # lowercase source name or alias -> Known
    fingerprint: str

    @classmethod
    def from_json(cls, text: str | bytes) -> SourceList:
        doc = orjson.loads(text)
        hosts: dict[str, Known] = {}
        brands: dict[str, Known] = {}
        names: dict[str, Known] = {}
        for category in CATEGORIES:
            for name, entries in doc.get(category, {}).items():
                known = Known(category, name)
                names[name.lower()] = known
                for entry in entries:
                    if entry.startswith(_ANDROID_APP):
                        hosts[entry.lower()] = known
                    elif entry.endswith(".*"):
                        brands[entry[:-2].lower()] = known
                    else:
                        hosts[normalise_host(entry)] = known
        for alias, name in doc.get("aliases", {}).items():
            if name.lower() in names:
                names[alias.lower()] = names[name.lower()]
        raw = text if isinstance(text, bytes) else text.encode()
        return cls(hosts, brands, names, hashlib.sha256(raw).hexdigest()[:16])

    @classmethod
    def load(cls, path: str | Path | None = None) -> SourceList:
        """The list in ``path``, or the packaged ``hub_enrich/data/referrers.json``."""
        if path is None:
            return default_sources()
        return cls.from_json(Path(path).read_bytes())

    def by_host(self, host: str) -> Known | None:
        """The known source of a normalised host: longest matching suffix, then ``brand.tld``."""
        if not host:
            return None
        if host.startswith(_ANDROID_APP):
            return self.hosts.get(host)
        hit = self.hosts.get(host)
        if hit is not None:
            return hit
        labels = host.split(".")
        for i in range(1, len(labels) - 1):
            hit = self.hosts.get(".".join(labels[i:]))
            if hit is not None:
                return hit
        # "google.de", "google.co.uk": the brand label then one or two TLD-like labels, nothing before.
        if 2 <= len(labels) <= 3 and all(_TLD_LABEL.match(lab) for lab in labels[1:]):
            return self.brands.get(labels[0])
        return None

    def by_name(self, source: str) -> Known | None:
        """The known source for a ``utm_source`` value: a name, an alias, or a host."""
        if not source:
            return None
        key = source.strip().lower()
        return self.names.get(key) or self.by_host(normalise_host(key))


@functools.cache
def default_sources() -> SourceList:
    """The packaged list, parsed once per process."""
    return SourceList.from_json(resources.files("hub_enrich").joinpath("data/referrers.json").read_bytes())


def normalise_host(host: str) -> str:
    """Lowercase, no port or trailing dot, without a leading www./m./l./lm./mobile. (repeatedly)."""
    h = host.strip().lower()
    if h.startswith("["):  # an IPv6 literal keeps its brackets' content
        return h[1 : h.index("]")] if "]" in h else h[1:]
    h = h.split(":", 1)[0].rstrip(".")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if h.startswith(prefix) and "." in h[len(prefix) :]:
                h = h[len(prefix) :]
                stripped = True
    return h


def referrer_host(referrer: str) -> str:
    """The normalised host of a referrer URL; ``android-app://pkg`` for app referrers; else ``""``.

    Only http(s) and android-app referrers count (``about:blank``, ``file:``, ``chrome://`` do
    not); a bare ``host/path`` without a scheme, as some producers send, is read as http.
    """
    text = referrer.strip()
    if not text:
        return ""
    lower = text.lower()
    if lower.startswith(_ANDROID_APP):
        package = lower[len(_ANDROID_APP) :].split("/", 1)[0]
        return _ANDROID_APP + package if package else ""
    if "://" not in text:
        first = text.split("/", 1)[0]
        if text.startswith("/") or "." not in first or " " in first:
            return ""
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https"):
        return ""
    try:
        host = parts.hostname or ""
    except ValueError:
        return ""
    return normalise_host(host)


def _is_internal(ref_host: str, page_host: str, site_hosts: Collection[str]) -> bool:
    if not ref_host:
        return False
    if page_host and ref_host == page_host:
        return True
    return any(ref_host == host or ref_host.endswith("." + host) for host in site_hosts)


def _clip(value: str) -> str:
    return value.strip()[:MAX_UTM_CHARS]


def classify(
    page_url: str,
    referrer: str,
    site_hosts: Collection[str] = (),
    *,
    utm: Mapping[str, str] | None = None,
    sources: SourceList | None = None,
) -> RefInfo:
    """The referrer's host, source and channel, and the UTM parameters, of one page view.

    Args:
        page_url: the page's URL, absolute or path + query (what the tracker sends).
        referrer: the referrer URL ("" when none).
        site_hosts: the site's own hosts, already normalised (:func:`normalise_host`); a
            referrer on one of them, or on a subdomain of one, is ``internal``.
        utm: UTM values sent beside the URL (the tracker copies them into the event's data);
            used only for keys the URL's query lacks.
        sources: the known sources (default: the packaged list).
    """
    known = sources or default_sources()
    page_host = ""
    query: dict[str, str] = {}
    if page_url:
        try:
            parts = urlsplit(page_url.strip())
            page_host = normalise_host(parts.hostname or "") if parts.netloc else ""
        except ValueError:
            parts = None
        if parts is not None and parts.query:
            for key, value in parse_qsl(parts.query, keep_blank_values=False):
                k = key.lower()
                if k not in query:
                    query[k] = value
    values = [_clip(query.get(key, "")) for key in UTM_KEYS]
    if utm:
        values = [v or _clip(str(utm.get(key) or "")) for v, key in zip(values, UTM_KEYS, strict=True)]
    source, medium, campaign = values[0], values[1].lower(), values[2].lower()
    ref_host = referrer_host(referrer) if referrer else ""

    def info(channel: str, source_name: str) -> RefInfo:
        return RefInfo(ref_host, source_name, channel, *values)

    if _is_internal(ref_host, page_host, site_hosts):
        return info("internal", "")
    by_source = known.by_name(source) if source else None
    by_ref = known.by_host(ref_host) if ref_host else None
    hit = by_source or by_ref
    if source:
        source_name = by_source.name if by_source is not None else source
    else:
        source_name = by_ref.name if by_ref is not None else ref_host
    category = hit.category if hit is not None else ""
    source_lower = source.lower()
    if (
        _PAID_MEDIUM.match(medium)
        or medium in _DISPLAY_MEDIUMS
        or "cross-network" in campaign
        or not CLICK_ID_KEYS.isdisjoint(query)
    ):
        return info("campaign", source_name)
    if category == "email" or any(t in source_lower or t in medium for t in _EMAIL_TAGS):
        return info("email", source_name)
    if category == "social" or medium in _SOCIAL_MEDIUMS:
        return info("social", source_name)
    if category == "search" or medium == "organic":
        return info("search", source_name)
    if source or medium or campaign:
        return info("campaign", source_name)
    if ref_host:
        return info("referral", source_name)
    return info("direct", "")

"""User agent → browser, OS, device type, with uap-core's rules (ua-parser 1.x) and an LRU cache.

Why a cache in front of the parser: uap-core is a few hundred regexes tried in order, 0.3–1 ms
per user agent in pure Python, while real traffic repeats a small set of user agents (a site's
top 1,000 cover nearly every view). A bounded LRU keyed by the exact string turns the steady state
into a dict lookup; the bound keeps memory flat under a flood of random user agents.

Names are normalised for analysts, not for fidelity to uap-core: "Chrome Mobile" and "Chrome" are
one browser (the device type already says mobile), "Mac OS X" is "macOS", iOS on an iPad is
"iPadOS". Unknown is ``""`` everywhere (never "Other"), so views can label it once.

Device type (``desktop``, ``mobile``, ``tablet``, ``bot``, ``other``), first rule that matches:

1. ``bot``: uap-core's device family is ``Spider`` (crawlers uap-core knows). The enricher also
   turns any user agent that :mod:`hub_enrich.bots` flags into ``bot``.
2. ``other``: TVs, set-top boxes, consoles, watches and VR headsets, recognised by tokens in the
   user agent (SmartTV, Tizen/webOS TV, HbbTV, BRAVIA, CrKey, AFT*, Roku, PlayStation, Xbox,
   Nintendo, Quest, Wear OS...). Checked before the OS rules because those devices claim
   Android, Linux or even Windows.
3. ``tablet``: an iPad, or tablet tokens (Tablet, Kindle, Silk, SM-T/SM-X/SM-P Samsung tabs,
   Lenovo TB, Nexus 7/9/10, Kindle Fire KF*), or uap-core's ``Generic_Android_Tablet`` brand, or
   Android *without* a phone token (``Mobile``, ``Opera Mini``; Google's documented convention:
   Android phones send ``Mobile``, tablets do not). iPadOS ≥ 13 in its default "desktop site"
   mode sends a Mac user agent and counts as desktop: nothing in the string tells them apart.
4. ``mobile``: iOS/Android/other phone OSes, iPhone/iPod, or a ``Mobi`` token.
5. ``desktop``: Windows, macOS, ChromeOS, Linux and the BSDs.
6. ``other``: anything else (libraries, unknown devices, empty strings).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import ua_parser
from ua_parser import BasicResolver, Domain, load_builtins

DEFAULT_CACHE_SIZE = 50_000
MAX_UA_CHARS = 1024
"""Longer user agents are cut before parsing: real ones are < 500 chars, and the regexes' cost
grows with the length (the bot detector flags oversized ones anyway)."""

DEVICE_TYPES = frozenset({"desktop", "mobile", "tablet", "bot", "other"})


class UaInfo(NamedTuple):
    """What one user agent says, normalised; ``""`` for unknown."""

    browser: str
    browser_version: str  # "major.minor" ("124.0"), or "major", or ""
    os: str
    os_version: str  # "major.minor" ("17.4", "10.15") or "major" ("10") or ""
    device_type: str  # one of DEVICE_TYPES; "other" when nothing is known


EMPTY_UA = UaInfo("", "", "", "", "other")

# uap-core family -> the name analysts expect. Unlisted families are kept as uap-core spells them.
BROWSER_ALIASES: dict[str, str] = {
    "Other": "",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome WebView",
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "Safari WebView",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "Opera Mini": "Opera Mini",
    "Yandex Browser": "Yandex Browser",
    "Samsung Internet": "Samsung Internet",
    "DuckDuckGo Mobile": "DuckDuckGo",
    "Brave Mobile": "Brave",
    "Vivaldi Mobile": "Vivaldi",
}
OS_ALIASES: dict[str, str] = {
    "Other": "",
    "Mac OS X": "macOS",
    "Chrome OS": "ChromeOS",
    "Ubuntu": "Linux",
    "Kubuntu": "Linux",
    "Fedora": "Linux",
    "Debian": "Linux",
    "Linux Mint": "Linux",
    "Arch Linux": "Linux",
    "Gentoo": "Linux",
    "Red Hat": "Linux",
    "SUSE": "Linux",
    "openSUSE": "Linux",
    "CentOS": "Linux",
    "Mageia": "Linux",
    "Slackware": "Linux",
}

_DESKTOP_OS = frozenset({"Windows", "macOS", "ChromeOS", "Linux", "FreeBSD", "OpenBSD", "NetBSD", "Solaris"})
_MOBILE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS", "Firefox OS", "HarmonyOS"}
)
_OTHER_DEVICE_RE = re.compile(
    r"SmartTV|SMART-TV|Smart-TV|\bTV\b|Tizen[^;)]*TV|Web0S|webOS[. ]TV|HbbTV|NetCast|BRAVIA|AppleTV|"
    r"\btvOS\b|CrKey|\bAFT[A-Z]|GoogleTV|Android TV|\bRoku|PlayStation|Xbox|Nintendo|OculusBrowser|"
    r"\bQuest\b|Wear ?OS|\bWatch\b|VR\b.*Browser",
    re.IGNORECASE,
)
_TABLET_RE = re.compile(
    r"iPad|Tablet|Kindle|\bSilk/|PlayBook|\bSM-[TXP]\d|Lenovo ?TB|\bNexus (?:7|9|10)\b|\bKF[A-Z]{2,4}\b|"
    r"\bTab\b|MediaPad|MatePad|\bGT-P\d",
)
_MOBILE_RE = re.compile(r"Mobi|iPhone|iPod|Opera Mini|Windows Phone")


def _version(major: str | None, minor: str | None) -> str:
    if not major:
        return ""
    return f"{major}.{minor}" if minor else major


def device_type_of(ua: str, os: str, device_family: str, device_brand: str) -> str:
    """The device type by the rules in the module doc (``os`` is the normalised OS name)."""
    if device_family == "Spider":
        return "bot"
    if _OTHER_DEVICE_RE.search(ua):
        return "other"
    if os != "Windows" and (
        device_family.startswith("iPad")
        or device_brand == "Generic_Android_Tablet"
        or _TABLET_RE.search(ua)
        or (os == "Android" and not _MOBILE_RE.search(ua))
    ):
        return "tablet"
    if os in _MOBILE_OS or _MOBILE_RE.search(ua):
        return "mobile"
    if os in _DESKTOP_OS:
        return "desktop"
    return "other"


class UaParser:
    """uap-core parsing with normalised names and an LRU cache; ``parser(ua) -> UaInfo``.

    One instance per consumer process: the rules take ~0.1 s to load and the cache is per
    instance (``lru_cache`` is thread-safe, so threads may share one).
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._parser = ua_parser.Parser(BasicResolver(load_builtins()))
        self._cached = functools.lru_cache(maxsize=cache_size)(self._parse_uncached)

    def __call__(self, ua: str) -> UaInfo:
        """Parse ``ua`` (cached)."""
        if not ua:
            return EMPTY_UA
        return self._cached(ua)

    parse = __call__

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the cache (for metrics)."""
        return self._cached.cache_info()

    def _parse_uncached(self, ua: str) -> UaInfo:
        text = ua[:MAX_UA_CHARS]
        result = self._parser(text, Domain.ALL)
        agent, os_, device = result.user_agent, result.os, result.device
        browser = browser_version = os_name = os_version = ""
        if agent is not None:
            browser = BROWSER_ALIASES.get(agent.family, agent.family)
            if browser:
                browser_version = _version(agent.major, agent.minor)
        device_family = device.family if device is not None else ""
        device_brand = (device.brand or "") if device is not None else ""
        if os_ is not None:
            os_name = OS_ALIASES.get(os_.family, os_.family)
            if os_name:
                os_version = _version(os_.major, os_.minor)
        major = os_version.split(".")[0]
        if os_name == "iOS" and device_family.startswith("iPad") and major.isdigit() and int(major) >= 13:
            os_name = "iPadOS"  # Apple's name for iOS on iPads from version 13 on
        return UaInfo(
            browser,
            browser_version,
            os_name,
            os_version,
            device_type_of(text, os_name, device_family, device_brand),
        )

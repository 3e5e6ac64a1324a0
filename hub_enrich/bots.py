"""Bot detection: crawlerdetect's maintained patterns, plus a local patterns file that needs no release.

Why crawlerdetect: it is the Python port of JayBizzle/Crawler-Detect, the most widely used
maintained crawler list (~1,500 patterns: search engines, SEO tools, AI crawlers, monitors, HTTP
libraries, headless browsers), with an exclusion list that removes tokens real browsers carry
(``Safari/537.36``...) before matching. Upgrading the package upgrades the list.

Why a local file on top: a new crawler shows up in the numbers today, a new package release
comes in weeks. ``BotDetector.from_file(path)`` reads, one per line::

    # comments and blank lines are ignored
    ExampleCrawler          a pattern: a case-insensitive regex searched anywhere in the UA
    acme-monitor/1.         a line that is not a valid regex is used as a literal substring
    !Mozilla/5.0 \\(OurKiosk  a line starting with "!" is an *allow* pattern: never a bot

A ``.json`` file may instead hold crawler-user-agents' format (``[{"pattern": "..."}, ...]``) or a
plain list of pattern strings. After the file changes, re-run enrichment (``--rerun``): verdicts
are stored per event, and bot rows are flagged, never deleted, so the numbers move both ways.

Verdict order (first match wins): allow patterns → extra patterns → empty or absurd user agent →
crawlerdetect. The enricher adds one more signal after these: uap-core's ``Spider`` device
(unless an allow pattern matched).

Empty and absurd user agents *are* flagged: every browser sends a user agent, and the edge's
tracker always includes it, so a page view without one came from a script. "Absurd" means longer
than :data:`MAX_HUMAN_UA_CHARS` (real ones are < 500 chars; longer ones are injection attempts
or fuzzers) or without a single letter (``-``, ``0``). The enricher applies the empty rule only
to events that are expected to carry a user agent (see :mod:`hub_enrich.enrich`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import orjson
from crawlerdetect import __version__ as crawlerdetect_version
from crawlerdetect.providers.crawlers import data as _CRAWLERS
from crawlerdetect.providers.exclusions import data as _EXCLUSIONS

DEFAULT_CACHE_SIZE = 50_000
MAX_HUMAN_UA_CHARS = 1024
_HAS_LETTER = re.compile(r"[A-Za-z]")


class BotVerdict(NamedTuple):
    """Whether a user agent is a bot, what it matched, and which rule decided."""

    is_bot: bool
    name: str  # the matched token ("Googlebot", "python-requests"), or a "(reason)"; "" for humans
    rule: str  # "allow" | "extra" | "empty" | "absurd" | "crawlerdetect" | "" (no rule matched)


HUMAN = BotVerdict(False, "", "")
ALLOWED = BotVerdict(False, "", "allow")


def _compile_line(line: str) -> str:
    """A pattern line as regex source: the line itself if it compiles, else the escaped literal."""
    try:
        re.compile(line)
    except re.error:
        return re.escape(line)
    return line


def _alternation(patterns: Iterable[str]) -> re.Pattern[str] | None:
    sources = [p for p in patterns if p]
    if not sources:
        return None
    return re.compile("|".join(f"(?:{p})" for p in sources), re.IGNORECASE)


def parse_patterns(text: str, *, json_format: bool = False) -> tuple[list[str], list[str]]:
    """``(deny, allow)`` regex sources from a patterns file's text (format in the module doc)."""
    deny: list[str] = []
    allow: list[str] = []
    if json_format:
        items = orjson.loads(text)
        if not isinstance(items, list):
            raise ValueError("a JSON patterns file must hold a list")
        for item in items:
            pattern = item.get("pattern") if isinstance(item, dict) else item
            if isinstance(pattern, str) and pattern.strip():
                deny.append(_compile_line(pattern.strip()))
        return deny, allow
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            if line[1:].strip():
                allow.append(_compile_line(line[1:].strip()))
        else:
            deny.append(_compile_line(line))
    return deny, allow


class BotDetector:
    """``detector(ua) -> BotVerdict``; cached per user agent.

    Args:
        extra_patterns: more deny patterns (regex sources, or literal substrings that do not
            compile), e.g. from :func:`parse_patterns`.
        allow_patterns: patterns that make a user agent human whatever else matches (to undo a
            false positive of the maintained list).
        use_builtin: ``False`` to use only the extra patterns (tests, or a fully local list).
    """

    def __init__(
        self,
        extra_patterns: Iterable[str] = (),
        allow_patterns: Iterable[str] = (),
        *,
        use_builtin: bool = True,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.extra_patterns = tuple(_compile_line(p) for p in extra_patterns if p)
        self.allow_patterns = tuple(_compile_line(p) for p in allow_patterns if p)
        self.use_builtin = use_builtin
        self._extra = _alternation(self.extra_patterns)
        self._allow = _alternation(self.allow_patterns)
        self._crawlers = _alternation(_CRAWLERS) if use_builtin else None
        self._exclusions = _alternation(_EXCLUSIONS) if use_builtin else None
        self._cached = functools.lru_cache(maxsize=cache_size)(self._detect_uncached)

    @classmethod
    def from_file(
        cls, path: str | Path | None, *, use_builtin: bool = True, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> BotDetector:
        """A detector with the built-in list plus the patterns in ``path`` (none if ``path`` is None).

        A missing file is an error (a typo in the config must not silently drop the list).
        """
        deny: list[str] = []
        allow: list[str] = []
        if path is not None:
            p = Path(path)
            text = p.read_text(encoding="utf-8")
            deny, allow = parse_patterns(text, json_format=p.suffix.lower() == ".json")
        return cls(deny, allow, use_builtin=use_builtin, cache_size=cache_size)

    @property
    def fingerprint(self) -> str:
        """A short hash of every list in use: it changes exactly when verdicts may change."""
        h = hashlib.sha256()
        h.update(f"crawlerdetect={crawlerdetect_version if self.use_builtin else '-'}\n".encode())
        for p in self.extra_patterns:
            h.update(b"+" + p.encode() + b"\n")
        for p in self.allow_patterns:
            h.update(b"!" + p.encode() + b"\n")
        return h.hexdigest()[:16]

    def __call__(self, ua: str) -> BotVerdict:
        """The verdict for ``ua`` (cached)."""
        return self._cached(ua)

    detect = __call__

    def is_bot(self, ua: str) -> bool:
        return self._cached(ua).is_bot

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()

    def _detect_uncached(self, ua: str) -> BotVerdict:
        text = ua.strip()
        if self._allow is not None and text and self._allow.search(text):
            return ALLOWED
        if self._extra is not None and text:
            m = self._extra.search(text)
            if m:
                return BotVerdict(True, m.group(0) or "(extra pattern)", "extra")
        if not text:
            return BotVerdict(True, "(empty user agent)", "empty")
        if len(text) > MAX_HUMAN_UA_CHARS:
            return BotVerdict(True, "(oversized user agent)", "absurd")
        if not _HAS_LETTER.search(text):
            return BotVerdict(True, "(no letters in user agent)", "absurd")
        if self._crawlers is not None:
            agent = self._exclusions.sub("", text) if self._exclusions is not None else text
            if agent.strip():
                m = self._crawlers.search(agent)
                if m:
                    return BotVerdict(True, m.group(0).strip() or "(crawler)", "crawlerdetect")
        return HUMAN

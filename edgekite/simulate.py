"""Synthetic traffic for EdgeKite: realistic event envelopes, published over MQTT.

Why this exists: the edge has to be exercised (and benchmarked) with traffic that looks like the
field's, not with ``{"n": 1}`` repeated a million times. Rollups, top-N, HLL uniques, incident
windows, bot filtering and retention all behave differently on skewed, bursty, correlated data,
so the generator reproduces the shapes that matter:

* web page views with Zipf-like page popularity, sessions (a visitor keeps its user agent, IP and
  session id over several views), search/social/email/direct referrers, UTM campaigns and bots;
* camera detections in bursts (an *incident*: several detections of one camera seconds apart that
  share ``correlation.incident_id``), each with a thumbnail *reference* (never inline bytes);
* sensor readings as slowly drifting random walks, so charts and rollups look plausible;
* a heartbeat from every device in turn, ops/app errors, and login attempts with brute-force
  bursts of failures.

Generation (:class:`TrafficGenerator`) is pure and deterministic for a seed, so tests and
benchmarks can replay exactly the same traffic; publishing (:func:`publish`) is a thin, paced
paho-mqtt shell around it that can fan out over several OS processes, because one Python paho
publisher tops out near 9,000 QoS 1 messages/s on the reference machine (see DESIGN.md).

All IP addresses come from the documentation ranges (RFC 5737 / RFC 3849) and all domains from
``example.com``, so simulated data can never be mistaken for, or leak, real personal data.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier as BarrierType
from multiprocessing.synchronize import Event as EventType
from random import Random
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekite.broker_url import BrokerAddress
from edgekite.topics import events_topic

logger = logging.getLogger(__name__)

Envelope = dict[str, Any]
"""An envelope as producers send it: plain JSON-ready data (the pydantic model lives elsewhere)."""

SOURCE_TYPES = frozenset({"browser", "edge_device", "server", "mobile"})
CATEGORIES = frozenset({"web", "iot", "app", "ops", "security"})
SEVERITIES = frozenset({"debug", "info", "warn", "error", "critical"})
RETENTION_CLASSES = frozenset({"short", "standard", "long"})
SCHEMA_VERSION = "1.0"

# What one call of ``next_event`` produces, with its relative weight. Web traffic dominates
# because it does in the field (a site sees far more page views than a farm sees detections);
# detections are picked per *detection*, but arrive in incident bursts, so they cluster in time.
MIX_WEIGHTS: dict[str, int] = {
    "page_view": 50,  # web/page_view from browsers
    "sensor_reading": 16,  # iot/sensor_reading
    "heartbeat": 12,  # ops/heartbeat, round-robin over every device
    "detection": 10,  # iot/{person,vehicle,animal}_detected, in incidents
    "login_attempt": 6,  # security/login_attempt, with brute-force bursts
    "error": 6,  # ops/error (devices, gateway) or app/error (mobile app)
}

DETECTION_LABELS: dict[str, int] = {"person": 50, "vehicle": 30, "animal": 20}
ERROR_SEVERITIES: dict[str, int] = {"warn": 25, "error": 65, "critical": 10}


def now_epoch_ms() -> int:
    """Wall-clock time in Unix milliseconds, the unit the edge stores timestamps in."""
    return time.time_ns() // 1_000_000


def encode_events(envelopes: Sequence[Envelope]) -> bytes:
    """Encode envelopes as one MQTT payload: one object for one envelope, else a JSON array.

    A single envelope is sent bare because that is what the simplest producers send; the edge
    accepts both forms, and batching into an array is only worth it for more than one.
    """
    if not envelopes:
        raise ValueError("encode_events needs at least one envelope")
    if len(envelopes) == 1:
        return orjson.dumps(envelopes[0])
    return orjson.dumps(list(envelopes))


# --------------------------------------------------------------------------------------------
# Static pools. Long, but data: the point is that hub-side enrichment (UA parsing, bot filters,
# referrer normalisation) meets strings that look like the real thing.

# (user agent, device class, weight); device class picks a plausible screen size.
USER_AGENTS: tuple[tuple[str, str, int], ...] = (
    # Chrome
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36"
        ),
        "desktop",
        30,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/123.0.0.0 Safari/537.36"
        ),
        "desktop",
        14,
    ),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36"
        ),
        "desktop",
        12,
    ),
    (
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36"
        ),
        "desktop",
        4,
    ),
    (
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36"
        ),
        "desktop",
        2,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36"
        ),
        "mobile",
        22,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.82 Mobile Safari/537.36"
        ),
        "mobile",
        5,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/123.0.6312.99 Mobile Safari/537.36"
        ),
        "mobile",
        6,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
        ),
        "mobile",
        3,
    ),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
        ),
        "mobile",
        3,
    ),
    # Safari
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1"
        ),
        "mobile",
        24,
    ),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
        ),
        "mobile",
        6,
    ),
    (
        (
            "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
        ),
        "tablet",
        4,
    ),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
        ),
        "desktop",
        9,
    ),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/16.6 Safari/605.1.15"
        ),
        "desktop",
        3,
    ),
    # Firefox
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop", 7),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Firefox/115.0", "desktop", 2),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop", 2),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop", 3),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0", "desktop", 2),
    ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", "mobile", 2),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15"
        ),
        "mobile",
        1,
    ),
    # Edge
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67"
        ),
        "desktop",
        9,
    ),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51"
        ),
        "desktop",
        1,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Mobile Safari/537.36 EdgA/124.0.2478.64"
        ),
        "mobile",
        1,
    ),
    # Opera
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36 OPR/110.0.0.0"
        ),
        "desktop",
        1,
    ),
    # Bots and tools: the hub must filter these, so they have to be here.
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot", 4),
    (
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36 "
            "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        ),
        "bot",
        3,
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bot", 2),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "bot", 2),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "bot", 1),
    ("Mozilla/5.0 (compatible; DuckDuckBot-Https/1.1; https://duckduckgo.com/duckduckbot)", "bot", 1),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "bot", 1),
    ("curl/8.5.0", "tool", 1),
    ("python-requests/2.31.0", "tool", 1),
)

SCREENS: dict[str, tuple[str, ...]] = {
    "desktop": (
        "1920x1080",
        "1920x1080",
        "2560x1440",
        "1366x768",
        "1536x864",
        "1440x900",
        "1680x1050",
        "3840x2160",
        "2880x1800",
    ),
    "mobile": ("390x844", "393x852", "414x896", "360x800", "412x915", "375x667", "430x932"),
    "tablet": ("820x1180", "1024x1366", "810x1080"),
    "bot": ("1024x1024", "412x732"),
    "tool": ("",),
}
LANGUAGES: tuple[str, ...] = (
    "en-US",
    "en-US",
    "en-US",
    "en-GB",
    "de-DE",
    "fr-FR",
    "es-ES",
    "nl-NL",
    "pt-BR",
    "it-IT",
    "pl-PL",
    "ja-JP",
)

# (path, title) of a small marketing site + blog + shop. Popularity is assigned per site.
PAGES: tuple[tuple[str, str], ...] = (
    ("/", "Home"),
    ("/pricing", "Pricing"),
    ("/features", "Features"),
    ("/features/offline-sync", "Offline sync"),
    ("/features/cameras", "Camera integration"),
    ("/features/sensors", "Sensor dashboards"),
    ("/docs", "Documentation"),
    ("/docs/getting-started", "Getting started"),
    ("/docs/install", "Install the edge box"),
    ("/docs/mqtt", "Publishing over MQTT"),
    ("/docs/http-api", "HTTP API"),
    ("/docs/faq", "FAQ"),
    ("/blog", "Blog"),
    ("/blog/offline-first-analytics", "Why offline-first analytics"),
    ("/blog/sqlite-on-the-edge", "SQLite on the edge"),
    ("/blog/camera-false-positives", "Fewer camera false positives"),
    ("/blog/greenhouse-monitoring", "Greenhouse monitoring on a budget"),
    ("/blog/release-2-4", "Release 2.4"),
    ("/blog/privacy-by-design", "Privacy by design"),
    ("/shop", "Shop"),
    ("/shop/edge-box", "Edge box"),
    ("/shop/camera-kit", "Camera kit"),
    ("/shop/sensor-pack", "Sensor pack"),
    ("/cart", "Your cart"),
    ("/checkout", "Checkout"),
    ("/checkout/complete", "Thank you"),
    ("/about", "About us"),
    ("/careers", "Careers"),
    ("/contact", "Contact"),
    ("/login", "Sign in"),
    ("/signup", "Create an account"),
    ("/account", "Your account"),
    ("/status", "System status"),
    ("/case-studies/dairy-farm", "Case study: a dairy farm"),
    ("/case-studies/vineyard", "Case study: a vineyard"),
    ("/privacy", "Privacy policy"),
    ("/terms", "Terms of service"),
    ("/404", "Page not found"),
)

# Referrer classes for the *first* view of a session (later views are internal).
REFERRER_CLASS_WEIGHTS: dict[str, int] = {
    "direct": 30,
    "search": 35,
    "social": 12,
    "email": 6,
    "other": 7,
}
SEARCH_REFERRERS: tuple[tuple[str, str], ...] = (
    ("https://www.google.com/", "google"),
    ("https://www.google.com/", "google"),
    ("https://www.google.de/", "google"),
    ("https://www.google.co.uk/", "google"),
    ("https://www.bing.com/", "bing"),
    ("https://duckduckgo.com/", "duckduckgo"),
)
SOCIAL_REFERRERS: tuple[tuple[str, str], ...] = (
    ("https://l.facebook.com/", "facebook"),
    ("https://www.facebook.com/", "facebook"),
    ("https://t.co/", "twitter"),
    ("https://twitter.com/", "twitter"),
    ("https://www.reddit.com/r/homestead/", "reddit"),
    ("https://out.reddit.com/", "reddit"),
)
EMAIL_REFERRERS: tuple[str, ...] = ("", "", "https://mail.google.com/", "https://outlook.live.com/")
OTHER_REFERRERS: tuple[str, ...] = (
    "https://news.ycombinator.com/",
    "https://github.com/",
    "https://www.producthunt.com/",
    "https://blog.example.org/farm-tech-roundup",
    "https://forum.example.net/t/edge-boxes/42",
)
CAMPAIGNS: dict[str, tuple[str, ...]] = {
    "email": ("weekly_digest", "spring_sale", "launch_2026"),
    "social": ("launch_2026", "spring_sale", "case_study_vineyard"),
    "cpc": ("brand_search", "edge_analytics", "retargeting"),
}

CAMERA_LOCATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("barn", ("barn_door", "feed_alley", "paddock")),
    ("gate", ("gate", "road", "driveway")),
    ("yard", ("yard", "parking", "porch")),
    ("driveway", ("driveway", "garage", "street")),
    ("shed", ("shed_door", "woodpile")),
    ("dock", ("loading_dock", "forklift_lane")),
    ("field", ("north_field", "fence_line")),
    ("coop", ("coop", "run")),
)
SensorSpec = tuple[str, str, str, float, float, float, float, float, float]
"""(name, metric, unit, low, high, start, random-walk step, warn below, warn above)."""

SENSOR_SPECS: tuple[SensorSpec, ...] = (
    ("greenhouse-temp", "temperature", "celsius", -5.0, 45.0, 22.0, 0.15, 5.0, 35.0),
    ("barn-humidity", "humidity", "percent", 10.0, 100.0, 60.0, 0.4, 25.0, 90.0),
    ("tank-level", "level", "percent", 0.0, 100.0, 70.0, 0.3, 15.0, 101.0),
    ("soil-moisture", "moisture", "percent", 0.0, 100.0, 35.0, 0.25, 15.0, 80.0),
    ("coldroom-temp", "temperature", "celsius", -30.0, 15.0, 3.0, 0.08, -1.0, 6.0),
    ("pump-pressure", "pressure", "kPa", 0.0, 600.0, 310.0, 2.0, 150.0, 500.0),
)
LOGIN_USERS: tuple[str, ...] = ("anna", "bram", "chloe", "dev", "farm-manager", "ops", "viewer", "installer")
BRUTE_FORCE_USERS: tuple[str, ...] = (
    "admin",
    "root",
    "pi",
    "ubuntu",
    "test",
    "user",
    "administrator",
    "guest",
    "oracle",
    "support",
)
OPS_ERRORS: tuple[tuple[str, str, str], ...] = (
    ("camera_stream", "E_RTSP_TIMEOUT", "RTSP stream timed out after 10 s"),
    ("camera_stream", "E_DECODE", "H.264 decode error, frame dropped"),
    ("storage", "E_DISK_SLOW", "fsync took 2.4 s"),
    ("storage", "E_DISK_FULL", "media volume above 95 %"),
    ("sensor_bus", "E_MODBUS_CRC", "Modbus CRC mismatch on unit 3"),
    ("sensor_bus", "E_I2C_NACK", "I2C device 0x44 did not acknowledge"),
    ("network", "E_UPLINK_DOWN", "LTE uplink lost, switching to offline mode"),
    ("clock", "E_NTP_UNREACHABLE", "NTP server unreachable, clock may drift"),
    ("edge_bridge", "E_QUEUE_HIGH", "event queue above high-water mark"),
)
APP_ERRORS: tuple[tuple[str, str, str], ...] = (
    ("auth", "E_TOKEN_EXPIRED", "refresh token expired"),
    ("sync", "E_SYNC_CONFLICT", "local edit conflicts with server version"),
    ("api_client", "E_HTTP_503", "upstream returned 503 Service Unavailable"),
    ("api_client", "E_TIMEOUT", "request timed out after 30 s"),
    ("push", "E_PUSH_REJECTED", "push token rejected by provider"),
    ("ui", "E_RENDER", "TypeError: cannot read properties of undefined"),
)

_TWO32 = 2**32


# --------------------------------------------------------------------------------------------
# Generator state


@dataclass
class _Source:
    """One simulated producer: its identity, its sequence counter and the state it drifts."""

    id: str
    type: str
    kind: str  # web | camera | sensor | gateway | app
    site: int
    version: str
    metadata: dict[str, Any]
    seq: int = 0
    boot_ms: int = 0
    cpu: float = 10.0
    memory: float = 40.0
    disk: float = 30.0
    value: float = 0.0
    spec: SensorSpec | None = None
    zones: tuple[str, ...] = ()


@dataclass
class _Visitor:
    """A browser session: what stays fixed across its page views."""

    session_id: str
    user_agent: str
    device: str
    ip: str
    screen: str
    language: str
    views_left: int
    last_url: str | None = None
    is_bot: bool = False


@dataclass
class _Incident:
    """A burst of detections by one camera, timestamps planned up front so they are ordered."""

    incident_id: str
    camera: _Source
    label: str
    times_ms: list[int]
    zone: str
    bbox: list[int]


@dataclass
class _LoginBurst:
    """A brute-force run: one remote IP hammering common usernames."""

    correlation_id: str
    ip: str
    left: int
    method: str


@dataclass
class _Site:
    web: _Source
    app: _Source
    gateway: _Source
    cameras: list[_Source]
    sensors: list[_Source]
    domain: str
    page_order: list[int]
    visitors: list[_Visitor] = field(default_factory=list)
    incident: _Incident | None = None
    login_burst: _LoginBurst | None = None


class _Weighted:
    """Cumulative-weight picker: ``random.choices`` rebuilds cum weights on every call."""

    def __init__(self, items: Sequence[Any], weights: Sequence[float]) -> None:
        self.items = list(items)
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def pick(self, rng: Random) -> Any:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


def _zipf_weights(n: int, s: float = 1.07) -> list[float]:
    """Zipf-ish popularity: the top page gets a large share, a long tail gets the rest."""
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


class TrafficGenerator:
    """Deterministic source of realistic envelopes (no I/O).

    Everything random, event ids included, is drawn from one ``random.Random(seed)``, so a seed
    replays the same traffic; only ``observed_at`` (and uptime derived from it) follows the
    ``now_ms`` clock, which tests can pin.

    Args:
        seed: seed for the private random generator.
        sites: how many sites to simulate; each has a web property, a mobile app, a gateway,
            three cameras and three sensors.
        now_ms: clock in Unix milliseconds; defaults to wall-clock time.
        site_offset: number of the first site minus one. Parallel publishers use disjoint
            offsets so no two processes publish as the same source (which would break the
            per-source ``source_seq`` order the edge relies on).
    """

    CAMERAS_PER_SITE = 3
    SENSORS_PER_SITE = 3
    MAX_ACTIVE_VISITORS = 8

    def __init__(
        self,
        seed: int = 0,
        sites: int = 2,
        now_ms: Callable[[], int] | None = None,
        *,
        site_offset: int = 0,
    ) -> None:
        if sites < 1:
            raise ValueError("sites must be >= 1")
        self._rng = Random(seed)
        self._now_ms = now_ms or now_epoch_ms
        self._kinds = _Weighted(list(MIX_WEIGHTS), list(MIX_WEIGHTS.values()))
        self._uas = _Weighted(USER_AGENTS, [w for _, _, w in USER_AGENTS])
        self._pages = _Weighted(range(len(PAGES)), _zipf_weights(len(PAGES)))
        self._ref_classes = _Weighted(list(REFERRER_CLASS_WEIGHTS), list(REFERRER_CLASS_WEIGHTS.values()))
        self._labels = _Weighted(list(DETECTION_LABELS), list(DETECTION_LABELS.values()))
        self._error_sev = _Weighted(list(ERROR_SEVERITIES), list(ERROR_SEVERITIES.values()))
        start = self._now_ms()
        self.sites = [self._make_site(n, start) for n in range(site_offset + 1, site_offset + sites + 1)]
        # Heartbeats go round-robin over every device, which makes them periodic per device.
        self._devices = [d for s in self.sites for d in (s.gateway, *s.cameras, *s.sensors)]
        self._heartbeat_cursor = 0

    # -- set-up ---------------------------------------------------------------------------

    def _make_site(self, n: int, start_ms: int) -> _Site:
        rng = self._rng
        site_id = f"site-{n}"
        suffix = "" if n == 1 else f"-{n:02d}"

        def source(sid: str, stype: str, kind: str, version: str, **meta: Any) -> _Source:
            return _Source(
                id=sid,
                type=stype,
                kind=kind,
                site=n,
                version=version,
                metadata={"site_id": site_id, **meta},
                # Devices have been up for anything from minutes to a month.
                boot_ms=start_ms - rng.randint(60_000, 30 * 86_400_000),
                cpu=rng.uniform(3, 25),
                memory=rng.uniform(25, 60),
                disk=rng.uniform(10, 70),
            )

        web = source(f"{site_id}-web", "browser", "web", "1.2.3", sdk="edgekite-js")
        app = source(
            f"{site_id}-app",
            "mobile",
            "app",
            f"3.{rng.randint(0, 9)}.{rng.randint(0, 20)}",
            platform=rng.choice(("ios", "android")),
        )
        gateway = source(f"{site_id}-gw", "server", "gateway", "0.9.4", role="edge-gateway")
        cameras = []
        for k in range(self.CAMERAS_PER_SITE):
            index = (n - 1) * self.CAMERAS_PER_SITE + k
            location, zones = CAMERA_LOCATIONS[index % len(CAMERA_LOCATIONS)]
            cam = source(
                f"cam-{location}-{index + 1:02d}",
                "edge_device",
                "camera",
                "2.1.0",
                firmware="nvr-2.1.0",
                resolution="1920x1080",
            )
            cam.zones = zones
            cameras.append(cam)
        sensors = []
        for k in range(self.SENSORS_PER_SITE):
            spec = SENSOR_SPECS[((n - 1) * self.SENSORS_PER_SITE + k) % len(SENSOR_SPECS)]
            sensor = source(
                f"sensor-{spec[0]}{suffix}", "edge_device", "sensor", "1.0.7", firmware="esp32-fw-1.0.7"
            )
            sensor.spec = spec
            sensor.value = spec[5] + rng.uniform(-spec[6], spec[6]) * 10
            sensors.append(sensor)
        page_order = list(range(len(PAGES)))
        rng.shuffle(page_order)
        # Keep the home page the most popular everywhere, as it is on real sites.
        page_order.remove(0)
        page_order.insert(0, 0)
        return _Site(
            web=web,
            app=app,
            gateway=gateway,
            cameras=cameras,
            sensors=sensors,
            domain=f"site{n}.example.com",
            page_order=page_order,
        )

    @property
    def sources(self) -> list[str]:
        """Every source id this generator can publish as."""
        return [src.id for s in self.sites for src in (s.web, s.app, s.gateway, *s.cameras, *s.sensors)]

    # -- helpers --------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _observed(self) -> int:
        # Producers report a little after the fact (buffering, network): up to 1.5 s late.
        return self._now_ms() - self._rng.randint(0, 1500)

    def _ip(self) -> str:
        rng = self._rng
        r = rng.random()
        if r < 0.15:
            return f"2001:db8::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"
        prefix = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
        return f"{prefix}.{rng.randint(1, 254)}"

    def _envelope(
        self,
        src: _Source,
        category: str,
        etype: str,
        severity: str,
        data: dict[str, Any],
        *,
        observed_at: int | None = None,
        correlation: dict[str, str] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        pii: bool = False,
        retention: str = "standard",
        event_id: str | None = None,
    ) -> tuple[str, Envelope]:
        src.seq += 1
        env: Envelope = {
            "event_id": event_id or self._uuid(),
            "observed_at": observed_at if observed_at is not None else self._observed(),
            "source": {
                "type": src.type,
                "id": src.id,
                "version": src.version,
                "metadata": dict(src.metadata),
            },
            "event": {
                "category": category,
                "type": etype,
                "severity": severity,
                "schema_version": SCHEMA_VERSION,
                "data": data,
            },
        }
        if correlation:
            env["correlation"] = correlation
        if attachments:
            env["attachments"] = attachments
        env["privacy"] = {"pii": pii, "retention_class": retention}
        env["sync"] = {"source_seq": src.seq}
        return src.id, env

    # -- public API -----------------------------------------------------------------------

    def next_event(self) -> tuple[str, Envelope]:
        """The next envelope of the mix (see ``MIX_WEIGHTS``) and the source id to publish as."""
        kind = self._kinds.pick(self._rng)
        site = self.sites[self._rng.randrange(len(self.sites))]
        if kind == "page_view":
            return self._page_view(site)
        if kind == "sensor_reading":
            return self._sensor_reading(site)
        if kind == "heartbeat":
            return self._heartbeat()
        if kind == "detection":
            return self._detection(site)
        if kind == "login_attempt":
            return self._login_attempt(site)
        return self._error(site)

    def events(self, count: int) -> list[tuple[str, Envelope]]:
        """``count`` envelopes in a list, for tests and benchmarks that want them up front."""
        return [self.next_event() for _ in range(count)]

    def minimal_event(self) -> tuple[str, Envelope]:
        """The smallest envelope a producer may send: the edge fills in the rest.

        No ``event_id`` (the edge assigns a UUIDv7), no ``source.id`` (taken from the topic), no
        ``observed_at`` (the edge uses receive time), no sequence number. Useful to test the
        edge's defaulting path.
        """
        site = self.sites[self._rng.randrange(len(self.sites))]
        if self._rng.random() < 0.5:
            sensor = self._rng.choice(site.sensors)
            source_id, env = self._sensor_reading(site, sensor)
        else:
            source_id, env = self._heartbeat()
        # Undo the sequence number the full envelope consumed: minimal producers have none,
        # and a gap would look like loss to anything checking source_seq continuity.
        next(s for s in self._devices if s.id == source_id).seq -= 1
        event = env["event"]
        return source_id, {
            "source": {"type": env["source"]["type"]},
            "event": {"category": event["category"], "type": event["type"], "data": event["data"]},
        }

    # -- kinds ----------------------------------------------------------------------------

    def _new_visitor(self, site: _Site) -> _Visitor:
        rng = self._rng
        ua, device, _ = self._uas.pick(rng)
        is_bot = device in ("bot", "tool")
        # Crawlers walk several pages; about 35 % of human sessions bounce after one.
        views = rng.randint(1, 15) if is_bot else 1 if rng.random() < 0.35 else rng.randint(2, 12)
        return _Visitor(
            session_id=self._uuid(),
            user_agent=ua,
            device=device,
            ip=self._ip(),
            screen=rng.choice(SCREENS[device]),
            language="" if device == "tool" else rng.choice(LANGUAGES),
            views_left=views,
            is_bot=is_bot,
        )

    def _landing(self, visitor: _Visitor) -> tuple[str, dict[str, str]]:
        """Referrer and UTM parameters for the first view of a session."""
        rng = self._rng
        if visitor.is_bot:
            return "", {}
        ref_class = self._ref_classes.pick(rng)
        utm: dict[str, str] = {}
        referrer = ""
        if ref_class == "search":
            referrer, engine = rng.choice(SEARCH_REFERRERS)
            if rng.random() < 0.15:  # paid search
                utm = {
                    "utm_source": engine,
                    "utm_medium": "cpc",
                    "utm_campaign": rng.choice(CAMPAIGNS["cpc"]),
                }
        elif ref_class == "social":
            referrer, network = rng.choice(SOCIAL_REFERRERS)
            if rng.random() < 0.5:
                utm = {
                    "utm_source": network,
                    "utm_medium": "social",
                    "utm_campaign": rng.choice(CAMPAIGNS["social"]),
                }
        elif ref_class == "email":
            referrer = rng.choice(EMAIL_REFERRERS)
            utm = {
                "utm_source": "newsletter",
                "utm_medium": "email",
                "utm_campaign": rng.choice(CAMPAIGNS["email"]),
            }
        elif ref_class == "other":
            referrer = rng.choice(OTHER_REFERRERS)
        return referrer, utm

    def _page_view(self, site: _Site) -> tuple[str, Envelope]:
        rng = self._rng
        if not site.visitors or (len(site.visitors) < self.MAX_ACTIVE_VISITORS and rng.random() < 0.3):
            site.visitors.append(self._new_visitor(site))
        visitor = rng.choice(site.visitors)
        # Crawlers do not follow popularity; people do.
        page = rng.randrange(len(PAGES)) if visitor.is_bot else site.page_order[self._pages.pick(rng)]
        path, title = PAGES[page]
        utm: dict[str, str] = {}
        if visitor.last_url is None:
            referrer, utm = self._landing(visitor)
        else:
            referrer = visitor.last_url
        url = path
        if utm:
            url = path + "?" + "&".join(f"{k}={v}" for k, v in utm.items())
        visitor.last_url = f"https://{site.domain}{path}"
        visitor.views_left -= 1
        if visitor.views_left <= 0:
            site.visitors.remove(visitor)
        data: dict[str, Any] = {
            "url": url,
            "referrer": referrer,
            "title": f"{title} | Site {site.web.site}",
            "user_agent": visitor.user_agent,
            "screen": visitor.screen,
            "language": visitor.language,
            "ip": visitor.ip,
            **utm,
        }
        return self._envelope(
            site.web,
            "web",
            "page_view",
            "info",
            data,
            correlation={"session_id": visitor.session_id},
            pii=True,
            retention="standard",
        )

    def _sensor_reading(self, site: _Site, sensor: _Source | None = None) -> tuple[str, Envelope]:
        rng = self._rng
        sensor = sensor or rng.choice(site.sensors)
        assert sensor.spec is not None
        _, metric, unit, low, high, start, step, warn_below, warn_above = sensor.spec
        # Random walk with a gentle pull back to the starting level: drifts, never runs away.
        sensor.value += rng.gauss(0.0, step) + (start - sensor.value) * 0.01
        sensor.value = min(high, max(low, sensor.value))
        value = round(sensor.value, 2)
        severity = "warn" if value < warn_below or value > warn_above else "info"
        return self._envelope(
            sensor,
            "iot",
            "sensor_reading",
            severity,
            {"metric": metric, "value": value, "unit": unit},
            retention="short",
        )

    def _heartbeat(self) -> tuple[str, Envelope]:
        rng = self._rng
        device = self._devices[self._heartbeat_cursor]
        self._heartbeat_cursor = (self._heartbeat_cursor + 1) % len(self._devices)
        observed = self._observed()
        if rng.random() < 0.003:  # the odd reboot, so uptime resets show up on the dashboard
            device.boot_ms = observed - rng.randint(5_000, 60_000)
        device.cpu = min(100.0, max(0.5, device.cpu + rng.gauss(0, 3)))
        device.memory = min(99.0, max(5.0, device.memory + rng.gauss(0, 0.5)))
        device.disk = min(99.5, max(1.0, device.disk + abs(rng.gauss(0, 0.02))))
        queue_size = rng.randint(0, 50) if rng.random() < 0.95 else rng.randint(200, 5000)
        data = {
            "uptime_seconds": max(0, (observed - device.boot_ms) // 1000),
            "cpu_percent": round(device.cpu, 1),
            "memory_percent": round(device.memory, 1),
            "disk_percent": round(device.disk, 1),
            "event_queue_size": queue_size,
        }
        return self._envelope(
            device, "ops", "heartbeat", "info", data, observed_at=observed, retention="short"
        )

    def _detection(self, site: _Site) -> tuple[str, Envelope]:
        rng = self._rng
        incident = site.incident
        if incident is None:
            camera = rng.choice(site.cameras)
            n = rng.randint(2, 8)
            gaps = [rng.randint(500, 4000) for _ in range(n - 1)]
            # Plan the burst ending "now", so every detection is in the past and in order.
            first = self._now_ms() - sum(gaps) - rng.randint(0, 1500)
            times = list(itertools.accumulate(gaps, initial=first))
            incident = _Incident(
                incident_id=self._uuid(),
                camera=camera,
                label=self._labels.pick(rng),
                times_ms=times,
                zone=rng.choice(camera.zones),
                bbox=[rng.randint(0, 1500), rng.randint(0, 700), 0, 0],
            )
            w, h = {"person": (60, 160), "vehicle": (260, 170), "animal": (120, 80)}[incident.label]
            incident.bbox[2:] = [w, h]
            site.incident = incident
        observed = incident.times_ms.pop(0)
        if not incident.times_ms:
            site.incident = None
        # The object moves a little between frames.
        bx, by, bw, bh = incident.bbox
        bx = min(1900, max(0, bx + rng.randint(-40, 40)))
        by = min(1060, max(0, by + rng.randint(-20, 20)))
        bw = max(8, int(bw * rng.uniform(0.85, 1.15)))
        bh = max(8, int(bh * rng.uniform(0.85, 1.15)))
        incident.bbox = [bx, by, bw, bh]
        camera = incident.camera
        event_id = self._uuid()
        day = datetime.fromtimestamp(observed / 1000, tz=UTC).strftime("%Y-%m-%d")
        thumbnail = {
            "kind": "thumbnail",
            "uri": f"file:///media/{camera.id}/{day}/{event_id}.jpg",
            "sha256": hashlib.sha256(f"{camera.id}:{event_id}".encode()).hexdigest(),
            "size_bytes": rng.randint(18_000, 95_000),
        }
        data = {
            "camera_id": camera.id,
            "label": incident.label,
            "confidence": round(rng.uniform(0.5, 0.99), 3),
            "bbox": {"x": bx, "y": by, "w": bw, "h": bh},
            "zone": incident.zone,
        }
        return self._envelope(
            camera,
            "iot",
            f"{incident.label}_detected",
            "info",
            data,
            observed_at=observed,
            event_id=event_id,
            correlation={"incident_id": incident.incident_id},
            attachments=[thumbnail],
            retention="long",
        )

    def _login_attempt(self, site: _Site) -> tuple[str, Envelope]:
        rng = self._rng
        burst = site.login_burst
        correlation: dict[str, str] | None = None
        if burst is None and rng.random() < 0.12:
            burst = _LoginBurst(
                correlation_id=self._uuid(),
                ip=self._ip(),
                left=rng.randint(5, 20),
                method=rng.choice(("ssh", "password")),
            )
            site.login_burst = burst
        if burst is not None:
            burst.left -= 1
            if burst.left <= 0:
                site.login_burst = None
            username = rng.choice(BRUTE_FORCE_USERS)
            success, ip, method = False, burst.ip, burst.method
            reason: str | None = rng.choice(("invalid_password", "unknown_user"))
            correlation = {"correlation_id": burst.correlation_id}
        else:
            username = rng.choice(LOGIN_USERS)
            ip = self._ip()
            method = rng.choice(("password", "password", "sso", "ssh_key", "api_token"))
            success = rng.random() < 0.9
            reason = (
                None
                if success
                else rng.choice(("invalid_password", "invalid_password", "expired_token", "mfa_failed"))
            )
        data: dict[str, Any] = {
            "username": username,
            "success": success,
            "method": method,
            "ip": ip,
            "service": "ssh" if method in ("ssh", "ssh_key") else "dashboard",
        }
        if reason is not None:
            data["reason"] = reason
        return self._envelope(
            site.gateway,
            "security",
            "login_attempt",
            "info" if success else "warn",
            data,
            correlation=correlation,
            pii=True,
            retention="long",
        )

    def _error(self, site: _Site) -> tuple[str, Envelope]:
        rng = self._rng
        if rng.random() < 0.6:
            src = rng.choice((site.gateway, *site.cameras, *site.sensors))
            category = "ops"
            component, code, message = rng.choice(OPS_ERRORS)
        else:
            src, category = site.app, "app"
            component, code, message = rng.choice(APP_ERRORS)
        severity = self._error_sev.pick(rng)
        return self._envelope(
            src,
            category,
            "error",
            severity,
            {"component": component, "message": message, "code": code},
            retention="standard",
        )


# --------------------------------------------------------------------------------------------
# Publishing


class PublishError(RuntimeError):
    """The simulator could not publish: bad URL, unreachable or refusing broker, dead worker."""


BrokerURL = BrokerAddress
"""Where to publish: ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://`` (edgekite.broker_url)."""


def parse_broker_url(url: str) -> BrokerAddress:
    """The simulator's ``--mqtt-url``, refused with a PublishError rather than misread."""
    try:
        return BrokerAddress.parse(url, what="MQTT URL")
    except ValueError as exc:
        raise PublishError(str(exc)) from None


@dataclass(frozen=True)
class PublishReport:
    """What a publish run achieved.

    ``sent`` and ``acked`` count envelopes (not MQTT messages). ``seconds`` is the publishing
    time, from the first message after connecting (after all workers connected, with several
    processes) until the last acknowledgement; ``rate`` is acknowledged envelopes per second.
    At QoS 0 "acked" means written to the socket, the only signal there is. ``interrupted``:
    stopped early by Ctrl-C; ``stalled``: stopped early because the broker stopped acknowledging.
    """

    sent: int
    acked: int
    messages: int
    seconds: float
    processes: int = 1
    qos: int = 1
    interrupted: bool = False
    stalled: bool = False

    @property
    def rate(self) -> float:
        """Acknowledged envelopes per second."""
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One human-readable line, the CLI's output."""
        text = (
            f"sent={self.sent} acked={self.acked} messages={self.messages} "
            f"seconds={self.seconds:.2f} rate={self.rate:.0f}/s qos={self.qos} "
            f"processes={self.processes}"
        )
        return text + (" interrupted" if self.interrupted else "") + (" stalled" if self.stalled else "")

    @classmethod
    def combine(cls, reports: Sequence[PublishReport]) -> PublishReport:
        """Sum parallel workers' reports; they started together, so time is the longest."""
        return cls(
            sent=sum(r.sent for r in reports),
            acked=sum(r.acked for r in reports),
            messages=sum(r.messages for r in reports),
            seconds=max((r.seconds for r in reports), default=0.0),
            processes=len(reports),
            qos=reports[0].qos if reports else 1,
            interrupted=any(r.interrupted for r in reports),
            stalled=any(r.stalled for r in reports),
        )


class TokenBucket:
    """Paces a producer at ``rate`` tokens/s without sleeping once per message.

    Tokens may go into debt; we only sleep once the debt is worth at least ``min_sleep``
    seconds, so at 10,000 events/s we sleep ~100 times a second in batches rather than 10,000
    times (``time.sleep`` costs ~60 µs and oversleeps, which would cap the rate). Unused tokens
    accumulate up to ``burst`` so a stall (waiting for acks) is caught up quickly but boundedly.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        min_sleep: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate * 0.05)
        self.min_sleep = min_sleep
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()

    def take(self, n: float = 1.0) -> None:
        """Consume ``n`` tokens, sleeping first if we are too far ahead of the rate."""
        if self.rate <= 0:
            return
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < -self.min_sleep * self.rate:
            self._sleep(-self._tokens / self.rate)


class _Publisher:
    """A connected paho client with a bounded window of unacknowledged messages.

    paho calls ``on_publish`` while holding its own message lock, so the callback only appends
    the packet id to a deque and releases a window slot; the main thread matches ids to envelope
    counts. That keeps the hot path lock-free on our side and cannot deadlock with paho.
    """

    def __init__(
        self,
        broker: BrokerURL,
        *,
        client_id: str,
        qos: int,
        window: int = 1000,
        username: str | None = None,
        password: str | None = None,
        stall_secs: float = 60.0,
    ) -> None:
        self.broker = broker
        self.stall_secs = stall_secs
        self.stalled = False
        self.qos = qos
        self.window = window
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
        )
        self.client.max_inflight_messages_set(window)
        user = username if username is not None else broker.username
        pwd = password if password is not None else broker.password
        if user is not None:
            self.client.username_pw_set(user, pwd)
        if broker.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # system CAs
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._slots = threading.Semaphore(window)
        self._connected = threading.Event()
        self._connect_failure: str | None = None
        self._acked_mids: deque[int] = deque()
        self._pending: dict[int, int] = {}  # mid -> envelopes in that message
        self._early: set[int] = set()  # acked before publish() returned its mid
        self.sent = 0
        self.messages = 0
        self.acked = 0
        self.acked_messages = 0

    # paho callbacks (run on paho's network thread)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._connect_failure = str(reason_code)
        else:
            logger.debug("connected to %s:%d", self.broker.host, self.broker.port)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            logger.warning(
                "disconnected from %s:%d (%s); paho will reconnect",
                self.broker.host,
                self.broker.port,
                reason_code,
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._acked_mids.append(mid)
        self._slots.release()

    # main thread

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for CONNACK, turning every failure into a :class:`PublishError`."""
        where = f"{self.broker.host}:{self.broker.port}"
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise PublishError(f"cannot connect to MQTT broker {where}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout) or self._connect_failure:
            self.close()
            reason = self._connect_failure or f"no CONNACK within {timeout:.0f} s"
            raise PublishError(f"MQTT broker {where} refused the connection: {reason}")

    def _collect_acks(self) -> None:
        while self._acked_mids:
            mid = self._acked_mids.popleft()
            n = self._pending.pop(mid, None)
            if n is None:
                self._early.add(mid)
            else:
                self.acked += n
                self.acked_messages += 1

    def send(
        self, topic: str, payload: bytes, envelopes: int, stop: Callable[[], bool] | None = None
    ) -> bool:
        """Publish one message once a window slot is free.

        Returns False, without publishing, if stopped while waiting or if the broker has
        acknowledged nothing for ``stall_secs``: paho reconnects forever on its own, so without
        this a dead broker would hang a finite run instead of ending it with a report.
        """
        if self.stalled:
            return False
        waited = 0.0
        step = min(1.0, self.stall_secs)
        while not self._slots.acquire(timeout=step):
            waited += step
            if stop is not None and stop():
                return False
            if waited >= self.stall_secs:
                logger.error(
                    "no acknowledgement from %s:%d for %.0f s with %d messages in flight; giving up",
                    self.broker.host,
                    self.broker.port,
                    waited,
                    len(self._pending),
                )
                self.stalled = True
                return False
            if waited % 10 < step:
                logger.warning(
                    "no acknowledgement from the broker for %.0f s (%d messages in flight)",
                    waited,
                    len(self._pending),
                )
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN means queued for the reconnect; anything else is a real refusal.
            self._slots.release()
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.sent += envelopes
        self.messages += 1
        self._collect_acks()
        if info.mid in self._early:
            self._early.discard(info.mid)
            self.acked += envelopes
            self.acked_messages += 1
        else:
            self._pending[info.mid] = envelopes
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until every message sent is acknowledged (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while True:
            self._collect_acks()
            if self.acked_messages >= self.messages:
                return True
            if time.monotonic() >= deadline:
                logger.warning(
                    "gave up waiting: %d of %d messages unacknowledged",
                    self.messages - self.acked_messages,
                    self.messages,
                )
                return False
            time.sleep(0.002)

    def close(self) -> None:
        """Disconnect cleanly and stop paho's thread."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class _Job:
    """One worker's share of a publish run (picklable, for spawned processes)."""

    broker: BrokerURL
    rate: float
    count: int
    seed: int
    qos: int
    batch: int
    sites: int
    site_offset: int
    username: str | None
    password: str | None
    client_id: str
    window: int
    stall_secs: float = 60.0
    linger_secs: float = 1.0
    drain_secs: float = 30.0
    progress_secs: float = 5.0


def _run_job(job: _Job, stop: Callable[[], bool], ready: Callable[[], None] | None = None) -> PublishReport:
    """Generate and publish one worker's share; the single place the hot loop lives."""
    gen = TrafficGenerator(seed=job.seed, sites=job.sites, site_offset=job.site_offset)
    pub = _Publisher(
        job.broker,
        client_id=job.client_id,
        qos=job.qos,
        window=job.window,
        username=job.username,
        password=job.password,
        stall_secs=job.stall_secs,
    )
    pub.connect()
    interrupted = False
    try:
        if ready is not None:
            ready()
        bucket = TokenBucket(job.rate)
        buffers: dict[str, list[Envelope]] = {}
        first_at: dict[str, float] = {}
        topics: dict[str, str] = {}
        started = time.monotonic()
        next_progress = started + job.progress_secs
        # Housekeeping (stop flag, lingering batches, progress) runs on a clock, not every N
        # events, so it stays timely at 5 events/s and costs nothing at 20,000 events/s.
        next_tick = started
        produced = 0

        def flush(source_id: str) -> bool:
            envs = buffers.pop(source_id)
            first_at.pop(source_id, None)
            return pub.send(topics[source_id], encode_events(envs), len(envs), stop)

        try:
            while job.count == 0 or produced < job.count:
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 0.1
                    if stop():
                        interrupted = True
                        break
                    # Quiet sources must not sit on a partial batch for long.
                    for sid in [s for s, t in first_at.items() if now - t >= job.linger_secs]:
                        flush(sid)
                    if now >= next_progress:
                        next_progress = now + job.progress_secs
                        logger.info(
                            "%s: sent %d, acked %d, %.0f events/s",
                            job.client_id,
                            pub.sent,
                            pub.acked,
                            pub.sent / (now - started),
                        )
                bucket.take()
                source_id, env = gen.next_event()
                produced += 1
                topic = topics.get(source_id)
                if topic is None:
                    topic = topics[source_id] = events_topic(source_id)
                if job.batch <= 1:
                    if not pub.send(topic, orjson.dumps(env), 1, stop):
                        interrupted = True
                        break
                else:
                    buf = buffers.get(source_id)
                    if buf is None:
                        buf = buffers[source_id] = []
                        first_at[source_id] = now
                    buf.append(env)
                    if len(buf) >= job.batch and not flush(source_id):
                        interrupted = True
                        break
        except KeyboardInterrupt:
            interrupted = True
        try:
            for sid in list(buffers):
                if not flush(sid):
                    break
            pub.drain(0.0 if pub.stalled else job.drain_secs)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for acknowledgements
            interrupted = True
        seconds = time.monotonic() - started
    finally:
        pub.close()
    return PublishReport(
        sent=pub.sent,
        acked=pub.acked,
        messages=pub.messages,
        seconds=seconds,
        qos=job.qos,
        interrupted=interrupted and not pub.stalled,
        stalled=pub.stalled,
    )


def _worker_main(
    job: _Job,
    stop: EventType,
    barrier: BarrierType,
    results: multiprocessing.Queue[tuple[int, PublishReport | str]],
    index: int,
    log_level: int,
) -> None:
    """Entry point of a spawned publisher process: run one job, report back on the queue."""
    # The parent owns Ctrl-C and tells us through ``stop``; a SIGINT here would kill us before
    # we could flush, drain and report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"
    )

    def ready() -> None:
        # Start together, so the combined report's time is the real wall time of the run.
        barrier.wait(timeout=60)

    try:
        report = _run_job(job, stop.is_set, ready)
    except (PublishError, threading.BrokenBarrierError) as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # report anything, or the parent would wait for nothing
        logger.exception("publisher %d failed", index)
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, report))


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def publish(
    mqtt_url: str,
    rate: float,
    count: int,
    *,
    seed: int = 0,
    qos: int = 1,
    batch: int = 1,
    processes: int = 1,
    username: str | None = None,
    password: str | None = None,
    client_id_prefix: str = "edgekite-sim",
    sites: int = 2,
    window: int = 1000,
    stall_secs: float = 60.0,
) -> PublishReport:
    """Publish ``count`` simulated envelopes to ``ek/v1/<source_id>/events``.

    Args:
        mqtt_url: ``mqtt://host[:port]`` (default port 1883) or ``mqtts://`` (TLS, system CAs,
            default port 8883); credentials may also be given as ``user:password@``.
        rate: total events per second over all processes; ``<= 0`` publishes as fast as the
            broker acknowledges.
        count: envelopes to publish in total; ``0`` runs until Ctrl-C (KeyboardInterrupt), then
            flushes, waits for acknowledgements and returns the report.
        seed: seed of the traffic; worker ``i`` uses its own derived seed.
        qos: MQTT QoS; 1 (the default) waits for a PUBACK per message.
        batch: envelopes per MQTT message; more than one are sent as a JSON array, all from one
            source (a partial batch is flushed after a second so slow sources are not stuck).
        processes: OS processes to split the work over; one Python paho publisher tops out
            near 9,000 QoS 1 messages/s, so benchmarks need several. Each process simulates
            its own ``sites`` sites, so no two processes publish as the same source.
        username: broker user name (overrides one in the URL).
        password: broker password (overrides one in the URL).
        client_id_prefix: MQTT client ids are ``<prefix>-<worker>-<random>``; random so that
            two simulators never take over each other's session.
        sites: sites simulated per process.
        window: maximum unacknowledged messages per process (paho's in-flight limit).
        stall_secs: give up (and report what was acknowledged) when the broker acknowledges
            nothing for this long; paho alone would retry a dead broker forever.

    Returns:
        The combined :class:`PublishReport`.

    Raises:
        PublishError: bad URL or arguments, broker unreachable or refusing, a worker died.
    """
    broker = parse_broker_url(mqtt_url)
    if count < 0:
        raise PublishError("count must be >= 0 (0 = until interrupted)")
    if qos not in (0, 1, 2):
        raise PublishError("qos must be 0, 1 or 2")
    if batch < 1 or processes < 1 or sites < 1 or window < 1:
        raise PublishError("batch, processes, sites and window must be >= 1")
    if stall_secs <= 0:
        raise PublishError("stall_secs must be > 0")
    if count:
        processes = min(processes, count)
    run_id = os.urandom(3).hex()
    counts = _split(count, processes) if count else [0] * processes
    jobs = [
        _Job(
            broker=broker,
            rate=rate / processes if rate > 0 else 0.0,
            count=counts[i],
            seed=seed + i * 1_000_003,
            qos=qos,
            batch=batch,
            sites=sites,
            site_offset=i * sites,
            username=username,
            password=password,
            client_id=f"{client_id_prefix}-{i}-{run_id}",
            window=window,
            stall_secs=stall_secs,
        )
        for i in range(processes)
    ]
    logger.info(
        "publishing %s envelopes to %s:%d at %s with %d process(es), qos %d, batch %d",
        count or "unlimited",
        broker.host,
        broker.port,
        f"{rate:g}/s" if rate > 0 else "full speed",
        processes,
        qos,
        batch,
    )
    # One process runs in-process: no spawn cost, and Ctrl-C lands in its loop directly.
    report = _run_job(jobs[0], lambda: False) if processes == 1 else _publish_parallel(jobs)
    logger.info("done: %s", report.line())
    return report


def _publish_parallel(jobs: list[_Job]) -> PublishReport:
    """Run jobs in spawned processes.

    Spawn rather than fork: the caller may already run threads (a test's subscriber, an
    application's paho loop), and forking a threaded process can copy a held lock into the child.
    The price is spawn's rule that the program's main module must be import-safe (guarded by
    ``if __name__ == "__main__"``), as console-script entry points are.
    """
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    barrier = ctx.Barrier(len(jobs))
    results: multiprocessing.Queue[tuple[int, PublishReport | str]] = ctx.Queue()
    level = logger.getEffectiveLevel()
    procs = [
        ctx.Process(
            target=_worker_main, name=f"sim-{i}", args=(job, stop, barrier, results, i, level), daemon=True
        )
        for i, job in enumerate(jobs)
    ]
    for p in procs:
        p.start()
    reports: dict[int, PublishReport] = {}
    errors: list[str] = []
    try:
        while len(reports) + len(errors) < len(procs):
            try:
                index, outcome = results.get(timeout=0.5)
            except KeyboardInterrupt:
                logger.info("interrupted: stopping publishers")
                stop.set()
                continue
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    codes = ", ".join(f"{p.name} exit code {p.exitcode}" for p in procs)
                    errors.append(
                        f"publisher processes ended without a report ({codes}); "
                        "is the entry point guarded by if __name__ == '__main__'?"
                    )
                    break
                continue
            if isinstance(outcome, str):
                errors.append(f"publisher {index}: {outcome}")
                stop.set()
            else:
                reports[index] = outcome
    finally:
        for p in procs:
            p.join(timeout=max(5.0, jobs[0].drain_secs + 5))
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise PublishError("; ".join(errors))
    return PublishReport.combine([reports[i] for i in sorted(reports)])


# --------------------------------------------------------------------------------------------
# CLI pieces (the lead's ``edgekite`` CLI wires these into a sub-command)


def run_from_args(args: argparse.Namespace) -> int:
    """Run a publish from parsed arguments and print the report as one line.

    Returns 0 when everything sent was acknowledged, 1 when some was not, 2 when publishing
    could not happen at all (the reason goes to stderr).
    """
    try:
        report = publish(
            args.mqtt_url,
            args.rate,
            args.count,
            seed=args.seed,
            qos=args.qos,
            batch=args.batch,
            processes=args.processes,
            username=args.username,
            password=args.password,
            sites=getattr(args, "sites", 2),
        )
    except PublishError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    print(report.line())
    return 0 if report.acked == report.sent else 1

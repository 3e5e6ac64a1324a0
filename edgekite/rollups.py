"""Pure derivations from one event to the keys its rollups count under.

The edge keeps top-N and unique counts at ingest so a 30-day panel reads a few thousand rollup
rows, never millions of events. These functions decide what "a page", "a referrer", "an
error" and "a visitor" are; they are pure so the definitions are tested without a database.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

MAX_KEY_CHARS = 200
DIRECT = "(direct)"

# Dimensions of the per-key rollups (hourly_dims / daily_dims).
DIM_PAGE = "page"
DIM_REFERRER = "referrer"
DIM_ERROR = "error"
# Sketch dimensions (distinct counts).
SKETCH_VISITORS = "visitors"
SKETCH_SOURCES = "sources"

ALERT_SEVERITIES = ("error", "critical")


def _clip(text: str) -> str:
    return text[:MAX_KEY_CHARS]


def page_key(data: dict[str, Any]) -> str | None:
    """The path of a page view's URL, without query or fragment ('/pricing')."""
    url = data.get("url")
    if not isinstance(url, str) or not url:
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return _clip(url.split("?", 1)[0])
    return _clip(path or "/")


def referrer_key(data: dict[str, Any]) -> str:
    """The referrer's host ('www.google.com'), or '(direct)' when there is none."""
    ref = data.get("referrer")
    if not isinstance(ref, str) or not ref.strip():
        return DIRECT
    try:
        host = urlsplit(ref.strip()).hostname
    except ValueError:
        host = None
    return _clip(host) if host else DIRECT


def error_key(event_type: str, data: dict[str, Any]) -> str:
    """'type: code' (or the start of the message) so repeats of one failure group together."""
    for field in ("code", "error_code", "message", "error"):
        value = data.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return _clip(f"{event_type}: {str(value).strip()[:120]}")
    return _clip(event_type)


def visitor_key(data: dict[str, Any]) -> int | None:
    """A page view's visitor: its own visitor_id, else a hash of IP and user agent.

    Hashed so the sketch never holds an address; the hub does the salted, rotating version.
    """
    vid = data.get("visitor_id")
    if isinstance(vid, str) and vid:
        text = f"id\x00{vid}"
    else:
        ip, ua = data.get("ip"), data.get("user_agent")
        if not isinstance(ip, str) or not ip:
            return None
        text = f"{ip}\x00{ua if isinstance(ua, str) else ''}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def is_detection(category: str, event_type: str) -> bool:
    return category == "iot" and event_type.endswith("_detected")


def detection_facts(event_type: str, data: dict[str, Any]) -> tuple[str, float | None]:
    """(label, confidence) of a camera detection."""
    label = data.get("label")
    if not isinstance(label, str) or not label:
        label = event_type.removesuffix("_detected")
    conf = data.get("confidence", data.get("score", data.get("top_score")))
    confidence = float(conf) if isinstance(conf, int | float) and not isinstance(conf, bool) else None
    return label[:64], confidence


# ``rollup_facts`` of an event that adds nothing beyond its hourly/daily counts.
NO_FACTS: tuple[()] = ()


def rollup_facts(category: str, event_type: str, severity: str, data: Any) -> tuple[Any, ...]:
    """What the rollups need of one event's data: ``(page, referrer, visitor, error, label,
    confidence)``, or ``NO_FACTS``.

    Worked out where the event is decoded (the HTTP decode worker, the MQTT bridge child) so
    a row crosses to the writer's process with six small values instead of its parsed payload
    (a third fewer bytes to unpickle there) and the writer's thread, the one that bounds
    ingest, does not parse URLs. Counted only for page views, alerts and camera detections
    whose data is a JSON object; anything else adds no per-key rollup.
    """
    web_view = category == "web" and event_type == "page_view"
    alert = severity in ALERT_SEVERITIES
    detection = is_detection(category, event_type)
    if not (web_view or alert or detection) or not isinstance(data, dict):
        return NO_FACTS
    label, confidence = detection_facts(event_type, data) if detection else (None, None)
    return (
        page_key(data) if web_view else None,
        referrer_key(data) if web_view else None,
        visitor_key(data) if web_view else None,
        error_key(event_type, data) if alert else None,
        label,
        confidence,
    )

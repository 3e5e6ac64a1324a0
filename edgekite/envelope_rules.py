"""The envelope's rules as plain data: enums, patterns, field names, timestamp parsing.

Kept apart from the pydantic models (``edgekite.envelope``) so the bridge's child process can
validate the common envelope on the fast path (``edgekite.ingest``) without importing pydantic,
which was ~11 MB of a 37 MB process. The models import everything here; a test holds the
field-name sets equal to the models' fields.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

SourceType = Literal["browser", "edge_device", "server", "mobile"]
Category = Literal["web", "iot", "app", "ops", "security"]
Severity = Literal["debug", "info", "warn", "error", "critical"]
RetentionClass = Literal["short", "standard", "long"]

SOURCE_TYPES: tuple[str, ...] = SourceType.__args__  # type: ignore[attr-defined]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
SEVERITIES: tuple[str, ...] = Severity.__args__  # type: ignore[attr-defined]
RETENTION_CLASSES: tuple[str, ...] = RetentionClass.__args__  # type: ignore[attr-defined]

# A source id is also an MQTT topic level, so it may not hold '/', '+', '#' or spaces.
SOURCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
# An edge id is an MQTT topic level and a ClickHouse value: narrower than a source id.
EDGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SOURCE_ID_RE = re.compile(SOURCE_ID_PATTERN)
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"

# Attachments are references to media kept out of band; these schemes name a place, not bytes.
ATTACHMENT_SCHEMES = frozenset({"file", "http", "https", "s3", "rtsp", "nvr", "media", "ftp", "sftp"})

# Epoch milliseconds outside this range are not times at all (year 1970..3000); refuse them
# rather than flag them, since no clock is that wrong.
MIN_EPOCH_MS = 0
MAX_EPOCH_MS = 32_503_680_000_000


def parse_timestamp(value: Any) -> int:
    """Epoch milliseconds from an ISO-8601 string or an epoch-ms number.

    Naive ISO times (no offset) are taken as UTC: field devices without a timezone
    database almost always mean UTC, and guessing the edge's local zone would be worse.
    """
    if isinstance(value, bool):
        raise ValueError("a timestamp must be ISO-8601 text or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty timestamp")
        if text.lstrip("-").isdigit():
            ms = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"unparseable timestamp {value[:40]!r}: use ISO-8601 or epoch ms") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ms = int(dt.timestamp() * 1000)
    else:
        raise ValueError("a timestamp must be ISO-8601 text or epoch milliseconds")
    if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
        raise ValueError(f"timestamp {ms} ms is outside 1970..3000")
    return ms


# Field names of each level of the envelope (the models' fields, in the models' order).
ENVELOPE_KEYS = (
    "event_id", "observed_at", "received_at", "source", "event",
    "correlation", "attachments", "privacy", "sync",
)  # fmt: skip
SOURCE_KEYS = ("type", "id", "version", "metadata")
EVENT_KEYS = ("category", "type", "severity", "schema_version", "data")
CORRELATION_KEYS = ("correlation_id", "session_id", "incident_id")
ATTACHMENT_KEYS = ("kind", "uri", "sha256", "size_bytes", "content_type")
PRIVACY_KEYS = ("pii", "retention_class")
SYNC_KEYS = ("source_seq", "synced")

ATTACHMENT_KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
ATTACHMENT_URI_MAX = 2048
ATTACHMENTS_MAX = 32
STR_MAX = 4096  # any string field of the envelope's own structure


def attachment_uri_problem(uri: str) -> str | None:
    """Why an attachment uri is refused (an inline blob, no or an unknown scheme), or None."""
    scheme, sep, _ = uri.partition(":")
    if not sep:
        return "attachment uri needs a scheme (file://, https://, s3://, ...)"
    scheme = scheme.lower()
    if scheme == "data":
        return "inline data: URIs are refused; attachments are references to stored media"
    if scheme not in ATTACHMENT_SCHEMES:
        return f"attachment uri scheme {scheme!r} is not one of {sorted(ATTACHMENT_SCHEMES)}"
    return None

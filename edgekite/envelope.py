"""The event envelope: the one contract every producer, the edge and the hub share.

The models validate MQTT, HTTP and hub input alike. Unknown fields are refused at every
level of the envelope's own structure (a typo must not vanish silently); the free-form parts
(``event.data``, ``source.metadata``) accept any JSON but are bounded in shape by
:func:`edgekite.ingest.check_shape` before they reach these models.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

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
_MIN_MS = 0
_MAX_MS = 32_503_680_000_000


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
    if not _MIN_MS <= ms <= _MAX_MS:
        raise ValueError(f"timestamp {ms} ms is outside 1970..3000")
    return ms


EpochMs = Annotated[int, BeforeValidator(parse_timestamp)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096, frozen=False)


class Source(_Strict):
    type: SourceType
    id: str | None = Field(None, pattern=SOURCE_ID_PATTERN, description="Filled from the topic when absent.")
    version: str | None = Field(None, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)


class EventBody(_Strict):
    category: Category
    type: str = Field(pattern=EVENT_TYPE_PATTERN)
    severity: Severity = "info"
    schema_version: str = Field("1.0", max_length=16)
    data: dict[str, Any] = Field(default_factory=dict)


class Correlation(_Strict):
    correlation_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)
    incident_id: str | None = Field(None, max_length=128)


class Attachment(_Strict):
    kind: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    uri: str = Field(max_length=2048)
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    size_bytes: int | None = Field(None, ge=0)
    content_type: str | None = Field(None, max_length=128)

    @field_validator("uri")
    @classmethod
    def _reference_not_blob(cls, v: str) -> str:
        scheme, sep, _ = v.partition(":")
        if not sep:
            raise ValueError("attachment uri needs a scheme (file://, https://, s3://, ...)")
        scheme = scheme.lower()
        if scheme == "data":
            raise ValueError("inline data: URIs are refused; attachments are references to stored media")
        if scheme not in ATTACHMENT_SCHEMES:
            raise ValueError(f"attachment uri scheme {scheme!r} is not one of {sorted(ATTACHMENT_SCHEMES)}")
        return v


class Privacy(_Strict):
    pii: bool = False
    retention_class: RetentionClass = "standard"


class Sync(_Strict):
    source_seq: int | None = Field(None, ge=0, le=2**63 - 1)
    synced: bool | None = Field(None, description="Accepted for compatibility; the edge owns sync state.")


class Envelope(_Strict):
    """One event, as producers send it."""

    event_id: UUID | None = Field(None, description="UUID; the edge assigns a UUIDv7 when absent.")
    observed_at: EpochMs | None = Field(None, description="When it happened; defaults to received_at.")
    received_at: EpochMs | None = Field(None, description="Always replaced by the edge's clock.")
    source: Source
    event: EventBody
    correlation: Correlation | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=32)
    privacy: Privacy = Field(default_factory=Privacy)
    sync: Sync | None = None


def json_schema() -> dict[str, Any]:
    """The envelope's JSON Schema, for producers and `edgekite schema`."""
    schema = Envelope.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "EdgeKite event envelope"
    return schema

"""The event envelope: the one contract every producer, the edge and the hub share.

The models validate MQTT, HTTP and hub input alike. Unknown fields are refused at every
level of the envelope's own structure (a typo must not vanish silently); the free-form parts
(``event.data``, ``source.metadata``) accept any JSON but are bounded in shape by
:func:`edgekite.ingest.check_shape` before they reach these models.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from edgekite.envelope_rules import (
    ATTACHMENT_KIND_PATTERN,
    ATTACHMENT_SCHEMES,
    ATTACHMENT_URI_MAX,
    ATTACHMENTS_MAX,
    CATEGORIES,
    EDGE_ID_PATTERN,
    EVENT_TYPE_PATTERN,
    RETENTION_CLASSES,
    SEVERITIES,
    SHA256_PATTERN,
    SOURCE_ID_PATTERN,
    SOURCE_ID_RE,
    SOURCE_TYPES,
    STR_MAX,
    Category,
    RetentionClass,
    Severity,
    SourceType,
    attachment_uri_problem,
    parse_timestamp,
)

EpochMs = Annotated[int, BeforeValidator(parse_timestamp)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=STR_MAX, frozen=False)


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
    kind: str = Field(pattern=ATTACHMENT_KIND_PATTERN)
    uri: str = Field(max_length=ATTACHMENT_URI_MAX)
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    size_bytes: int | None = Field(None, ge=0)
    content_type: str | None = Field(None, max_length=128)

    @field_validator("uri")
    @classmethod
    def _reference_not_blob(cls, v: str) -> str:
        problem = attachment_uri_problem(v)
        if problem is not None:
            raise ValueError(problem)
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
    attachments: list[Attachment] = Field(default_factory=list, max_length=ATTACHMENTS_MAX)
    privacy: Privacy = Field(default_factory=Privacy)
    sync: Sync | None = None


def json_schema() -> dict[str, Any]:
    """The envelope's JSON Schema, for producers and `edgekite schema`."""
    schema = Envelope.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "EdgeKite event envelope"
    return schema


__all__ = [
    "ATTACHMENT_SCHEMES",
    "CATEGORIES",
    "EDGE_ID_PATTERN",
    "EVENT_TYPE_PATTERN",
    "RETENTION_CLASSES",
    "SEVERITIES",
    "SOURCE_ID_PATTERN",
    "SOURCE_ID_RE",
    "SOURCE_TYPES",
    "Attachment",
    "Correlation",
    "Envelope",
    "EventBody",
    "Privacy",
    "Source",
    "Sync",
    "json_schema",
    "parse_timestamp",
]

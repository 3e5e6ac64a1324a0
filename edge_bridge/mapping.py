"""Turn messages of foreign topics (an existing NVR, a sensor gateway) into envelopes.

Pure: a mapping from config plus a topic and a decoded payload gives an envelope dict, which
then goes through the same validation as a native envelope.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from uuid import UUID

from edgekite.ingest import derived_event_id

if TYPE_CHECKING:  # annotations only: the bridge's child process runs without pydantic
    from edgekite.config import TopicMapping

_FIELD = re.compile(r"\{([^{}]+)\}")
_NOT_TYPE_CHAR = re.compile(r"[^A-Za-z0-9_.:-]+")
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._:@-]+")


class MappingError(ValueError):
    """The message lacks a field its mapping needs."""


def lookup(path: str, topic_levels: list[str], payload: Any) -> Any:
    """Resolve ``topic[i]`` or a dotted payload path (``after.label``)."""
    if path.startswith("topic[") and path.endswith("]"):
        try:
            return topic_levels[int(path[6:-1])]
        except (ValueError, IndexError):
            raise MappingError(f"topic has no level {path[6:-1]}") from None
    node = payload
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise MappingError(f"payload has no field {path!r}")
    return node


def render(template: str, topic_levels: list[str], payload: Any, extra: dict[str, str] | None = None) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if extra and key in extra:
            return extra[key]
        value = lookup(key, topic_levels, payload)
        if isinstance(value, dict | list):
            raise MappingError(f"field {key!r} is not a scalar")
        return str(value)

    return _FIELD.sub(sub, template)


def map_message(mapping: TopicMapping, topic: str, payload: Any) -> dict[str, Any]:
    """The envelope for one foreign message. Raises MappingError with a reason."""
    levels = topic.split("/")
    source_id = _NOT_ID_CHAR.sub("-", render(mapping.source_id, levels, payload)).strip("-")[:128]
    if not source_id:
        raise MappingError("mapped source id is empty")
    event_type = _NOT_TYPE_CHAR.sub("_", render(mapping.type, levels, payload)).strip("_").lower()[:64]
    if not event_type:
        raise MappingError("mapped event type is empty")
    envelope: dict[str, Any] = {
        "source": {"type": mapping.source_type, "id": source_id},
        "event": {
            "category": mapping.category,
            "type": event_type,
            "severity": mapping.severity,
            "data": payload if isinstance(payload, dict) else {"value": payload},
        },
    }
    if mapping.event_id is not None:
        native = render(mapping.event_id, levels, payload, {"type": event_type})
        envelope["event_id"] = str(UUID(bytes=derived_event_id(mapping.filter, source_id, native)))
    if mapping.observed_at_field is not None:
        value = lookup(mapping.observed_at_field, levels, payload)
        if isinstance(value, int | float) and not isinstance(value, bool) and mapping.observed_at_unit == "s":
            value = int(value * 1000)
        envelope["observed_at"] = value
    return envelope

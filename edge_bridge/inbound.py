"""From one broker message to one store work item: routing, decoding, mapping.

Shared by the paho subscriber (external broker) and the embedded broker's commit gate, so a
message is judged the same whichever way it arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_bridge.mapping import MappingError, map_message
from edgekite.ingest import (
    Decoded,
    Rejection,
    decode_message,
    message_fingerprint,
    parse_json,
    rows_from_objects,
)
from edgekite.topics import matches, source_id_from_topic

if TYPE_CHECKING:  # the bridge's child process decodes without loading the store or pydantic
    from edgekite.config import EdgeConfig, TopicMapping
    from edgekite.store import WriteItem

# Per-item bookkeeping on top of the payload, so the queue's byte bound is honest.
ITEM_OVERHEAD_BYTES = 512


class InboundRouter:
    """Knows which topics carry envelopes and which are mapped, and decodes accordingly."""

    def __init__(self, config: EdgeConfig) -> None:
        self._cfg = config
        self._envelope_filters = list(config.mqtt.topics)
        self._mappings = list(config.mappings)
        # topic -> (source id or None, mapping or None, matched): devices keep publishing on
        # the same few topics, and matching filters level by level is measurable per message.
        self._routes: dict[str, tuple[str | None, TopicMapping | None, bool]] = {}

    @property
    def filters(self) -> list[str]:
        return self._envelope_filters + [m.filter for m in self._mappings]

    ROUTE_CACHE_MAX = 4096

    def _route(self, topic: str) -> tuple[str | None, TopicMapping | None, bool]:
        route = self._routes.get(topic)
        if route is not None:
            return route
        route = (None, None, False)
        for f in self._envelope_filters:
            if matches(f, topic):
                route = (source_id_from_topic(f, topic), None, True)
                break
        else:
            for m in self._mappings:
                if matches(m.filter, topic):
                    route = (None, m, True)
                    break
        if len(self._routes) >= self.ROUTE_CACHE_MAX:  # many distinct topics: start over
            self._routes.clear()
        self._routes[topic] = route
        return route

    def decode(self, topic: str, payload: bytes, received_at: int) -> Decoded:
        sid, mapping, matched = self._route(topic)
        if mapping is not None:
            return self._decode_mapped(mapping, topic, payload, received_at)
        if not matched:
            return Decoded(
                [], [Rejection("bad_topic", f"no route for topic {topic[:200]!r}", None, payload)], False
            )
        if sid is None:
            return Decoded(
                [],
                [Rejection("bad_topic", f"topic {topic[:200]!r} names no valid source id", None, payload)],
                False,
            )
        return decode_message(
            payload,
            topic_source_id=sid,
            received_at=received_at,
            limits=self._cfg.limits,
            require_source_match=self._cfg.mqtt.source_id_must_match_topic,
        )

    def _decode_mapped(self, m: TopicMapping, topic: str, payload: bytes, received_at: int) -> Decoded:
        parsed: Any = parse_json(payload, self._cfg.limits)
        if isinstance(parsed, Rejection):
            if parsed.code != "invalid_json":
                return Decoded([], [parsed], False)
            try:  # plain-text sensor values ("21.5") are common on mapped topics
                parsed = payload.decode("utf-8").strip()
            except UnicodeDecodeError:
                return Decoded([], [parsed], False)
        try:
            envelope = map_message(m, topic, parsed)
        except MappingError as exc:
            return Decoded([], [Rejection("mapping_failed", f"{m.filter}: {exc}", None, payload)], False)
        decoded = rows_from_objects(
            [envelope],
            topic_source_id=None,
            received_at=received_at,
            limits=self._cfg.limits,
            require_source_match=False,
            indexed=False,
        )
        if decoded.rejections:
            r = decoded.rejections[0]
            return Decoded([], [r._replace(raw=payload)], False)
        return decoded

    def build_item(self, topic: str, payload: bytes, redelivery: bool, received_at: int) -> WriteItem:
        from edgekite.store import WriteItem

        decoded = self.decode(topic, payload, received_at)
        return WriteItem(
            decoded=decoded,
            transport="mqtt",
            topic=topic,
            redelivery=redelivery,
            fingerprint=fingerprint_if_needed(decoded, topic, payload),
            size=len(payload) + ITEM_OVERHEAD_BYTES,
        )


def fingerprint_if_needed(decoded: Decoded, topic: str, payload: bytes) -> bytes | None:
    """Only id-less envelopes need one: their ids are minted here, so a redelivery can't match."""
    return message_fingerprint(topic, payload) if decoded.ids_generated else None


def rejection_summary(decoded: Decoded) -> str:
    return "; ".join(f"{r.code}: {r.detail}" for r in decoded.rejections[:3])


__all__ = ["ITEM_OVERHEAD_BYTES", "InboundRouter", "fingerprint_if_needed", "rejection_summary"]

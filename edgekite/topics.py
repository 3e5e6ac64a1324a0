"""The MQTT topic scheme, in one place.

Devices publish to ``ek/v1/<source_id>/events``; the edge forwards to the hub on
``ek/v1/hub/<edge_id>/batch`` and hears acks on ``ek/v1/hub/<edge_id>/ack``.
"""

from __future__ import annotations

from edgekite.envelope_rules import SOURCE_ID_RE

PREFIX = "ek/v1"
EVENTS_FILTER = f"{PREFIX}/+/events"
HUB_SHARE_GROUP = "edgekite-hub"


def events_topic(source_id: str) -> str:
    return f"{PREFIX}/{source_id}/events"


def hub_batch_topic(edge_id: str) -> str:
    return f"{PREFIX}/hub/{edge_id}/batch"


def hub_ack_topic(edge_id: str) -> str:
    return f"{PREFIX}/hub/{edge_id}/ack"


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest), without a client library."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return not (i == 0 and topic.startswith("$"))
        if i >= len(t_levels):
            return False
        if f == "+":
            if i == 0 and t_levels[0].startswith("$"):
                return False
            continue
        if f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def source_id_from_topic(topic_filter: str, topic: str) -> str | None:
    """The level of ``topic`` where ``topic_filter`` has its first ``+``: the source id.

    None when the filter has no ``+`` or the level is not a valid source id.
    """
    f_levels = topic_filter.split("/")
    try:
        i = f_levels.index("+")
    except ValueError:
        return None
    levels = topic.split("/")
    if i >= len(levels):
        return None
    sid = levels[i]
    return sid if SOURCE_ID_RE.match(sid) else None


def hub_status_topic() -> str:
    """Retained ``{"online": bool}`` from the hub (its will says false): edges retry at once."""
    return f"{PREFIX}/hub/status"


def hub_batch_share_filter(group: str = HUB_SHARE_GROUP) -> str:
    """What hub consumers subscribe to: every edge's batches, split across the group."""
    return f"$share/{group}/{PREFIX}/hub/+/batch"


def edge_id_from_batch_topic(topic: str) -> str | None:
    levels = topic.split("/")
    if len(levels) == 5 and levels[:3] == ["ek", "v1", "hub"] and levels[4] == "batch":
        return levels[3]
    return None

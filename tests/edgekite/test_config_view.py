"""The bridge's child reads the edge's validated configuration through a plain, read-only view."""

from __future__ import annotations

import orjson
import pytest

from edgekite.config import EdgeConfig, TopicMapping
from edgekite.config_view import ConfigView


def test_the_view_answers_what_the_models_answer() -> None:
    cfg = EdgeConfig(mappings=[TopicMapping(filter="frigate/events", type="{after.label}_detected")])
    cfg.mqtt.username = "bridge"
    view = ConfigView(orjson.loads(cfg.model_dump_json()))
    assert view.mqtt.client_id == cfg.mqtt.client_id == "edgekite-edge-1"
    assert view.mqtt.username == "bridge"
    assert view.mqtt.topics == tuple(cfg.mqtt.topics)
    assert view.limits.max_message_bytes == cfg.limits.max_message_bytes
    assert [m.type for m in view.mappings] == ["{after.label}_detected"]
    assert view.mappings[0].observed_at_unit == "ms"


def test_the_view_is_read_only_and_names_what_is_missing() -> None:
    view = ConfigView({"mqtt": {"url": "mqtt://a:1"}})
    with pytest.raises(AttributeError, match="read-only"):
        view.mqtt = None
    with pytest.raises(AttributeError, match="'nope'"):
        _ = view.mqtt.nope

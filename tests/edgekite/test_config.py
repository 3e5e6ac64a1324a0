"""Configuration: TOML file, EDGEKITE_* environment overrides, then explicit flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekite.config import env_overrides, load_edge_config, load_hub_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "edge.toml"


def test_defaults_need_no_file() -> None:
    cfg = load_edge_config(environ={})
    assert cfg.mqtt.url == "" and cfg.mqtt.embedded_port == 1883
    assert cfg.mqtt.client_id == "edgekite-edge-1"
    assert cfg.db_path == Path("data/edge.db")


def test_the_shipped_example_loads() -> None:
    cfg = load_edge_config(EXAMPLE, environ={})
    assert cfg.edge.edge_id == "farm-17"
    assert [m.filter for m in cfg.mappings] == ["frigate/events", "zigbee/+/temperature"]


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    f = tmp_path / "edge.toml"
    f.write_text('[mqtt]\nurl = "mqtt://file:1883"\n[retention]\nstandard_days = 10\n')
    env = {"EDGEKITE_MQTT__URL": "mqtt://env:1883", "EDGEKITE_RETENTION__SHORT_DAYS": "2", "OTHER": "x"}
    cfg = load_edge_config(f, environ=env)
    assert (cfg.mqtt.url, cfg.retention.short_days, cfg.retention.standard_days) == ("mqtt://env:1883", 2, 10)
    cfg = load_edge_config(f, environ=env, overrides={"mqtt": {"url": "mqtt://flag:1883"}})
    assert cfg.mqtt.url == "mqtt://flag:1883"


def test_env_values_are_typed() -> None:
    assert env_overrides(
        {"EDGEKITE_STORE__BATCH_MAX_EVENTS": "500", "EDGEKITE_MQTT__TOPICS": '["a/+/b"]'}
    ) == {
        "store": {"batch_max_events": 500},
        "mqtt": {"topics": ["a/+/b"]},
    }


@pytest.mark.parametrize(
    "toml",
    ['[mqtt]\nurll = "x"\n', '[store]\nsynchronous = "OFF"\n', "[http]\nport = 70000\n", "[nonsense]\n"],
)
def test_typos_and_bad_values_are_refused(tmp_path: Path, toml: str) -> None:
    f = tmp_path / "edge.toml"
    f.write_text(toml)
    with pytest.raises(ValidationError):
        load_edge_config(f, environ={})


def test_hub_example_loads_and_hub_variables_have_their_own_prefix() -> None:
    hub_example = EXAMPLE.parent / "hub.toml"
    env = {"EDGEKITE_HUB_HTTP__PORT": "9999", "EDGEKITE_HTTP__PORT": "7777"}
    hub = load_hub_config(hub_example, environ=env)
    assert hub.http.port == 9999 and hub.storage.backend == "chdb" and hub.edges == {}
    edge = load_edge_config(EXAMPLE, environ=env)
    assert edge.http.port == 7777, "an edge never reads the hub's variables, nor the hub the edge's"
    assert edge.sync.enabled is False and edge.sync.client_id == "edgekite-sync-farm-17"


def test_sync_takes_one_transport_and_edge_ids_fit_in_a_topic() -> None:
    with pytest.raises(ValidationError, match="not both"):
        load_edge_config(environ={}, overrides={"sync": {"hub_url": "http://h", "hub_mqtt_url": "mqtt://h"}})
    with pytest.raises(ValidationError):
        load_edge_config(environ={}, overrides={"edge": {"edge_id": "a/b+"}})
    with pytest.raises(ValidationError):
        load_hub_config(environ={}, overrides={"edges": {"bad/id": {"api_key": "k" * 20}}})

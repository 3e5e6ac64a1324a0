"""broker/mosquitto/hub.conf + hub.acl on a real Mosquitto: edge X sends and hears only as X."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.broker.conftest import MosquittoStarter, MqttConnect
from tests.broker.test_broker_mosquitto import make_password_file

MQTT_DIR = Path(__file__).resolve().parents[2] / "broker" / "mosquitto"
HUB = "edgekite-hub"
PASSWORDS = {HUB: "hub-secret", "edge-a": "a-secret", "edge-b": "b-secret"}
SHARE = "$share/edgekite-hub/ek/v1/hub/+/batch"
WAIT = 5.0


def hub_conf_for_test(tmp_path: Path, password_file: Path) -> str:
    """hub.conf's broker-wide part with test paths; start_mosquitto adds a plain listener."""
    lines = (MQTT_DIR / "hub.conf").read_text().splitlines()
    first_listener = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    paths = {
        "password_file": str(password_file),
        "acl_file": str(MQTT_DIR / "hub.acl"),
        "persistence_location": f"{tmp_path / 'db'}/",
        "pid_file": str(tmp_path / "mosquitto.pid"),
    }
    (tmp_path / "db").mkdir(exist_ok=True)
    out = []
    for line in lines[:first_listener]:
        key = line.split(" ", 1)[0]
        out.append(f"{key} {paths.pop(key)}" if key in paths else line)
    assert not paths, f"hub.conf no longer sets {sorted(paths)}"
    assert "allow_anonymous false" in out
    return "\n".join(out)


@pytest.fixture
def port(tmp_path: Path, mosquitto_factory: MosquittoStarter) -> int:
    pw = make_password_file(tmp_path / "hub-passwd", PASSWORDS)
    _, p = mosquitto_factory(hub_conf_for_test(tmp_path, pw))
    return p


def login(user: str) -> dict[str, str]:
    return {"username": user, "password": PASSWORDS[user]}


def test_edges_publish_only_their_own_batches_and_read_only_their_own_acks(
    port: int, mqtt_connect: MqttConnect
) -> None:
    hub, hub_inbox = mqtt_connect(port, "hub-0", **login(HUB), v5=True, subscribe=SHARE)
    edge_a, a_inbox = mqtt_connect(port, "edge-a", **login("edge-a"), subscribe="ek/v1/hub/edge-a/ack")
    # Mosquitto grants a subscription the ACL denies and then withholds every message on it.
    _, a_spy = mqtt_connect(port, "edge-a-spy", **login("edge-a"), subscribe="ek/v1/hub/edge-b/ack")
    _, a_status = mqtt_connect(port, "edge-a-st", **login("edge-a"), subscribe="ek/v1/hub/status")

    for topic, payload in (("ek/v1/hub/edge-b/batch", b"forged"), ("ek/v1/hub/edge-a/batch", b"genuine")):
        edge_a.publish(topic, payload, qos=1).wait_for_publish(WAIT)
    msg = hub_inbox.get(timeout=WAIT)
    assert (msg.topic, msg.payload) == ("ek/v1/hub/edge-a/batch", b"genuine")  # the forged one was dropped

    for topic in ("ek/v1/hub/edge-b/ack", "ek/v1/hub/edge-a/ack"):
        hub.publish(topic, topic.encode(), qos=1).wait_for_publish(WAIT)
    hub.publish("ek/v1/hub/status", b'{"online": true}', qos=1, retain=True).wait_for_publish(WAIT)
    assert a_inbox.get(timeout=WAIT).topic == "ek/v1/hub/edge-a/ack"
    assert a_status.get(timeout=WAIT).payload == b'{"online": true}'
    assert a_spy.empty() and a_inbox.empty()
    assert hub_inbox.empty()

    # An edge may not take the hub's part: neither answer acks nor read others' batches.
    _, b_inbox = mqtt_connect(port, "edge-b", **login("edge-b"), subscribe="ek/v1/hub/edge-b/ack")
    edge_a.publish("ek/v1/hub/edge-b/ack", b"fake ack", qos=1).wait_for_publish(WAIT)
    _, a_reads_batches = mqtt_connect(port, "edge-a-rb", **login("edge-a"), subscribe="ek/v1/hub/+/batch")
    edge_b, _ = mqtt_connect(port, "edge-b-pub", **login("edge-b"))
    edge_b.publish("ek/v1/hub/edge-b/batch", b"b's batch", qos=1).wait_for_publish(WAIT)
    assert hub_inbox.get(timeout=WAIT).payload == b"b's batch"
    assert b_inbox.empty() and a_reads_batches.empty()


def test_wrong_passwords_are_refused(port: int, mqtt_connect: MqttConnect) -> None:
    with pytest.raises(ConnectionRefusedError):
        mqtt_connect(port, "edge-a", username="edge-a", password="wrong")
    with pytest.raises(ConnectionRefusedError):
        mqtt_connect(port, "anon")

"""The production Mosquitto config (broker/mosquitto/) against a real Mosquitto.

Each test starts its own Mosquitto from `edge.conf` as shipped, with only file paths and ports
rewritten (the tests cannot use /etc or port 1883), the repo's `acl` file unchanged, and a
password file made with `mosquitto_passwd`.
"""

from __future__ import annotations

import queue
import subprocess
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

MQTT_DIR = Path(__file__).resolve().parents[2] / "broker" / "mosquitto"
EDGE_CONF = MQTT_DIR / "edge.conf"
ACL = MQTT_DIR / "acl"
TIMEOUT_SECS = 5.0

BRIDGE = "edgekite-bridge"
PASSWORDS = {BRIDGE: "bridge-secret", "cam1": "cam1-secret", "cam2": "cam2-secret"}

Inbox = queue.Queue[mqtt.MQTTMessage]
MqttConnect = Callable[..., tuple[mqtt.Client, Inbox]]
MosquittoStarter = Callable[..., tuple["subprocess.Popen[bytes]", int]]


def make_password_file(path: Path, passwords: dict[str, str]) -> Path:
    """The way the README says to: `mosquitto_passwd`, so the hash format is Mosquitto's own."""
    path.touch()
    for username, password in passwords.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), username, password], check=True, timeout=10)
    return path


def make_tls_files(directory: Path) -> Path:
    """The README's openssl commands, for an edge reachable as 127.0.0.1 / localhost."""
    directory.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-days",
            "3650",
            "-subj",
            "/CN=EdgeKite test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        ["openssl", "req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "825",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    ]
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    for command in commands:
        subprocess.run(command, cwd=directory, check=True, capture_output=True, timeout=30)
    return directory


def edge_conf_for_test(
    tmp_path: Path, password_file: Path, *, tls_port: int | None = None, tls_dir: Path | None = None
) -> str:
    """edge.conf with test paths: its global part, plus (optionally) its TLS device listener.

    The plain bridge listener is left out: `start_mosquitto` adds one on a free port.
    """
    lines = EDGE_CONF.read_text().splitlines()
    first_listener = next(index for index, line in enumerate(lines) if line.startswith("listener "))
    paths = {
        "password_file": str(password_file),
        "acl_file": str(ACL),
        "persistence_location": f"{tmp_path / 'db'}/",
        "pid_file": str(tmp_path / "mosquitto.pid"),
    }
    (tmp_path / "db").mkdir(exist_ok=True)
    out: list[str] = []
    for line in lines[:first_listener]:
        key = line.split(" ", 1)[0]
        out.append(f"{key} {paths.pop(key)}" if key in paths else line)
    assert not paths, f"edge.conf no longer sets {sorted(paths)}"
    assert "allow_anonymous false" in out

    if tls_port is not None:
        assert tls_dir is not None
        tls_start = lines.index("listener 8883")
        for line in lines[tls_start:]:
            key, _, value = line.partition(" ")
            if key == "listener":
                line = f"listener {tls_port} 127.0.0.1"
            elif key in {"cafile", "certfile", "keyfile"}:
                line = f"{key} {tls_dir / Path(value).name}"
            out.append(line)
    return "\n".join(out)


@pytest.fixture
def edge_port(tmp_path: Path, mosquitto_factory: MosquittoStarter) -> int:
    """A Mosquitto running edge.conf's broker-wide settings; the port of its plain listener."""
    password_file = make_password_file(tmp_path / "passwd", PASSWORDS)
    _, port = mosquitto_factory(edge_conf_for_test(tmp_path, password_file))
    return port


def login(user: str) -> dict[str, str]:
    return {"username": user, "password": PASSWORDS[user]}


def publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(TIMEOUT_SECS)
    assert info.is_published(), f"no PUBACK for {topic}"


def test_device_publishes_its_events_and_the_bridge_receives_them(
    edge_port: int, mqtt_connect: MqttConnect
) -> None:
    _, bridge_inbox = mqtt_connect(edge_port, "bridge", **login(BRIDGE), subscribe="ek/v1/+/events")
    cam1, _ = mqtt_connect(edge_port, "cam1", **login("cam1"))

    publish(cam1, "ek/v1/cam1/events", b'{"n": 1}')

    message = bridge_inbox.get(timeout=TIMEOUT_SECS)
    assert (message.topic, message.payload) == ("ek/v1/cam1/events", b'{"n": 1}')


def test_device_cannot_publish_as_another_device(edge_port: int, mqtt_connect: MqttConnect) -> None:
    _, bridge_inbox = mqtt_connect(edge_port, "bridge", **login(BRIDGE), subscribe="ek/v1/+/events")
    cam1, _ = mqtt_connect(edge_port, "cam1", **login("cam1"))

    # MQTT 3.1.1 has no way to refuse a publish: Mosquitto acknowledges it and drops it.
    publish(cam1, "ek/v1/cam2/events", b"forged")
    publish(cam1, "ek/v1/cam1/events", b"genuine")

    # Mosquitto handles one client's messages in order, so the forged one would have come first.
    message = bridge_inbox.get(timeout=TIMEOUT_SECS)
    assert (message.topic, message.payload) == ("ek/v1/cam1/events", b"genuine")
    assert bridge_inbox.empty()


def test_device_cannot_read_other_devices_events(edge_port: int, mqtt_connect: MqttConnect) -> None:
    # Mosquitto 2.0 grants the subscription and then withholds every message the ACL denies.
    _, cam2_inbox = mqtt_connect(edge_port, "cam2", **login("cam2"), subscribe="ek/v1/+/events")
    _, bridge_inbox = mqtt_connect(edge_port, "bridge", **login(BRIDGE), subscribe="ek/v1/+/events")
    cam1, _ = mqtt_connect(edge_port, "cam1", **login("cam1"))

    publish(cam1, "ek/v1/cam1/events", b"private")

    assert bridge_inbox.get(timeout=TIMEOUT_SECS).payload == b"private"
    with pytest.raises(queue.Empty):  # it reached the bridge, so cam2 would have it by now
        cam2_inbox.get(timeout=0.3)


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "cam1", "password": "wrong"},
        {"username": "nobody", "password": "cam1-secret"},
        {},
    ],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_bad_logins_are_refused(
    edge_port: int, mqtt_connect: MqttConnect, credentials: dict[str, str]
) -> None:
    with pytest.raises(ConnectionRefusedError):
        mqtt_connect(edge_port, "intruder", **credentials)


def connect_bridge_session(
    mqtt_connect: MqttConnect, port: int, *, subscribe: str | None = None
) -> tuple[mqtt.Client, Inbox]:
    """The bridge's way in: MQTT v5, a fixed client id, clean_start=False, a session expiry."""
    return mqtt_connect(
        port,
        "edgekite-bridge-edge01",
        **login(BRIDGE),
        v5=True,
        clean_start=False,
        session_expiry_secs=3600,
        subscribe=subscribe,
    )


def test_bridge_session_queues_messages_while_the_bridge_is_away(
    edge_port: int, mqtt_connect: MqttConnect
) -> None:
    bridge, _ = connect_bridge_session(mqtt_connect, edge_port, subscribe="ek/v1/+/events")
    bridge.disconnect()
    bridge.loop_stop()
    cam1, _ = mqtt_connect(edge_port, "cam1", **login("cam1"))

    sent = [f"event {n}".encode() for n in range(5)]
    for payload in sent:
        publish(cam1, "ek/v1/cam1/events", payload)

    # Reconnecting without subscribing: the subscription, and the queue, belong to the session.
    _, inbox = connect_bridge_session(mqtt_connect, edge_port)
    assert [inbox.get(timeout=TIMEOUT_SECS).payload for _ in sent] == sent


def test_bridge_session_survives_a_mosquitto_restart(
    tmp_path: Path, mosquitto_factory: MosquittoStarter, mqtt_connect: MqttConnect
) -> None:
    conf = edge_conf_for_test(tmp_path, make_password_file(tmp_path / "passwd", PASSWORDS))
    proc, port = mosquitto_factory(conf)
    bridge, _ = connect_bridge_session(mqtt_connect, port, subscribe="ek/v1/+/events")
    bridge.disconnect()
    bridge.loop_stop()
    cam1, _ = mqtt_connect(port, "cam1", **login("cam1"))
    sent = [f"event {n}".encode() for n in range(3)]
    for payload in sent:
        publish(cam1, "ek/v1/cam1/events", payload)
    cam1.disconnect()
    cam1.loop_stop()

    proc.terminate()  # a clean stop writes the persistence snapshot (edge.conf: persistence true)
    proc.wait(timeout=TIMEOUT_SECS)
    mosquitto_factory(conf, port=port)

    _, inbox = connect_bridge_session(mqtt_connect, port)
    assert [inbox.get(timeout=TIMEOUT_SECS).payload for _ in sent] == sent


def test_edge_conf_tls_listener_serves_devices(
    tmp_path: Path, mosquitto_factory: MosquittoStarter, mqtt_connect: MqttConnect, unused_tcp_port: int
) -> None:
    tls_dir = make_tls_files(tmp_path / "tls")
    tls_port = unused_tcp_port
    conf = edge_conf_for_test(
        tmp_path, make_password_file(tmp_path / "passwd", PASSWORDS), tls_port=tls_port, tls_dir=tls_dir
    )
    _, plain_port = mosquitto_factory(conf)
    _, bridge_inbox = mqtt_connect(plain_port, "bridge", **login(BRIDGE), subscribe="ek/v1/+/events")

    cam1, _ = mqtt_connect(tls_port, "cam1", **login("cam1"), ca_certs=tls_dir / "ca.crt")
    publish(cam1, "ek/v1/cam1/events", b"over tls")

    message = bridge_inbox.get(timeout=TIMEOUT_SECS)
    assert (message.topic, message.payload) == ("ek/v1/cam1/events", b"over tls")

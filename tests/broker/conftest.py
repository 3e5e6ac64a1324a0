"""Fixtures for the broker tests: real Mosquitto processes and real paho-mqtt clients.

`start_mosquitto` and the fixtures are generic on purpose (nothing EdgeKite-specific), so that
they can move to the top-level `tests/conftest.py` for the other packages' tests.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TIMEOUT_SECS = 5.0
"""Upper bound for anything a test waits for; on success nothing waits nearly that long."""
RECONNECT_MIN_SECS = 0.05
RECONNECT_MAX_SECS = 0.5

Inbox = queue.Queue[mqtt.MQTTMessage]
MqttConnect = Callable[..., tuple[mqtt.Client, Inbox]]
MosquittoStarter = Callable[..., tuple["subprocess.Popen[bytes]", int]]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def start_mosquitto(
    tmp_path: Path, extra_conf: str = "", *, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `mosquitto -c <conf>` with a plain listener on 127.0.0.1 and wait until it accepts.

    The config is `extra_conf` followed by `listener <port> 127.0.0.1`: global options must come
    first in a Mosquitto config, and `extra_conf` may bring listener blocks of its own. Mosquitto 2
    refuses anonymous clients unless `extra_conf` says `allow_anonymous true`. Its log goes to
    `tmp_path/mosquitto-<port>.log`. Pass `port` to restart a broker on the port it had.

    Returns:
        The process (stop it with `stop_mosquitto`) and the plain listener's port.
    """
    port = port or free_port()
    lines = [extra_conf]
    if os.geteuid() == 0:
        # Run as root, Mosquitto switches to user "mosquitto", which cannot read tmp_path.
        lines.append("user root")
    lines.append(f"listener {port} 127.0.0.1")
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    log_path = tmp_path / f"mosquitto-{port}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT_SECS
    while True:
        if proc.poll() is not None:
            msg = f"mosquitto exited with {proc.returncode}:\n{log_path.read_text()}"
            raise RuntimeError(msg)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            if time.monotonic() > deadline:
                stop_mosquitto(proc)
                msg = f"mosquitto did not listen on {port} within {TIMEOUT_SECS} s:\n{log_path.read_text()}"
                raise RuntimeError(msg) from None
            time.sleep(0.01)
        else:
            return proc, port


def stop_mosquitto(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Mosquitto then writes its persistence snapshot), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoStarter]:
    """`start_mosquitto` bound to this test's tmp_path; every broker it starts is stopped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(extra_conf: str = "", *, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
        proc, actual_port = start_mosquitto(tmp_path, extra_conf, port=port)
        procs.append(proc)
        return proc, actual_port

    yield start
    for proc in procs:
        stop_mosquitto(proc)


@pytest.fixture
def mqtt_connect() -> Iterator[MqttConnect]:
    """Connect paho-mqtt clients (network loop in a thread); all are disconnected after the test.

    `connect(port, client_id, *, host, username, password, v5, clean_start, session_expiry_secs,
    subscribe, qos, ca_certs, max_inflight)` blocks until CONNACK (and SUBACK, if `subscribe`
    names a topic filter) and returns the client and a queue of the messages it receives. It
    raises `ConnectionRefusedError` if the broker refuses the login and `PermissionError` if it
    refuses the subscription. It blocks: from async tests whose broker runs in the test's own
    event loop, call it through `asyncio.to_thread`.
    """
    clients: list[mqtt.Client] = []

    def connect(
        port: int,
        client_id: str = "",
        *,
        host: str = "127.0.0.1",
        username: str | None = None,
        password: str | None = None,
        v5: bool = False,
        clean_start: bool = True,
        session_expiry_secs: int | None = None,
        subscribe: str | None = None,
        qos: int = 1,
        ca_certs: Path | None = None,
        max_inflight: int | None = None,
    ) -> tuple[mqtt.Client, Inbox]:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean_start,
        )
        inbox: Inbox = queue.Queue()
        connacks: queue.Queue[ReasonCode] = queue.Queue()
        subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        client.on_connect = lambda _client, _userdata, _flags, reason, _props: connacks.put(reason)
        client.on_message = lambda _client, _userdata, message: inbox.put(message)
        client.on_subscribe = lambda _client, _userdata, _mid, reasons, _props: subacks.put(reasons)
        if username is not None:
            client.username_pw_set(username, password)
        if ca_certs is not None:
            client.tls_set(ca_certs=str(ca_certs))
        if max_inflight is not None:
            client.max_inflight_messages_set(max_inflight)
        # paho's default (1 s, doubling) makes every resend test and every teardown after the
        # broker went away wait a second: its reconnect sleep cannot be interrupted.
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_SECS, max_delay=RECONNECT_MAX_SECS)  # type: ignore[arg-type]
        clients.append(client)
        if v5:
            properties = None
            if session_expiry_secs is not None:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = session_expiry_secs
            client.connect(host, port, keepalive=30, clean_start=clean_start, properties=properties)
        else:
            client.connect(host, port, keepalive=30)
        client.loop_start()
        try:
            reason = connacks.get(timeout=TIMEOUT_SECS)
        except queue.Empty:
            msg = f"no CONNACK for {client_id!r} within {TIMEOUT_SECS} s"
            raise TimeoutError(msg) from None
        if reason.is_failure:
            client.disconnect()
            client.loop_stop()  # or paho keeps retrying the refused login in the background
            msg = f"{client_id!r} refused: {reason}"
            raise ConnectionRefusedError(msg)
        if subscribe is not None:
            client.subscribe(subscribe, qos)
            try:
                granted = subacks.get(timeout=TIMEOUT_SECS)
            except queue.Empty:
                msg = f"no SUBACK for {client_id!r} within {TIMEOUT_SECS} s"
                raise TimeoutError(msg) from None
            if any(code.is_failure for code in granted):
                msg = f"{client_id!r} may not subscribe to {subscribe!r}: {granted}"
                raise PermissionError(msg)
        return client, inbox

    yield connect
    for client in clients:
        client.disconnect()
        client.loop_stop()

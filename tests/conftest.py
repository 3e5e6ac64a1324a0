"""Shared fixtures: a real Mosquitto per test, edge configs in tmp_path, SQLite helpers."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest

from edgekite.config import EdgeConfig, load_edge_config

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value or fail with the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout}s (last value {value!r})"
    return value


@dataclass
class Mosquitto:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def start_mosquitto(tmp_path: Path, extra_conf: str = "", port: int | None = None) -> Mosquitto:
    """A real Mosquitto on a free loopback port, persistence in tmp_path.

    Its errors go to ``mosquitto-<port>.log`` in tmp_path; ``EDGEKITE_TEST_MOSQUITTO_LOG=1``
    makes that a full log (every packet), to see what a flaky broker-level failure was.
    """
    import os

    full_log = os.environ.get("EDGEKITE_TEST_MOSQUITTO_LOG") == "1"
    port = port or free_port()
    conf = tmp_path / f"mosquitto-{port}.conf"
    (tmp_path / "mosq-data").mkdir(exist_ok=True)
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {tmp_path / 'mosq-data'}/\n"
        "max_queued_messages 1000000\n"
        "max_inflight_messages 0\n"
        "max_packet_size 2000000\n"
        + ("log_dest stderr\nlog_type all\n" if full_log else "log_dest none\n")
        + extra_conf
    )
    log_path = tmp_path / f"mosquitto-{port}.log"
    # The broker drops root for its own user, so it could not open a log file in tmp_path itself.
    with log_path.open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"mosquitto did not start: {log_path.read_text()[-3000:]}") from None
    return Mosquitto("127.0.0.1", port, proc, conf)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = start_mosquitto(tmp_path)
    yield broker
    broker.proc.terminate()
    try:
        broker.proc.wait(5)
    except subprocess.TimeoutExpired:
        broker.proc.kill()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., EdgeConfig]:
    """Edge config rooted in tmp_path; keyword sections override, e.g. store={"batch_max_events": 10}."""

    def factory(**sections: Any) -> EdgeConfig:
        over: dict[str, Any] = {"edge": {"data_dir": str(tmp_path / "edge-data")}, "http": {"port": 0}}
        for k, v in sections.items():
            over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
        return load_edge_config(environ={}, overrides=over)

    return factory


def db_rows(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read edge.db on a separate connection, as a dashboard would (``ek_json()`` available)."""
    from edgekite.codec import PayloadCodec

    conn = sqlite3.connect(db_path, timeout=10)
    try:
        PayloadCodec().register(conn)
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


_RUNNING_EDGES: list[ServiceProcess] = []


@pytest.fixture(autouse=True)
def _no_edge_outlives_its_test() -> Iterator[None]:
    """A test that fails halfway must not leave an edge process running.

    Only edges started during the test are stopped; wider-scoped fixtures started theirs before.
    """
    first = len(_RUNNING_EDGES)
    yield
    for edge in _RUNNING_EDGES[first:]:
        if edge.proc is not None and edge.proc.poll() is None:
            edge.proc.kill()
            edge.proc.wait(10)
    del _RUNNING_EDGES[first:]


class ServiceProcess:
    """An ``edgekite`` service as a real child process, for crash (kill -9) and end-to-end tests.

    Started with ``start()``, which returns once the service printed its "ready" line (kept in
    ``ready_line``, with the HTTP URL in ``http_url``); stderr goes to ``log_path``.
    """

    command = ""
    running: ClassVar[list[ServiceProcess]] = []  # a subclass's own list, for its autouse cleanup

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.http_url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}-{self.command}.log"

    def argv(self) -> list[str]:
        return list(self.args)

    def start(self, timeout: float = 20.0) -> Self:
        import os
        import re
        import sys

        env = {**os.environ, **(self.env or {})}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekite.cli",
                self.command,
                "--data-dir",
                str(self.data_dir),
                *self.argv(),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        self.running.append(self)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "ready" in line:
                self.ready_line = line.strip()
                match = re.search(r"HTTP (http://\S+)", line)
                self.http_url = match.group(1) if match else ""
                return self
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError(f"{self.command} did not become ready; log:\n{self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)


class EdgeProcess(ServiceProcess):
    """``edgekite edge``."""

    command = "edge"
    running: ClassVar[list[ServiceProcess]] = _RUNNING_EDGES

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edge.db"


_RUNNING_HUBS: list[ServiceProcess] = []


@pytest.fixture(autouse=True)
def _no_hub_outlives_its_test() -> Iterator[None]:
    """Like ``_no_edge_outlives_its_test``, for hubs started during the test."""
    first = len(_RUNNING_HUBS)
    yield
    for hub in _RUNNING_HUBS[first:]:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.kill()
            hub.proc.wait(10)
    del _RUNNING_HUBS[first:]


class HubProcess(ServiceProcess):
    """``edgekite hub`` (chDB in ``data_dir``).

    ``HubProcess(data_dir, "--mqtt-url", url, env={...}).start()``; ``--http-port 0`` is added
    unless given. Hub settings beyond the flags go in ``env`` as ``EDGEKITE_HUB_<SECTION>__<KEY>``.
    """

    command = "hub"
    running: ClassVar[list[ServiceProcess]] = _RUNNING_HUBS

    def argv(self) -> list[str]:
        args = list(self.args)
        return args if "--http-port" in args else [*args, "--http-port", "0"]

    def start(self, timeout: float = 30.0) -> Self:
        return super().start(timeout)

"""Tests for the traffic simulator: pure generation first, then publishing to a real Mosquitto.

The generator feeds every benchmark and end-to-end test, so its promises (determinism, a complete
mix, valid envelopes, monotonic ``source_seq``) are checked here; publishing is checked against a
real broker because the point of it is the real MQTT path (acks, windows, several processes).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekite.simulate import (
    CATEGORIES,
    RETENTION_CLASSES,
    SEVERITIES,
    SOURCE_TYPES,
    USER_AGENTS,
    BrokerURL,
    PublishError,
    TokenBucket,
    TrafficGenerator,
    encode_events,
    parse_broker_url,
    publish,
    run_from_args,
)
from edgekite.simulate_args import add_arguments

FIXED_NOW = 1_767_349_800_000  # 2026-01-02T10:30:00Z
EXPECTED_TYPES = {
    ("web", "page_view"),
    ("iot", "person_detected"),
    ("iot", "vehicle_detected"),
    ("iot", "animal_detected"),
    ("iot", "sensor_reading"),
    ("ops", "heartbeat"),
    ("ops", "error"),
    ("app", "error"),
    ("security", "login_attempt"),
}
DOC_IP = re.compile(r"^(192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}$|^2001:db8::[0-9a-f:]+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _events(count: int = 5000, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    return TrafficGenerator(seed=seed, now_ms=lambda: FIXED_NOW).events(count)


# ---------------------------------------------------------------------------------------------
# Generation


def test_same_seed_same_traffic_and_different_seed_differs() -> None:
    assert _events(2000, seed=3) == _events(2000, seed=3)
    assert _events(200, seed=3) != _events(200, seed=4)


def test_mix_contains_every_category_and_type() -> None:
    seen = {(env["event"]["category"], env["event"]["type"]) for _, env in _events()}
    assert seen == EXPECTED_TYPES
    assert {category for category, _ in seen} == CATEGORIES


def _check_envelope(source_id: str, env: dict[str, Any]) -> None:
    assert uuid.UUID(env["event_id"]).version == 4
    assert isinstance(env["observed_at"], int)
    assert FIXED_NOW - 60_000 <= env["observed_at"] <= FIXED_NOW
    source, event = env["source"], env["event"]
    assert source["id"] == source_id
    assert source["type"] in SOURCE_TYPES
    assert re.fullmatch(r"\d+\.\d+\.\d+", source["version"])
    assert source["metadata"]["site_id"].startswith("site-")
    assert event["category"] in CATEGORIES
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", event["type"])
    assert event["severity"] in SEVERITIES
    assert event["schema_version"] == "1.0"
    assert isinstance(event["data"], dict)
    assert event["data"]
    assert env["privacy"]["retention_class"] in RETENTION_CLASSES
    assert isinstance(env["privacy"]["pii"], bool)
    assert isinstance(env["sync"]["source_seq"], int)
    for attachment in env.get("attachments", []):
        # References only: exactly these keys, so no inline bytes can ever sneak in.
        assert set(attachment) == {"kind", "uri", "sha256", "size_bytes"}
        assert attachment["kind"] == "thumbnail"
        assert attachment["uri"].startswith("file:///media/")
        assert HEX64.match(attachment["sha256"])
        assert 0 < attachment["size_bytes"] < 1_000_000
    assert set(env) <= {
        "event_id",
        "observed_at",
        "source",
        "event",
        "correlation",
        "attachments",
        "privacy",
        "sync",
    }


def test_every_envelope_is_valid() -> None:
    for source_id, env in _events():
        _check_envelope(source_id, env)


def test_type_specific_payloads() -> None:
    by_type: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for _, env in _events():
        by_type[env["event"]["type"]].append(env)
    for env in by_type["page_view"]:
        data = env["event"]["data"]
        assert env["source"]["type"] == "browser"
        assert re.fullmatch(r"site-\d+-web", env["source"]["id"])
        assert data["url"].startswith("/")
        assert DOC_IP.match(data["ip"])
        assert env["privacy"]["pii"] is True
        assert env["correlation"]["session_id"]
        for key in ("referrer", "title", "user_agent", "screen", "language"):
            assert isinstance(data[key], str)
        utm = {k: v for k, v in data.items() if k.startswith("utm_")}
        if utm:
            assert set(utm) == {"utm_source", "utm_medium", "utm_campaign"}
            for key, value in utm.items():
                assert f"{key}={value}" in data["url"]
    referrers = {env["event"]["data"]["referrer"] for env in by_type["page_view"]}
    for fragment in (
        "google.",
        "bing.com",
        "duckduckgo.com",
        "facebook.com",
        "t.co",
        "reddit.com",
        ".example.com/",
    ):
        assert any(fragment in r for r in referrers), fragment
    assert "" in referrers
    assert any("utm_medium=email" in e["event"]["data"]["url"] for e in by_type["page_view"])
    for kind in ("person", "vehicle", "animal"):
        for env in by_type[f"{kind}_detected"]:
            data = env["event"]["data"]
            assert env["source"]["type"] == "edge_device"
            assert data["camera_id"] == env["source"]["id"]
            assert data["label"] == kind
            assert 0.5 <= data["confidence"] <= 0.99
            assert set(data["bbox"]) == {"x", "y", "w", "h"}
            assert data["zone"]
            assert len(env["attachments"]) == 1
            assert env["correlation"]["incident_id"]
    for env in by_type["sensor_reading"]:
        assert set(env["event"]["data"]) == {"metric", "value", "unit"}
    for env in by_type["heartbeat"]:
        assert set(env["event"]["data"]) == {
            "uptime_seconds",
            "cpu_percent",
            "memory_percent",
            "disk_percent",
            "event_queue_size",
        }
    errors = by_type["error"]
    assert {e["event"]["severity"] for e in errors} == {"warn", "error", "critical"}
    for env in errors:
        assert set(env["event"]["data"]) == {"component", "message", "code"}
    logins = by_type["login_attempt"]
    assert {e["event"]["data"]["success"] for e in logins} == {True, False}
    for env in logins:
        data = env["event"]["data"]
        assert DOC_IP.match(data["ip"])
        assert env["privacy"]["pii"] is True
        assert env["event"]["severity"] == ("info" if data["success"] else "warn")


def test_source_seq_strictly_increasing_per_source() -> None:
    last: dict[str, int] = {}
    for source_id, env in _events():
        seq = env["sync"]["source_seq"]
        assert seq > last.get(source_id, 0)
        last[source_id] = seq
    assert len(last) >= 10


def test_detections_come_in_incidents_of_one_camera_seconds_apart() -> None:
    incidents: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for _, env in _events():
        if env["event"]["type"].endswith("_detected"):
            incidents[env["correlation"]["incident_id"]].append(env)
    sizes = [len(v) for v in incidents.values()]
    assert max(sizes) >= 4
    assert sum(sizes) / len(sizes) >= 2
    for envs in incidents.values():
        assert len({e["source"]["id"] for e in envs}) == 1
        assert len({e["event"]["type"] for e in envs}) == 1
        times = [e["observed_at"] for e in envs]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(400 <= gap <= 5000 for gap in gaps), gaps


def test_visitors_keep_user_agent_and_ip_over_a_session() -> None:
    sessions: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    views: collections.Counter[str] = collections.Counter()
    for _, env in _events():
        if env["event"]["type"] == "page_view":
            sid = env["correlation"]["session_id"]
            sessions[sid].add((env["event"]["data"]["user_agent"], env["event"]["data"]["ip"]))
            views[sid] += 1
    assert all(len(pairs) == 1 for pairs in sessions.values())
    assert max(views.values()) >= 5


def test_user_agent_pool_is_varied_and_includes_bots() -> None:
    agents = {ua for ua, _, _ in USER_AGENTS}
    assert len(agents) >= 30
    for name in (
        "Googlebot",
        "bingbot",
        "AhrefsBot",
        "curl/",
        "python-requests/",
        "Firefox/",
        "Edg/",
        "Version/17",
        "Android",
        "iPhone",
        "Windows NT",
        "Macintosh",
        "Linux",
    ):
        assert any(name in ua for ua in agents), name
    seen = {env["event"]["data"]["user_agent"] for _, env in _events() if env["event"]["type"] == "page_view"}
    assert len(seen) >= 25


def test_heartbeats_come_from_every_device() -> None:
    gen = TrafficGenerator(seed=1, now_ms=lambda: FIXED_NOW)
    envs = gen.events(5000)
    devices = {sid for sid in gen.sources if not sid.endswith(("-web", "-app"))}
    beating = {sid for sid, env in envs if env["event"]["type"] == "heartbeat"}
    assert beating == devices


def test_minimal_event_leaves_the_rest_to_the_edge() -> None:
    gen = TrafficGenerator(seed=2, now_ms=lambda: FIXED_NOW)
    for _ in range(50):
        source_id, env = gen.minimal_event()
        assert source_id in gen.sources
        assert set(env) == {"source", "event"}
        assert set(env["source"]) == {"type"}
        assert set(env["event"]) == {"category", "type", "data"}
        assert env["event"]["data"]


def test_encode_events_single_object_or_array() -> None:
    envs = [env for _, env in _events(3)]
    assert orjson.loads(encode_events(envs[:1])) == envs[0]
    assert orjson.loads(encode_events(envs)) == envs
    with pytest.raises(ValueError, match="at least one"):
        encode_events([])


def test_token_bucket_paces_without_sleeping_per_event() -> None:
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(1000.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(2000):
        bucket.take()
    assert clock[0] == pytest.approx(2.0, abs=0.02)
    assert len(sleeps) <= 200


def test_broker_url_parsing() -> None:
    assert parse_broker_url("mqtt://127.0.0.1") == BrokerURL("127.0.0.1", 1883, tls=False)
    assert parse_broker_url("mqtts://broker.example.com") == BrokerURL("broker.example.com", 8883, tls=True)
    assert parse_broker_url("mqtt://u%40x:p@h:1884/") == BrokerURL("h", 1884, False, "u@x", "p")
    for bad in ("http://h:1883", "mqtt://h:1883/topic", "mqtt://:1883", "mqtt://h:notaport"):
        with pytest.raises(PublishError):
            parse_broker_url(bad)


# ---------------------------------------------------------------------------------------------
# Publishing against a real Mosquitto


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Mosquitto on a free localhost port; yields its URL, stops it on exit."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    # The queue limit is raised so the test subscriber, not the broker's default of 1,000
    # queued messages per client, decides whether a burst arrives complete.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    _, err = proc.communicate()
                    pytest.fail(f"mosquitto did not start: {err.decode(errors='replace')}")
                time.sleep(0.02)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One private Mosquitto shared by this module's publishing tests."""
    with _mosquitto(tmp_path_factory) as url:
        yield url


@dataclass
class Collector:
    """A QoS 1 subscriber to every source's events topic, recording what arrives."""

    messages: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    envelopes: int = 0

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = orjson.loads(msg.payload)
        with self.lock:
            self.messages.append((msg.topic, body))
            self.envelopes += len(body) if isinstance(body, list) else 1

    def wait_for(self, envelopes: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.envelopes < envelopes and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # catch any extras (duplicates) that would make the count wrong

    def flat(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for topic, body in self.messages:
            for env in body if isinstance(body, list) else [body]:
                out.append((topic, env))
        return out


@pytest.fixture
def collector(mosquitto_url: str) -> Iterator[Collector]:
    broker = BrokerURL.parse(mosquitto_url)
    col = Collector()
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_message = col.on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe("ek/v1/+/events", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(5), "subscription not acknowledged"
    yield col
    client.disconnect()
    client.loop_stop()


def _check_arrivals(col: Collector, expected: int) -> list[tuple[str, dict[str, Any]]]:
    col.wait_for(expected)
    arrived = col.flat()
    assert len(arrived) == expected
    for topic, env in arrived:
        assert topic == f"ek/v1/{env['source']['id']}/events"
    assert len({env["event_id"] for _, env in arrived}) == expected
    return arrived


def test_publish_one_envelope_per_message(mosquitto_url: str, collector: Collector) -> None:
    report = publish(mosquitto_url, rate=0, count=500, seed=11)
    assert (report.sent, report.acked, report.messages) == (500, 500, 500)
    _check_arrivals(collector, 500)
    assert all(isinstance(body, dict) for _, body in collector.messages)


def test_publish_batches_are_arrays_from_one_source(mosquitto_url: str, collector: Collector) -> None:
    report = publish(mosquitto_url, rate=0, count=500, seed=12, batch=10)
    assert (report.sent, report.acked) == (500, 500)
    _check_arrivals(collector, 500)
    assert len(collector.messages) == report.messages
    assert 50 <= report.messages < 500
    for _, body in collector.messages:
        envs = body if isinstance(body, list) else [body]
        assert 1 <= len(envs) <= 10
        assert len({e["source"]["id"] for e in envs}) == 1
    assert any(isinstance(body, list) and len(body) == 10 for _, body in collector.messages)


def test_publish_over_two_processes(mosquitto_url: str, collector: Collector) -> None:
    report = publish(mosquitto_url, rate=0, count=301, seed=13, processes=2)
    assert (report.sent, report.acked, report.processes) == (301, 301, 2)
    arrived = _check_arrivals(collector, 301)
    # Each process simulates its own sites: every source's sequence is 1..n, no clashes.
    seqs: dict[str, list[int]] = collections.defaultdict(list)
    for _, env in arrived:
        seqs[env["source"]["id"]].append(env["sync"]["source_seq"])
    for values in seqs.values():
        assert sorted(values) == list(range(1, len(values) + 1))
    sites = {env["source"]["metadata"]["site_id"] for _, env in arrived}
    assert sites == {"site-1", "site-2", "site-3", "site-4"}


def test_publish_is_paced_to_the_rate(mosquitto_url: str, collector: Collector) -> None:
    report = publish(mosquitto_url, rate=200, count=100, seed=14)
    assert report.acked == 100
    assert 0.4 <= report.seconds <= 2.0
    _check_arrivals(collector, 100)


def test_publish_to_nothing_raises() -> None:
    with pytest.raises(PublishError, match="cannot connect"):
        publish(f"mqtt://127.0.0.1:{_free_port()}", rate=0, count=1)


def test_cli_arguments_run_and_print_one_line(
    mosquitto_url: str, collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.mqtt_url, defaults.rate, defaults.count) == ("mqtt://127.0.0.1:1883", 50.0, 1000)
    args = parser.parse_args(
        ["--mqtt-url", mosquitto_url, "--rate", "0", "--count", "40", "--batch", "4", "--seed", "5"]
    )
    assert run_from_args(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sent=40 acked=40 ")
    _check_arrivals(collector, 40)


def test_dead_broker_ends_the_run_with_a_report(tmp_path_factory: pytest.TempPathFactory) -> None:
    """paho retries a vanished broker forever; the simulator must give up and say so."""
    with _mosquitto(tmp_path_factory) as url:
        done: list[Any] = []
        worker = threading.Thread(
            target=lambda: done.append(publish(url, rate=2000, count=0, window=50, stall_secs=1.0)),
            daemon=True,
        )
        worker.start()
        time.sleep(0.5)
    worker.join(timeout=10)
    assert not worker.is_alive(), "publish hung after the broker died"
    report = done[0]
    assert report.stalled
    assert 0 < report.acked < report.sent


def test_slow_sources_do_not_sit_on_a_partial_batch(mosquitto_url: str, collector: Collector) -> None:
    # 40 events over ~2 s can never fill a batch of 1,000: only the linger flush (after ~1 s)
    # can make a source send more than one message before the final flush.
    report = publish(mosquitto_url, rate=20, count=40, seed=15, batch=1000)
    arrived = _check_arrivals(collector, 40)
    assert report.messages > len({env["source"]["id"] for _, env in arrived})

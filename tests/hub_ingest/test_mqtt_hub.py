"""``edgekite hub`` as a real process behind a real Mosquitto: shared subscription, acks, kill -9."""

from __future__ import annotations

import contextlib
import json
import queue
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore
from tests.conftest import HubProcess, Mosquitto, start_mosquitto, wait_for
from tests.hub_ingest.helpers import KEY_A, KEY_B, FakeEdge, batch, envelopes, http, metric

KEYS = {"edge-a": KEY_A, "edge-b": KEY_B}
EDGES_ENV = json.dumps({e: {"api_key": k} for e, k in KEYS.items()})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_mosquitto(tmp_path, "max_packet_size 20000000\n")
    yield b
    b.proc.terminate()
    b.proc.wait(10)


def test_two_consumers_share_the_batches_and_every_number_is_exact(tmp_path: Path, broker: Mosquitto) -> None:
    hub = HubProcess(
        tmp_path / "hub",
        "--mqtt-url",
        broker.url,
        env={"EDGEKITE_HUB_MQTT__CONSUMERS": "2", "EDGEKITE_HUB_EDGES": EDGES_ENV},
    ).start()
    wait_for(lambda: http("GET", f"{hub.http_url}/api/health")[2]["mqtt"]["connected"] == 2)
    edges = {e: FakeEdge(broker, e) for e in KEYS}
    assert edges["edge-a"].status.get(timeout=5) == b'{"online":true}'
    payloads = {
        e: [batch(e, f"s:{i}", envelopes(200, seed=100 * n + i)) for i in range(10)]
        for n, e in enumerate(KEYS)
    }
    for e, fe in edges.items():
        for p in payloads[e]:
            fe.send(p, key=KEYS[e])
    for fe in edges.values():
        acks = fe.collect(10)
        assert {a.status for a in acks} == {"ok"} and sum(a.accepted for a in acks) == 2000
        assert not any(a.duplicate for a in acks)
    # The edge resends everything (say its acks were lost): nothing changes.
    for e, fe in edges.items():
        for p in payloads[e]:
            fe.send(p, key=KEYS[e])
    for fe in edges.values():
        assert all(a.duplicate and a.status == "ok" for a in fe.collect(10))
    # Forgeries: a's batch signed with b's key; a's batch on b's topic (signed by a).
    forged = batch("edge-a", "s:forged", envelopes(5, seed=999))
    edges["edge-a"].send(forged, key=KEY_B)
    edges["edge-b"].send(forged, key=KEY_A, topic_edge="edge-b")
    assert (edges["edge-a"].collect(1)[0].reason or "").startswith("bad_signature")
    assert (edges["edge-b"].collect(1)[0].reason or "").startswith("edge_mismatch")

    fleet = http("GET", f"{hub.http_url}/api/fleet")[2]
    assert {(x["edge_id"], x["events"], x["batches"]) for x in fleet["edges"]} == {
        ("edge-a", 2000, 10),
        ("edge-b", 2000, 10),
    }
    assert fleet["dev_mode"] is False
    text = http("GET", f"{hub.http_url}/metrics")[2]
    assert metric(text, "edgekite_hub_batches_refused_total", 'reason="bad_signature"') == 1
    assert metric(text, "edgekite_hub_batches_refused_total", 'reason="edge_mismatch"') == 1
    assert metric(text, "edgekite_hub_batches_duplicate_total") == 20
    assert metric(text, "edgekite_hub_mqtt_consumers_connected") == 2
    for fe in edges.values():
        fe.close()
    assert hub.terminate() == 0


def _kill_and_recover(tmp_path: Path, broker: Mosquitto, rounds: int, seed: int) -> None:
    """Batches flow while the hub is killed -9 at random moments; at the end every acked batch is
    stored and every number is exact (the broker redelivers what was not PUBACKed)."""
    rng = random.Random(seed)
    n_batches, size = 30, 300
    payloads = [batch("edge-a", f"s:{i}", envelopes(size, seed=seed * 1000 + i)) for i in range(n_batches)]
    data_dir = tmp_path / "hub"
    env = {"EDGEKITE_HUB_MQTT__CONSUMERS": "2"}
    hub = HubProcess(data_dir, "--mqtt-url", broker.url, env=env).start()
    edge = FakeEdge(broker, "edge-a")
    acked: set[str] = set()
    sent = 0
    for _ in range(rounds):
        burst = rng.randint(5, 12)
        for p in payloads[sent : sent + burst]:
            edge.send(p)
        sent = min(n_batches, sent + burst)
        time.sleep(rng.uniform(0.05, 0.4))
        hub.kill9()
        while not edge.acks.empty():
            ack = edge.acks.get()
            if ack.status == "ok":
                acked.add(ack.batch_id)
        hub = HubProcess(data_dir, "--mqtt-url", broker.url, env=env).start()
    for p in payloads[sent:]:
        edge.send(p)
    # The edge resends whatever it has no ok ack for, as its sync worker would.
    deadline = time.monotonic() + 60
    while len(acked) < n_batches and time.monotonic() < deadline:
        try:
            ack = edge.acks.get(timeout=3)
            if ack.status == "ok":
                acked.add(ack.batch_id)
        except queue.Empty:
            for i, p in enumerate(payloads):
                if f"s:{i}" not in acked:
                    edge.send(p)
    assert len(acked) == n_batches
    fleet = http("GET", f"{hub.http_url}/api/fleet")[2]
    assert fleet["edges"][0]["events"] == n_batches * size
    edge.close()
    assert hub.terminate() == 0

    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(data_dir)}}))
    store.open()
    try:
        ledger = store.query_rows(f"SELECT batch_id, events FROM {store.table('batches')} FINAL")
        assert {b for b, _ in ledger} == acked and sum(n for _, n in ledger) == n_batches * size
        store.command(f"OPTIMIZE TABLE {store.table('events')} FINAL")
        assert store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.table('events')}") == [
            (n_batches * size, n_batches * size)
        ]
    finally:
        store.close()


def test_kill9_of_the_hub_mid_ingest_loses_and_doubles_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    _kill_and_recover(tmp_path, broker, rounds=1, seed=7)


@pytest.mark.slow
def test_kill9_of_the_hub_repeatedly(tmp_path: Path, broker: Mosquitto) -> None:
    _kill_and_recover(tmp_path, broker, rounds=4, seed=8)


def test_a_hub_stopped_mid_stream_leaves_no_stored_batch_to_come_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """SIGTERM while batches flow: the hub PUBACKs every batch it stored before it leaves, so the
    next hub gets only the batches the first one had not taken (none answered as a duplicate)."""
    n_batches, size = 150, 200
    payloads = [batch("edge-a", f"s:{i}", envelopes(size, seed=5000 + i)) for i in range(n_batches)]
    data_dir = tmp_path / "hub"
    env = {"EDGEKITE_HUB_MQTT__CONSUMERS": "2"}  # the consumer stopped first has no last word
    hub = HubProcess(data_dir, "--mqtt-url", broker.url, env=env).start()
    edge = FakeEdge(broker, "edge-a")
    sent = [edge.send(p, wait=False) for p in payloads]  # all at the broker before the hub is half done
    first = edge.collect(10)  # the stop lands while the rest is still coming
    assert hub.terminate() == 0
    for info in sent:
        info.wait_for_publish(10)
    hub = HubProcess(data_dir, "--mqtt-url", broker.url, env=env).start()
    acked = {a.batch_id for a in first}
    deadline = time.monotonic() + 60
    while len(acked) < n_batches and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            acked.add(edge.acks.get(timeout=1).batch_id)
    assert len(acked) == n_batches
    text = http("GET", f"{hub.http_url}/metrics")[2]
    assert metric(text, "edgekite_hub_batches_duplicate_total") == 0, "a stored batch came again"
    fleet = http("GET", f"{hub.http_url}/api/fleet")[2]
    assert fleet["edges"][0]["events"] == n_batches * size
    edge.close()
    assert hub.terminate() == 0

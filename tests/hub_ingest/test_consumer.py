"""The hub's MQTT consumers in-process, behind a real Mosquitto, with a real chDB store."""

from __future__ import annotations

import contextlib
import queue
import time
from pathlib import Path

from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore
from hub_ingest.consumer import ConsumerGroup
from hub_ingest.processor import BatchProcessor
from tests.conftest import Mosquitto
from tests.hub_ingest.helpers import FakeEdge, batch, envelopes, hub_config


def _group(store: HubStore, broker: Mosquitto, metrics: HubMetrics) -> ConsumerGroup:
    cfg = store.config.model_copy(
        update={"mqtt": store.config.mqtt.model_copy(update={"url": broker.url, "consumers": 2})}
    )
    # Two consumers: the first one stopped has no last word (the group's "offline" status is
    # published by the last), nothing else it sends waits behind its acks.
    group = ConsumerGroup(cfg.mqtt, BatchProcessor(cfg, store, metrics), store, metrics)
    # One QoS 1 publish in flight per client (paho's default is 20): acks for a burst of batches
    # queue inside paho, the case where a batch's PUBACK could overtake its ack.
    for c in group.consumers:
        c._client.max_inflight_messages_set(1)
    group.start()
    assert group.wait_connected(10)
    return group


def test_a_batch_is_consumed_only_once_its_ack_is_at_the_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Stopping mid-burst: every batch the hub stored and let go of has its ack with the edge, and
    the rest come to the next session; nothing is answered twice or left unanswered."""
    store = HubStore(hub_config(tmp_path / "hub"))
    store.open()
    try:
        n = 300
        payloads = [batch("edge-a", f"b:{i}", envelopes(20, seed=900 + i)) for i in range(n)]
        broker = mosquitto
        edge = FakeEdge(broker, "edge-a")
        metrics = HubMetrics()
        group = _group(store, broker, metrics)
        sent = [edge.send(p, wait=False) for p in payloads]
        # Stop as soon as a few batches are stored (waiting for their acks at the edge instead
        # let the hub store 60 % of the burst here, and all of it once in CI).
        deadline = time.monotonic() + 30
        while (metrics.registry.get_sample_value("edgekite_hub_batches_ok_total") or 0) < 5:
            assert time.monotonic() < deadline, "no batch stored"
            time.sleep(0.005)
        group.stop()  # with acks still queued behind paho's window
        for info in sent:
            info.wait_for_publish(10)
        acked: set[str] = set()
        time.sleep(0.5)
        while not edge.acks.empty():
            acked.add(edge.acks.get().batch_id)
        stored = {b for (b,) in store.query_rows(f"SELECT batch_id FROM {store.table('batches')} FINAL")}
        assert stored <= acked, f"stored and let go without an ack: {sorted(stored - acked)}"
        assert len(stored) < n, "the stop came too late to test anything"

        group = _group(store, broker, metrics)  # the same session: the rest is redelivered
        deadline = time.monotonic() + 30
        while len(acked) < n and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                acked.add(edge.acks.get(timeout=1).batch_id)
        group.stop()
        edge.close()
        assert len(acked) == n
        assert metrics.registry.get_sample_value("edgekite_hub_batches_duplicate_total") == 0, (
            "a batch let go of came again"
        )
    finally:
        store.close()

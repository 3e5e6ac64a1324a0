"""Shared by the store's tests: a settable clock, stores opened on real SQLite files, envelopes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from edgekite.config import EdgeConfig
from edgekite.ingest import decode_message
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore, IngestResult, WriteItem, message_fingerprint


class Clock:
    """A settable wall clock, so retention can be tested without waiting days."""

    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def envelope(etype: str = "person_detected", **over: object) -> dict[str, object]:
    env: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "source": {"type": "edge_device"},
        "event": {"category": "iot", "type": etype, "data": {"confidence": 0.9, "note": "x" * 40}},
    }
    env.update(over)
    return env


def item_for(
    store: EdgeStore, cfg: EdgeConfig, payload: bytes, source: str = "cam-1", dup: bool = False
) -> WriteItem:
    decoded = decode_message(payload, topic_source_id=source, received_at=store.now_ms(), limits=cfg.limits)
    fp = message_fingerprint(f"ek/v1/{source}/events", payload) if decoded.ids_generated else None
    return WriteItem(
        decoded, "mqtt", f"ek/v1/{source}/events", redelivery=dup, fingerprint=fp, size=len(payload)
    )


def submit_wait(store: EdgeStore, item: WriteItem, timeout: float = 10) -> IngestResult:
    box: list[IngestResult] = []
    done = threading.Event()

    def cb(r: IngestResult) -> None:
        box.append(r)
        done.set()

    item.done = cb
    store.submit(item)
    assert done.wait(timeout), "writer never completed the item"
    return box[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_store(
    make_config: Callable[..., EdgeConfig], clock: Clock
) -> Iterator[Callable[..., tuple[EdgeStore, EdgeConfig, EdgeMetrics]]]:
    stores: list[EdgeStore] = []

    def factory(**sections: object) -> tuple[EdgeStore, EdgeConfig, EdgeMetrics]:
        cfg = make_config(**sections)
        metrics = EdgeMetrics()
        store = EdgeStore(cfg, metrics, clock=clock).open()
        stores.append(store)
        return store, cfg, metrics

    yield factory
    for s in stores:
        s.close()


def metric(metrics: EdgeMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value

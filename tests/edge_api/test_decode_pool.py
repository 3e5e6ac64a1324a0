"""Large HTTP bodies are decoded in worker processes: with the same result as in place."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from edge_api.decode_pool import HttpDecoder
from edge_api.ingest_http import BodyError
from edgekite.config import EdgeConfig
from tests.edge_api.conftest import request

RECEIVED_AT = 1_795_000_000_000


def envelope(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=n + 1)),
        "observed_at": RECEIVED_AT - n,
        "source": {"type": "browser", "id": f"site-{n % 3}"},
        "event": {"category": "web", "type": "page_view", "data": {"url": f"/p/{n}", "n": n}},
        **extra,
    }


def mixed_batch(first: int = 0) -> bytes:
    """300 envelopes, some of them refused for different reasons, in a body well over 32 KiB."""
    objs: list[Any] = [envelope(first + n) for n in range(300)]
    objs[7] = {"source": {"type": "browser", "id": "x"}, "event": {"category": "nope", "type": "a"}}
    objs[42] = "not an envelope"
    objs[99] = {**envelope(99), "attachments": [{"kind": "thumb", "uri": "data:image/png;base64,AAAA"}]}
    return orjson.dumps(objs)


@pytest.fixture
def decoders(make_config: Callable[..., EdgeConfig]) -> Iterator[tuple[HttpDecoder, HttpDecoder]]:
    in_place = HttpDecoder(make_config(http={"decode_workers": 0}))
    worker = HttpDecoder(make_config(http={"decode_workers": 1, "decode_process_min_bytes": 1024}))
    yield in_place, worker
    worker.close()


def decode(decoder: HttpDecoder, body: bytes, content_type: str = "application/json") -> Any:
    return asyncio.run(decoder.decode(body, content_type, True, "Mozilla/5.0 test", "192.0.2.7", RECEIVED_AT))


def test_a_large_body_decoded_by_the_worker_equals_the_same_body_decoded_in_place(
    decoders: tuple[HttpDecoder, HttpDecoder],
) -> None:
    in_place, worker = decoders
    body = mixed_batch()
    assert len(body) > 32 * 1024
    n0, here = decode(in_place, body)
    n1, there = decode(worker, body)
    assert worker.worker_running, "the body went to the worker"
    assert (n0, n1) == (300, 300)
    assert there.events == here.events
    assert [r.position for r in there.rejections] == [7, 42, 99]
    assert there.rejections == here.rejections
    assert type(there.events[0]).__name__ == "EventRow", "rows come back as the store's rows"
    # The request's user agent and address were added in the worker, as in place.
    data = orjson.loads(there.events[0].payload_json)
    assert (data["user_agent"], data["ip"]) == ("Mozilla/5.0 test", "192.0.2.7")
    assert there.events[0].pii == 1


def test_ndjson_with_a_broken_line_is_judged_line_by_line_in_the_worker(
    decoders: tuple[HttpDecoder, HttpDecoder],
) -> None:
    _, worker = decoders
    lines = [orjson.dumps(envelope(n)) for n in range(200)]
    lines[10] = b'{"broken'
    n, decoded = decode(worker, b"\n".join(lines), "application/x-ndjson")
    assert n == 200
    assert len(decoded.events) == 199
    assert [(r.position, r.code) for r in decoded.rejections] == [(10, "invalid_json")]


def test_an_unreadable_large_body_is_refused_with_its_reason(
    decoders: tuple[HttpDecoder, HttpDecoder],
) -> None:
    _, worker = decoders
    with pytest.raises(BodyError, match="not valid JSON"):
        decode(worker, b"[" + orjson.dumps(envelope(1)) * 100)
    with pytest.raises(BodyError, match=r"2001 envelopes in one batch \(max 1000\)"):
        decode(worker, orjson.dumps([{"x": i} for i in range(2001)]))


def test_a_killed_worker_is_replaced_and_the_next_body_still_decoded(
    decoders: tuple[HttpDecoder, HttpDecoder],
) -> None:
    _, worker = decoders
    body = mixed_batch()
    decode(worker, body)
    pool = worker._pool
    assert pool is not None
    for pid in list(pool._processes):  # the pool's worker processes
        os.kill(pid, signal.SIGKILL)
    n, decoded = decode(worker, body)
    assert (n, len(decoded.events)) == (300, 297)
    assert worker._pool is not pool, "a new pool replaced the broken one"


def test_workers_leave_when_the_edge_is_killed(tmp_path: Any) -> None:
    """kill -9 of the edge must not leave decode workers behind, waiting forever."""
    import psutil

    from tests.conftest import EdgeProcess, free_port

    edge = EdgeProcess(tmp_path / "data", "--mqtt-port", str(free_port()), "--http-port", "0").start()
    body = orjson.dumps([envelope(n) for n in range(200)])
    status, answer = request(edge.http_url + "/api/events/batch", body, {"Content-Type": "application/json"})
    assert (status, answer["accepted"]) == (200, 200)
    assert edge.proc is not None
    workers = [
        p
        for p in psutil.Process(edge.proc.pid).children(recursive=True)
        if "spawn_main" in " ".join(p.cmdline())
    ]
    assert workers, "a body this large went to a decode worker"
    edge.kill9()
    _gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, "decode workers outlived the edge"


def test_with_the_edges_dictionary_the_worker_sends_the_json_columns_encoded_and_they_store_as_sent(
    make_config: Callable[..., EdgeConfig],
) -> None:
    from edgekite.codec import PayloadCodec
    from edgekite.ingest import Decoded
    from edgekite.metrics import EdgeMetrics
    from edgekite.store import EdgeStore, WriteItem
    from tests.conftest import db_rows
    from tests.edgekite.store.conftest import submit_wait

    cfg = make_config(
        store={"compress_train_events": 500}, http={"decode_workers": 1, "decode_process_min_bytes": 1024}
    )
    store = EdgeStore(cfg, EdgeMetrics()).open()
    worker = HttpDecoder(cfg, dict_id=lambda: store.codec.active_dict_id)
    unknown = HttpDecoder(cfg, dict_id=lambda: 9)
    try:
        for start in (0, 300, 600):  # enough of the edge's own events to train its dictionary
            _, d = decode(HttpDecoder(make_config(http={"decode_workers": 0})), mixed_batch(start))
            submit_wait(store, WriteItem(d, "http", None, size=1))
        assert store.codec.active_dict_id == 1

        _, decoded = decode(worker, mixed_batch(900))
        assert worker.worker_running
        codec = PayloadCodec()
        conn = sqlite3.connect(cfg.db_path)
        codec.load(conn, keep=False)
        conn.close()
        for row in decoded.events:
            assert row.encoded_json is not None
            payload, attachments, meta = row.encoded_json
            assert (codec.decode(payload), codec.decode(attachments), codec.decode(meta)) == (
                row.payload_json,
                row.attachments_json,
                row.meta_json,
            )
        compressed = [
            r.encoded_json[0] for r in decoded.events if r.encoded_json and type(r.encoded_json[0]) is bytes
        ]
        assert len(compressed) > 250 and all(p[0] == 1 for p in compressed), "dictionary 1's frames"
        # A dictionary edge.db does not hold: the rows come as text, for the writer to encode.
        _, plain = decode(unknown, mixed_batch(900))
        assert all(r.encoded_json is None for r in plain.events)

        result = submit_wait(store, WriteItem(Decoded(decoded.events, [], False), "http", None, size=1))
        assert result.accepted == 297
        ids = tuple(r.event_id for r in decoded.events)
        back = db_rows(
            cfg.db_path,
            f"SELECT event_id, typeof(payload_json), ek_json(payload_json), ek_json(meta_json) FROM events "
            f"WHERE event_id IN ({','.join('?' * len(ids))})",
            ids,
        )
        by_id = {r.event_id: r for r in decoded.events}
        assert len(back) == 297
        for eid, _, payload, meta in back:
            assert (payload, meta) == (by_id[eid].payload_json, by_id[eid].meta_json)
        assert {kind for _, kind, _, _ in back} == {"blob"}
    finally:
        worker.close()
        unknown.close()
        store.close()


def test_a_dictionary_named_before_the_worker_can_read_it_is_looked_for_again(
    make_config: Callable[..., EdgeConfig],
) -> None:
    from edgekite.codec import PayloadCodec
    from edgekite.metrics import EdgeMetrics
    from edgekite.store import EdgeStore

    cfg = make_config(http={"decode_workers": 1, "decode_process_min_bytes": 1024})
    EdgeStore(cfg, EdgeMetrics()).open().close()  # the schema, no dictionary yet
    worker = HttpDecoder(cfg, dict_id=lambda: 1)
    try:
        _, before = decode(worker, mixed_batch())
        assert all(r.encoded_json is None for r in before.events), "text, for the writer to encode"
        conn = sqlite3.connect(cfg.db_path)
        samples = [orjson.dumps(envelope(n)["event"]) for n in range(2000)]
        with conn:
            PayloadCodec().train(conn, samples, RECEIVED_AT)
        conn.close()
        _, after = decode(worker, mixed_batch())
        assert all(r.encoded_json is not None for r in after.events), "found once edge.db holds it"
    finally:
        worker.close()

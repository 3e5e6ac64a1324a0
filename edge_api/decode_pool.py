"""HTTP batch bodies decoded in a worker process, so validation and the SQLite writer do not
take turns on one GIL.

In one process the edge stores about 10,000 events/s from HTTP batches: parsing and validating
a 1,000-envelope body holds the GIL (and the event loop) for ~25 ms while the writer waits.
A body of at least ``http.decode_process_min_bytes`` goes to a pool of ``http.decode_workers``
spawned workers instead; the rows come back as plain tuples and the edge only writes them.
Once the store has a zstd dictionary the worker also compresses the rows' JSON columns with it
(read from edge.db), so the edge process, whose one GIL the writer shares with aiohttp, does
not.
Small bodies (one event from the tracker) are decoded in place: a round trip to the worker
would cost more than it saves.
Workers start on demand (the first at the first large body), so an edge that never gets one
never pays their memory (measured: 38.5 MB RSS, 23 MB USS each, plus
12.7 MB for multiprocessing's resource tracker); if one dies, the pool is replaced and the body retried.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from edge_api.ingest_http import BodyError, decode_body
from edgekite.codec import PayloadCodec
from edgekite.config import EdgeConfig
from edgekite.host import decode_worker_count, host_cpus
from edgekite.ingest import STORED_FIELDS, Decoded, EventRow, Rejection

log = logging.getLogger(__name__)

# The worker's own config, set once by its initializer (a worker process serves one edge), and
# its codec, loaded from edge.db when the edge first names a dictionary.
_worker_config: list[EdgeConfig] = []
_worker_codec: list[PayloadCodec] = []
_worker_unreadable: set[int] = set()  # dictionaries it failed to read: warned once, not retried


def _init_worker(config_json: str) -> None:
    _worker_config[:] = [EdgeConfig.model_validate_json(config_json)]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the edge shuts the pool down itself
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A pool worker waits on its queue forever; if the edge was killed, nobody would end it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_encoder(dict_id: int) -> Callable[[str | None], str | bytes | None] | None:
    """The stored-form encoder with zstd dictionary ``dict_id`` (or a newer one), read from
    edge.db the first time it is named; None if the database cannot give it."""
    codec = _worker_codec[0] if _worker_codec else None
    if codec is None or not codec.holds(dict_id):
        if dict_id in _worker_unreadable:
            return None
        codec = PayloadCodec()
        try:
            conn = sqlite3.connect(f"file:{_worker_config[0].db_path}?mode=ro", uri=True, timeout=5)
            try:
                codec.load(conn, keep=False)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            _worker_unreadable.add(dict_id)
            log.warning(
                "the decode worker cannot read zstd dictionary %d (%s); the writer encodes", dict_id, exc
            )
            return None
        if not codec.holds(dict_id):  # not committed yet: looked for again with the next body
            return None
        _worker_codec[:] = [codec]
    return codec.encode


def _decode_in_worker(
    body: bytes,
    content_type: str,
    batch: bool,
    user_agent: str | None,
    client_ip: str | None,
    received_at: int,
    dict_id: int | None = None,
) -> tuple[Any, ...]:
    try:
        n, decoded = decode_body(
            body, content_type, batch, user_agent, client_ip, _worker_config[0], received_at
        )
    except BodyError as exc:
        return ("bad", str(exc))
    enc = _worker_encoder(dict_id) if dict_id is not None else None
    # Plain tuples: pickling the named ones runs Python code per row, on both sides. With the
    # edge's dictionary the JSON columns go encoded too, so the writer does not compress them.
    rows = (
        [tuple(r) for r in decoded.events]
        if enc is None
        else [
            (*r[:STORED_FIELDS], r.facts, (enc(r.payload_json), enc(r.attachments_json), enc(r.meta_json)))
            for r in decoded.events
        ]
    )
    return ("ok", n, rows, [tuple(r) for r in decoded.rejections], decoded.ids_generated)


class HttpDecoder:
    """``await decode(...)`` → (envelopes in the body, decoded rows), in place or in the worker."""

    def __init__(self, config: EdgeConfig, dict_id: Callable[[], int | None] = lambda: None) -> None:
        """``dict_id``: the store's active zstd dictionary, which the worker encodes with."""
        self._cfg = config
        self._dict_id = dict_id
        self._min_bytes = config.http.decode_process_min_bytes
        self._workers = decode_worker_count(config.http.decode_workers, host_cpus())
        self._pool: ProcessPoolExecutor | None = None

    @property
    def worker_running(self) -> bool:
        return self._pool is not None

    async def decode(
        self,
        body: bytes,
        content_type: str,
        batch: bool,
        user_agent: str | None,
        client_ip: str | None,
        received_at: int,
    ) -> tuple[int, Decoded]:
        if not self._workers or len(body) < self._min_bytes:
            return decode_body(body, content_type, batch, user_agent, client_ip, self._cfg, received_at)
        pool = self._pool or self._start()
        loop = asyncio.get_running_loop()
        args = (body, content_type, batch, user_agent, client_ip, received_at, self._dict_id())
        try:
            out = await loop.run_in_executor(pool, _decode_in_worker, *args)
        except BrokenProcessPool:
            log.error("the HTTP decode worker died; starting a new one for the next body")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            out = await loop.run_in_executor(self._start(), _decode_in_worker, *args)
        if out[0] == "bad":
            raise BodyError(out[1])
        _, n, rows, rejections, ids_generated = out
        new = tuple.__new__  # a C call per row, not EventRow's Python __new__
        return n, Decoded(
            [new(EventRow, r) for r in rows], [new(Rejection, r) for r in rejections], ids_generated
        )

    def _start(self) -> ProcessPoolExecutor:
        self._pool = ProcessPoolExecutor(
            max_workers=self._workers,  # started one by one, as bodies queue up
            mp_context=multiprocessing.get_context("spawn"),  # the edge has threads: no fork
            initializer=_init_worker,
            initargs=(self._cfg.model_dump_json(),),
        )
        log.info(
            "HTTP bodies of %d bytes and more are decoded by up to %d worker processes",
            self._min_bytes,
            self._workers,
        )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


__all__ = ["HttpDecoder"]

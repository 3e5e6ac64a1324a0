"""Read connections for the API, off the event loop.

Queries are plain functions of a sqlite3 connection (see queries.py), run whole on a small
thread pool with one read-only connection per thread, so a handler awaits one call and the
loop never blocks on SQLite. The writer owns the only write connection; readers never write.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edgekite.codec import PayloadCodec
from edgekite.config import StoreSection
from edgekite.store.schema import connect

T = TypeVar("T")


class Reader:
    """One read-only connection, with ``ek_json()`` and a codec for payload columns."""

    def __init__(self, db_path: Path, store: StoreSection) -> None:
        self.conn: sqlite3.Connection = connect(db_path, store, readonly=True)
        self.codec = PayloadCodec()
        self.codec.register(self.conn)

    def decode(self, value: Any) -> str | None:
        return self.codec.decode(value)


class ReadPool:
    def __init__(self, db_path: Path, store: StoreSection, threads: int = 2) -> None:
        self._db_path = db_path
        self._store = store
        self._local = threading.local()
        self._readers: list[Reader] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgekite-read")

    def _reader(self) -> Reader:
        reader: Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = Reader(self._db_path, self._store)
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    async def run(self, fn: Callable[[Reader], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._reader()))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for reader in self._readers:
                reader.conn.close()
            self._readers.clear()

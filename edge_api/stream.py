"""Server-Sent Events of newly stored events, fanned out to bounded per-client queues.

The writer thread hands each committed batch over; converting rows to JSON happens on the
event loop and only while someone listens. A client that cannot keep up gets one ``lagged``
event instead of the edge buffering for it without bound.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from edgekite.ingest import STORED_FIELDS, EventRow
from edgekite.store.rows import row_to_event

log = logging.getLogger(__name__)

CLIENT_QUEUE = 500
LAGGED = b"event: lagged\ndata: {}\n\n"


def _identity(value: object) -> str | None:
    return value if isinstance(value, str) or value is None else None


class EventStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_clients: int) -> None:
        self._loop = loop
        self._clients: set[asyncio.Queue[bytes]] = set()
        self.max_clients = max_clients

    @property
    def clients(self) -> int:
        return len(self._clients)

    def on_commit(self, rows: list[EventRow]) -> None:
        """Writer thread: pass the batch to the loop (cheap when nobody listens)."""
        if self._clients:
            self._loop.call_soon_threadsafe(self._broadcast, rows)

    def _broadcast(self, rows: list[EventRow]) -> None:
        chunks = []
        for row in rows:
            event = row_to_event((*row[:STORED_FIELDS], 0), _identity)
            chunks.append(b"event: event\ndata: " + orjson.dumps(event) + b"\n\n")
        for q in list(self._clients):
            for chunk in chunks:
                if q.full():
                    q.get_nowait()  # make room for the notice itself
                    q.put_nowait(LAGGED)
                    break
                q.put_nowait(chunk)

    def subscribe(self) -> asyncio.Queue[bytes]:
        q: asyncio.Queue[bytes] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes]) -> None:
        self._clients.discard(q)

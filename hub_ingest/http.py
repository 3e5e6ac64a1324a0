"""``POST /api/ingest/batch``: the same batch and ack as over MQTT, for sites where MQTT out is blocked.

The body is the compressed batch; the answer is the Ack JSON, with an HTTP status an edge (or a
proxy) can act on without reading it: 200 ok, 429 retry (with Retry-After), 400 a malformed
batch, 401 unknown edge or wrong key, 403 a batch naming another edge than the request.
"""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web

from edgekite.hubstore import HubStore
from edgekite.sync_protocol import SIGNATURE_HEADER, Ack
from hub_ingest.processor import AUTH_REASONS, BatchProcessor, ack_code

log = logging.getLogger(__name__)

EDGE_HEADER = "X-EK-Edge"
PROCESSOR = web.AppKey("hub_ingest_processor", BatchProcessor)
STORE = web.AppKey("hub_ingest_store", HubStore)


def http_status(ack: Ack) -> int:
    if ack.status == "ok":
        return 200
    if ack.status == "retry":
        return 429
    code = ack_code(ack)
    if code == "edge_mismatch":
        return 403
    if code in AUTH_REASONS:
        return 401
    return 413 if code == "too_large" else 400


async def post_batch(request: web.Request) -> web.Response:
    processor = request.app[PROCESSOR]
    store = request.app[STORE]
    body = await request.read()  # over http.max_body_bytes: aiohttp answers 413 itself
    auth = request.headers.get("Authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    edge = request.headers.get(EDGE_HEADER) or None
    signature = request.headers.get(SIGNATURE_HEADER)
    loop = asyncio.get_running_loop()
    # Decode and validate off the event loop and off the store thread, then insert on it.
    prepared = await loop.run_in_executor(
        None, lambda: processor.prepare(edge, body, signature, http_key=key, transport="http")
    )
    ack = prepared if isinstance(prepared, Ack) else await store.run(processor.commit, prepared)
    headers = {}
    if ack.status == "retry":
        headers["Retry-After"] = str(max(1, math.ceil((ack.retry_after_ms or 1000) / 1000)))
    if http_status(ack) == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(
        body=ack.to_bytes(), status=http_status(ack), content_type="application/json", headers=headers
    )


def add_ingest_routes(app: web.Application, processor: BatchProcessor, store: HubStore) -> None:
    """Mount the ingest route on an application (the hub node's single aiohttp app)."""
    app[PROCESSOR] = processor
    app[STORE] = store
    app.router.add_post("/api/ingest/batch", post_batch)

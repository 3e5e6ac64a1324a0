"""aiohttp application of the edge: /metrics and /api/health for now.

State reaches handlers through typed ``web.AppKey``s, never module globals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore
from edgekite.store.maintenance import wal_bytes


@dataclass
class EdgeContext:
    """What the handlers may see of the running edge."""

    config: EdgeConfig
    store: EdgeStore
    metrics: EdgeMetrics
    mqtt_connected: Callable[[], bool]
    started_at: float


CTX = web.AppKey("edgekite_ctx", EdgeContext)


async def metrics_handler(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def health_handler(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    db = ctx.config.db_path
    payload: dict[str, Any] = {
        "status": "ok" if ctx.mqtt_connected() else "degraded",
        "edge_id": ctx.config.edge.edge_id,
        "uptime_secs": round(time.time() - ctx.started_at, 1),
        "mqtt_connected": ctx.mqtt_connected(),
        "ingest_queue_depth": ctx.store.queue_depth,
        "last_commit_ms": ctx.store.last_commit_ms,
        "last_store_error": ctx.store.last_error,
        "db_bytes": db.stat().st_size if db.exists() else 0,
        "wal_bytes": wal_bytes(db),
        "disk_free_bytes": _disk_free(db.parent),
    }
    return web.json_response(payload)


def _disk_free(path: os.PathLike[str]) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def create_app(ctx: EdgeContext) -> web.Application:
    app = web.Application(client_max_size=ctx.config.limits.max_message_bytes)
    app[CTX] = ctx
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/health", health_handler)
    return app

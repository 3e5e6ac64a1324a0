"""The edge's aiohttp application: ingest, the query API, SSE, /metrics and the dashboard.

State reaches handlers through typed ``web.AppKey``s, never module globals. Every error is
rendered as ``{"error": reason, "status": code}`` by one middleware.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psutil
from aiohttp import web

from edge_api import ingest_http, queries
from edge_api.decode_pool import HttpDecoder
from edge_api.params import (
    WINDOWS_MS,
    BadParamError,
    choice_param,
    decode_cursor,
    encode_cursor,
    limit_param,
    text_param,
    time_param,
)
from edge_api.stream import EventStream
from edgekite.config import EdgeConfig
from edgekite.envelope import CATEGORIES, SEVERITIES
from edgekite.metrics import EdgeMetrics
from edgekite.static_files import add_shared_static_routes
from edgekite.store import EdgeStore
from edgekite.store.maintenance import wal_bytes
from edgekite.store.reads import ReadPool

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class EdgeContext:
    """What the handlers may see of the running edge."""

    config: EdgeConfig
    store: EdgeStore
    metrics: EdgeMetrics
    mqtt_connected: Callable[[], bool]
    started_at: float
    sync_status: Callable[[], dict[str, Any]] = lambda: {"enabled": False}
    reads: ReadPool | None = None
    stream: EventStream | None = None
    decoder: HttpDecoder = field(init=False)
    process: psutil.Process = field(default_factory=psutil.Process)
    mqtt_bridge: str = "embedded_broker"  # or "child_process", "edge_process": where MQTT is received


CTX = web.AppKey("edgekite_ctx", EdgeContext)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


# -- middlewares ---------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            reason = f"body larger than {request.app[CTX].config.http.max_body_bytes} bytes"
        resp = _json({"error": reason, "status": exc.status}, exc.status)
        for h in ("Retry-After", "Allow", "WWW-Authenticate"):
            if h in exc.headers:
                resp.headers[h] = exc.headers[h]
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal error (see the edge's log)", "status": 500}, 500)


def _is_ingest(request: web.Request) -> bool:
    return request.path in ("/api/events", "/api/events/batch") and request.method in ("POST", "OPTIONS")


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cfg = request.app[CTX].config.http
    key = cfg.api_key
    if key is None or request.method == "OPTIONS":
        return await handler(request)
    path = request.path
    if not (path.startswith("/api/") or path == "/metrics"):
        return await handler(request)  # the dashboard's files and /t.js are public
    if _is_ingest(request) and (
        cfg.ingest_auth == "open" or (cfg.ingest_auth == "lan" and _is_loopback(request))
    ):
        return await handler(request)
    given = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None and path == "/api/stream":
        given = request.query.get("key")  # EventSource cannot send headers
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise web.HTTPUnauthorized(
            reason="an API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browsers on the site's pages may POST events (the tracker); nothing else is cross-origin."""
    origins = request.app[CTX].config.http.cors_origins
    origin = request.headers.get("Origin")
    allowed = origin is not None and _is_ingest(request) and ("*" in origins or origin in origins)
    if request.method == "OPTIONS" and _is_ingest(request):
        resp: web.StreamResponse = web.Response(status=204 if allowed else 403)
    else:
        resp = await handler(request)
    if allowed:
        resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else str(origin)
        resp.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, X-API-Key"
        resp.headers["Access-Control-Max-Age"] = "86400"
        if "*" not in origins:
            resp.headers["Vary"] = "Origin"
    return resp


# -- ingest --------------------------------------------------------------------------------
async def _ingest(request: web.Request, batch: bool) -> web.Response:
    ctx = request.app[CTX]
    body = await request.read()  # aiohttp refuses bodies over client_max_size with 413
    ctx.metrics.messages_received.labels("http").inc()
    user_agent = request.headers.get("User-Agent", "")[:1024] or None
    try:
        n, decoded = await ctx.decoder.decode(
            body, request.content_type, batch, user_agent, request.remote, ctx.store.now_ms()
        )
    except ingest_http.BodyError as exc:
        ctx.metrics.events_rejected.labels("invalid_json").inc()
        raise web.HTTPBadRequest(reason=str(exc)) from None
    ctx.metrics.events_received.labels("http").inc(n)
    try:
        result = await ctx.store.ingest(ingest_http.write_item(decoded, len(body)))
    except RuntimeError as exc:  # QueueClosedError: shutting down
        raise web.HTTPServiceUnavailable(
            reason=f"the edge is stopping: {exc}", headers={"Retry-After": "5"}
        ) from None
    if not result.committed:
        raise web.HTTPServiceUnavailable(
            reason="the store could not commit; retry", headers={"Retry-After": "5"}
        )
    return _json(ingest_http.response_body(result.accepted, result.duplicates, result.rejected))


async def post_event(request: web.Request) -> web.Response:
    return await _ingest(request, batch=False)


async def post_batch(request: web.Request) -> web.Response:
    return await _ingest(request, batch=True)


# -- queries -------------------------------------------------------------------------------
def _reads(request: web.Request) -> ReadPool:
    reads = request.app[CTX].reads
    assert reads is not None
    return reads


def _cursor_out(value: list[int] | None) -> str | None:
    return None if value is None else encode_cursor(value)


async def get_timeline(request: web.Request) -> web.Response:
    q = request.query
    now = queries.now_ms()
    sev_raw = text_param(q, "severity")
    severities = tuple(s.strip() for s in sev_raw.split(",")) if sev_raw else ()
    if any(s not in SEVERITIES for s in severities):
        raise BadParamError("severity", f"must be among {', '.join(SEVERITIES)}")
    category = text_param(q, "category")
    if category is not None and category not in CATEGORIES:
        raise BadParamError("category", f"must be one of {', '.join(CATEGORIES)}")
    f = queries.TimelineFilter(
        start=time_param(q, "from", 0) or 0,
        end=time_param(q, "to", now + 86_400_000) or 0,
        category=category,
        type=text_param(q, "type"),
        source=text_param(q, "source"),
        severities=severities,
        q=text_param(q, "q"),
    )
    limit, cursor = limit_param(q), decode_cursor(q, 2)
    out = await _reads(request).run(lambda r: queries.timeline(r, f, limit, cursor))
    out["next_cursor"] = _cursor_out(out["next_cursor"])
    return _json(out)


async def get_event(request: web.Request) -> web.Response:
    try:
        event_id = UUID(request.match_info["event_id"])
    except ValueError:
        raise BadParamError("event_id", "not a UUID") from None
    event = await _reads(request).run(lambda r: queries.event_by_id(r, event_id))
    if event is None:
        raise web.HTTPNotFound(reason=f"no event {event_id}")
    return _json(event)


async def get_counts(request: web.Request) -> web.Response:
    q = request.query
    bucket = choice_param(q, "bucket", ("hour", "day"), "hour")
    group_by = choice_param(q, "group_by", ("type", "source", "category"), "type")
    now = queries.now_ms()
    default_span = 86_400_000 if bucket == "hour" else 30 * 86_400_000
    start = time_param(q, "from", now - default_span) or 0
    end = time_param(q, "to", now) or now
    if end < start:
        raise BadParamError("to", "is before 'from'")
    max_buckets = 24 * 92 if bucket == "hour" else 3660
    size = 3_600_000 if bucket == "hour" else 86_400_000
    if (end - start) // size > max_buckets:
        raise BadParamError("from", f"range too long for {bucket} buckets (max {max_buckets})")
    return _json(await _reads(request).run(lambda r: queries.counts(r, bucket, group_by, start, end)))


async def get_top(request: web.Request) -> web.Response:
    q = request.query
    dim = choice_param(q, "dim", ("page", "referrer", "type", "source", "error"), "type")
    window = choice_param(q, "window", tuple(WINDOWS_MS), "24h")
    limit = limit_param(q, 10)
    now = queries.now_ms()
    items = await _reads(request).run(lambda r: queries.top(r, dim, WINDOWS_MS[window], limit, now))
    return _json({"dim": dim, "window": window, "items": items})


async def get_uniques(request: web.Request) -> web.Response:
    window = choice_param(request.query, "window", tuple(WINDOWS_MS), "24h")
    lg_k = request.app[CTX].config.rollups.hll_lg_k
    now = queries.now_ms()
    out = await _reads(request).run(lambda r: queries.uniques(r, WINDOWS_MS[window], now, lg_k))
    return _json({"estimate": True, "method": "HyperLogLog (Apache DataSketches)", "window": window, **out})


async def get_alerts(request: web.Request) -> web.Response:
    limit, cursor = limit_param(request.query), decode_cursor(request.query, 2)
    out = await _reads(request).run(lambda r: queries.alerts(r, limit, cursor))
    out["next_cursor"] = _cursor_out(out["next_cursor"])
    return _json(out)


async def post_alerts_seen(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    until = queries.now_ms()
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(reason='body must be JSON like {"until": ms}') from None
        if isinstance(body, dict) and body.get("until") is not None:
            until = time_param({"until": str(body["until"])}, "until", until) or until

    def save(conn: Any) -> None:
        conn.execute(
            "INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (queries.ALERTS_SEEN_KEY, str(until), queries.now_ms()),
        )

    await ctx.store.run_write(save)
    unseen = await _reads(request).run(lambda r: queries.unseen_alerts(r, until))
    return _json({"seen_at": until, "unseen": unseen})


async def get_incidents(request: web.Request) -> web.Response:
    q = request.query
    now = queries.now_ms()
    start = time_param(q, "from", 0) or 0
    end = time_param(q, "to", now + 86_400_000) or now
    source, limit, cursor = text_param(q, "source"), limit_param(q), decode_cursor(q, 2)
    out = await _reads(request).run(lambda r: queries.incidents(r, start, end, source, limit, cursor))
    out["next_cursor"] = _cursor_out(out["next_cursor"])
    return _json(out)


async def get_dead_letters(request: web.Request) -> web.Response:
    limit, cursor = limit_param(request.query), decode_cursor(request.query, 1)
    out = await _reads(request).run(lambda r: queries.dead_letters(r, limit, cursor))
    out["next_cursor"] = _cursor_out(out["next_cursor"])
    return _json(out)


def _storage(ctx: EdgeContext) -> dict[str, Any]:
    db = ctx.config.db_path
    st = os.statvfs(db.parent)
    return {
        "db_bytes": db.stat().st_size if db.exists() else 0,
        "wal_bytes": wal_bytes(db),
        "disk_free_bytes": st.f_bavail * st.f_frsize,
        "disk_total_bytes": st.f_blocks * st.f_frsize,
    }


async def get_health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    now = queries.now_ms()
    stale_ms = int(ctx.config.health.stale_after_secs * 1000)
    srcs = await _reads(request).run(lambda r: queries.sources(r, now, stale_ms))
    connected = ctx.mqtt_connected()
    writer_alive = ctx.store.writer_alive
    status = "ok" if connected and writer_alive and ctx.store.last_error is None else "degraded"
    if not writer_alive:
        status = "failing"
    return _json(
        {
            "status": status,
            "writer_alive": writer_alive,
            "edge_id": ctx.config.edge.edge_id,
            "now": now,
            "uptime_secs": round(time.time() - ctx.started_at, 1),
            "mqtt_connected": connected,
            "mqtt_bridge": ctx.mqtt_bridge,
            "ingest_queue_depth": ctx.store.queue_depth,
            "ingest_queue_max_bytes": ctx.store.queue_max_bytes,
            "last_commit_ms": ctx.store.last_commit_ms,
            "last_store_error": ctx.store.last_error,
            "sources": srcs,
            "stale_sources": sum(1 for s in srcs if s["stale"]),
            "storage": _storage(ctx),
            "sync": ctx.sync_status(),
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    now = queries.now_ms()
    return _json(await _reads(request).run(lambda r: queries.stats(r, now)))


def helper_kind(cmdline: list[str]) -> str:
    """What a child process of the edge is there for, from its command line."""
    line = " ".join(cmdline)
    if "edge_bridge.bridge_process" in line:
        return "mqtt_bridge"
    if "multiprocessing.resource_tracker" in line:
        return "resource_tracker"  # started by multiprocessing with the decode pool
    if "multiprocessing.spawn" in line:
        return "decode_worker"
    return "other"


def _helpers(p: psutil.Process) -> list[dict[str, Any]]:
    """The edge's helper processes (the MQTT bridge child, HTTP decode workers): their memory
    is the edge's too, and an operator sizing a box needs the sum."""
    out = []
    for child in p.children(recursive=True):
        try:
            out.append(
                {"pid": child.pid, "kind": helper_kind(child.cmdline()), "rss_bytes": child.memory_info().rss}
            )
        except psutil.Error:
            continue  # it just exited
    return out


async def get_resources(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    p = ctx.process
    vm = psutil.virtual_memory()
    st = _storage(ctx)
    own_rss = p.memory_info().rss
    helpers = _helpers(p)
    return _json(
        {
            "process": {
                "cpu_percent": p.cpu_percent(interval=None),
                "rss_bytes": own_rss,
                "threads": p.num_threads(),
                "helper_processes": helpers,
                # RSS summed: pages the helpers share with the edge (libpython, libc) count twice
                "total_rss_bytes": own_rss + sum(h["rss_bytes"] for h in helpers),
            },
            "system": {
                "cpu_percent": psutil.cpu_percent(interval=None),
                "cpu_count": psutil.cpu_count(),
                "memory_total_bytes": vm.total,
                "memory_available_bytes": vm.available,
                "load_avg": list(os.getloadavg()),
            },
            "disk": {
                "total_bytes": st["disk_total_bytes"],
                "free_bytes": st["disk_free_bytes"],
                "db_bytes": st["db_bytes"],
            },
        }
    )


async def get_stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    stream = ctx.stream
    assert stream is not None
    if stream.clients >= stream.max_clients:
        raise web.HTTPServiceUnavailable(reason="too many live streams open", headers={"Retry-After": "10"})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    q = stream.subscribe()
    try:
        await resp.write(b": connected\n\n")
        while True:
            try:
                chunk = await asyncio.wait_for(q.get(), timeout=15)
            except TimeoutError:
                chunk = b": keep-alive\n\n"
            await resp.write(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        stream.unsubscribe(q)
    return resp


async def metrics_handler(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.Response(
        body=ctx.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


# -- dashboard files -----------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.exists():
        return web.Response(text="EdgeKite edge: the dashboard files are missing; the API is at /api/.")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def tracker(request: web.Request) -> web.Response:
    script = STATIC_DIR / "t.js"
    if not script.exists():
        raise web.HTTPNotFound(reason="tracker not installed")
    text = script.read_text().replace(
        "__EK_RESPECT_DNT__", "true" if request.app[CTX].config.http.tracker_respect_dnt else "false"
    )
    return web.Response(
        text=text,
        content_type="application/javascript",
        headers={"Cache-Control": "public, max-age=3600", "Access-Control-Allow-Origin": "*"},
    )


# -- assembly ------------------------------------------------------------------------------
async def _no_cache_static(request: web.Request, response: web.StreamResponse) -> None:
    """On a LAN revalidating is cheap, and after an upgrade old JS must not meet a new page."""
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


async def _lifecycle(app: web.Application) -> Any:
    ctx = app[CTX]
    ctx.reads = ReadPool(ctx.config.db_path, ctx.config.store)
    ctx.decoder = HttpDecoder(ctx.config, dict_id=lambda: ctx.store.codec.active_dict_id)
    ctx.stream = EventStream(asyncio.get_running_loop(), ctx.config.http.max_sse_clients)
    ctx.store.add_listener(ctx.stream.on_commit)
    ctx.process.cpu_percent(interval=None)  # prime: the first reading is otherwise 0
    yield
    ctx.reads.close()
    ctx.decoder.close()


def create_app(ctx: EdgeContext) -> web.Application:
    app = web.Application(
        client_max_size=ctx.config.http.max_body_bytes,
        middlewares=[error_middleware, cors_middleware, auth_middleware],
    )
    app[CTX] = ctx
    app.cleanup_ctx.append(_lifecycle)
    app.on_response_prepare.append(_no_cache_static)
    r = app.router
    r.add_post("/api/events", post_event)
    r.add_post("/api/events/batch", post_batch)
    r.add_route("OPTIONS", "/api/events", post_event)
    r.add_route("OPTIONS", "/api/events/batch", post_batch)
    r.add_get("/api/events/{event_id}", get_event)
    r.add_get("/api/timeline", get_timeline)
    r.add_get("/api/counts", get_counts)
    r.add_get("/api/top", get_top)
    r.add_get("/api/uniques", get_uniques)
    r.add_get("/api/alerts", get_alerts)
    r.add_post("/api/alerts/seen", post_alerts_seen)
    r.add_get("/api/incidents", get_incidents)
    r.add_get("/api/dead_letters", get_dead_letters)
    r.add_get("/api/health", get_health)
    r.add_get("/api/stats", get_stats)
    r.add_get("/api/resources", get_resources)
    r.add_get("/api/stream", get_stream)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/t.js", tracker)
    r.add_get("/", index)
    add_shared_static_routes(r)  # /static/dom.js: the helpers both dashboards share
    if STATIC_DIR.exists():
        r.add_static("/static/", STATIC_DIR, append_version=False)
    return app

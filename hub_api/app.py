"""The hub's read API (aiohttp): fleet, event search across edges, dead letters, health, metrics.

State reaches handlers through a typed ``web.AppKey``; every query runs on the store's single
thread (``HubStore.run``), so the API and ingest share one chDB session safely. Errors are
``{"error": {"code": ..., "message": ...}}`` from one middleware. ``http.api_key`` protects
everything here; the ingest route (mounted on the same app by the hub node) authenticates edges
with their own keys instead.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from edgekite.config import HubConfig
from edgekite.envelope import CATEGORIES, EDGE_ID_PATTERN, SEVERITIES, SOURCE_ID_RE, parse_timestamp
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore, StorageError
from hub_api import queries

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# Edges authenticate on ingest with their own keys; "/" is the analysts' dashboard page.
PUBLIC_PATHS = frozenset({"/api/ingest/batch", "/"})
PUBLIC_PREFIX = "/static/"  # the analysts' dashboard files hold no data; the API they call does


@dataclass
class MqttState:
    configured: bool = False
    consumers: int = 0
    connected: Callable[[], int] = field(default=lambda: 0)


@dataclass
class HubApiContext:
    config: HubConfig
    store: HubStore
    metrics: HubMetrics
    dev_mode: bool
    mqtt: MqttState = field(default_factory=MqttState)
    started_at: float = field(default_factory=time.time)


CTX = web.AppKey("hub_api_ctx", HubApiContext)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        resp = _error(exc.status, exc.code, exc.message)
        resp.headers.update(exc.headers)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            message = f"body larger than {request.app[CTX].config.http.max_body_bytes} bytes"
        resp = _error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
        for h in ("Allow", "Retry-After", "WWW-Authenticate"):
            if h in exc.headers:
                resp.headers[h] = exc.headers[h]
        return resp
    except StorageError as exc:
        log.error("storage error on %s %s: %s", request.method, request.path, exc)
        resp = _error(503, "storage_unavailable", "the hub's storage failed this query; retry")
        resp.headers["Retry-After"] = "5"
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal", "internal error (see the hub's log)")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[CTX].config.http.api_key
    if key is None or request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIX):
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("X-API-Key")
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required (Authorization: Bearer <key>)",
            {"WWW-Authenticate": "Bearer"},
        )
    return await handler(request)


# -- parameters -----------------------------------------------------------------------------
def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        n = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", "limit: an integer is required") from None
    if not 1 <= n <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit: between 1 and {MAX_LIMIT}")
    return n


def _time(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"{name}: {exc}") from None


def _text(request: web.Request, name: str, pattern: Any = None, max_len: int = 128) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len or (pattern is not None and not pattern.match(raw)):
        raise ApiError(400, "bad_request", f"{name}: not a valid value")
    return raw


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    raw = request.query.get(name)
    if not raw:
        return ()
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ApiError(400, "bad_request", f"{name}: {bad[0]!r} is not one of {', '.join(allowed)}")
    return values


def _cursor(request: web.Request, arity: int) -> list[Any] | None:
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        return queries.decode_cursor(raw, arity)
    except queries.BadCursorError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


# -- handlers -------------------------------------------------------------------------------
async def get_fleet(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    rows = await ctx.store.run(ctx.store.query_rows, queries.fleet_sql(ctx.store.database))
    edges = [
        {
            "edge_id": edge_id,
            "events": int(events),
            "last_seen": int(last_seen),
            "backlog_reported": int(backlog),
            "batches": int(batches),
            "rejected": int(rejected),
        }
        for edge_id, events, last_seen, backlog, batches, rejected in rows
    ]
    return _json({"edges": edges, "dev_mode": ctx.dev_mode})


_EDGE_RE = re.compile(EDGE_ID_PATTERN)


async def get_events(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    limit = _limit(request)
    f = queries.EventFilter(
        edge_id=_text(request, "edge_id", _EDGE_RE),
        source_id=_text(request, "source_id", SOURCE_ID_RE),
        category=(_choice(request, "category", CATEGORIES) or (None,))[0],
        type=_text(request, "type"),
        severity=_choice(request, "severity", SEVERITIES),
        from_ms=_time(request, "from"),
        to_ms=_time(request, "to"),
        q=_text(request, "q", max_len=256),
    )
    cur = _cursor(request, 2)
    cursor: tuple[int, str] | None = None
    if cur is not None:
        if type(cur[0]) is not int or type(cur[1]) is not str or len(cur[1]) != 36:
            raise ApiError(400, "bad_request", "cursor: not a cursor this API returned")
        cursor = (cur[0], cur[1])
    sql, params = queries.events_sql(ctx.store.database, f, limit + 1, cursor)
    rows = await ctx.store.run(ctx.store.query_rows, sql, params)
    more = len(rows) > limit
    rows = rows[:limit]
    events = [queries.event_from_row(r) for r in rows]
    next_cursor = queries.encode_cursor([rows[-1][3], rows[-1][0]]) if more and rows else None
    return _json({"events": events, "next_cursor": next_cursor})


async def get_dead_letters(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    limit = _limit(request)
    edge_id = _text(request, "edge_id", _EDGE_RE)
    cur = _cursor(request, 4)
    if cur is not None and not (
        type(cur[0]) is int and type(cur[1]) is str and type(cur[2]) is str and type(cur[3]) is int
    ):
        raise ApiError(400, "bad_request", "cursor: not a cursor this API returned")
    sql, params = queries.dead_letters_sql(ctx.store.database, edge_id, limit + 1, cur)
    rows = await ctx.store.run(ctx.store.query_rows, sql, params)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "hub_received_at": t,
            "edge_id": e,
            "batch_id": b,
            "index": i,
            "event_id": eid,
            "code": code,
            "reason": reason,
            "payload": payload,
        }
        for t, e, b, i, eid, code, reason, payload in rows
    ]
    last = rows[-1] if rows else None
    next_cursor = queries.encode_cursor([last[0], last[1], last[2], last[3]]) if more and last else None
    return _json({"dead_letters": items, "next_cursor": next_cursor})


async def get_health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    storage_ok, storage_error, latest = True, None, None
    try:
        rows = await asyncio.wait_for(
            ctx.store.run(
                ctx.store.query_rows,
                "SELECT toUnixTimestamp64Milli(max(hub_received_at)), count() "
                f"FROM {ctx.store.table('batches')}",
            ),
            timeout=10,
        )
        if rows and rows[0][1]:
            latest = int(rows[0][0])
    except (StorageError, TimeoutError) as exc:
        storage_ok, storage_error = False, str(exc)[:300] or "timeout"
    connected = ctx.mqtt.connected()
    mqtt_ok = not ctx.mqtt.configured or connected == ctx.mqtt.consumers
    return _json(
        {
            "status": "ok" if storage_ok and mqtt_ok else "degraded",
            "now": time.time_ns() // 1_000_000,
            "uptime_secs": round(time.time() - ctx.started_at, 1),
            "dev_mode": ctx.dev_mode,
            "storage": {"ok": storage_ok, "backend": ctx.store.description, "error": storage_error},
            "mqtt": {
                "configured": ctx.mqtt.configured,
                "consumers": ctx.mqtt.consumers,
                "connected": connected,
            },
            "last_hub_received_at": latest,
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    body = request.app[CTX].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_app(ctx: HubApiContext) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=ctx.config.http.max_body_bytes
    )
    app[CTX] = ctx
    app.router.add_get("/api/fleet", get_fleet)
    app.router.add_get("/api/events", get_events)
    app.router.add_get("/api/dead_letters", get_dead_letters)
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    # Imported here: both modules use this one's context and helpers (a cycle at the top).
    from hub_api.analytics import add_analytics_routes
    from hub_api.dashboard import add_dashboard_routes

    add_dashboard_routes(app)  # the analysts' dashboard: / and /static/
    add_analytics_routes(app)  # /api/web/*, /api/iot/*, /api/fleet/{edge_id}
    return app

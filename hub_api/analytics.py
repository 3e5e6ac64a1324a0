"""The hub's analytics API (issue 6): web overview, top lists, funnels, cohorts, IoT and per-edge fleet.

Registered on the hub's app by :func:`add_analytics_routes` (``hub_api.app.create_app``), so the
read API's middlewares apply: ``{"error": {"code", "message"}}`` errors and ``http.api_key``.
Every JSON answer carries ``"truth": "hub"`` (these are the analytical numbers, deduplicated by
``event_id``), ``latest_event_ms`` (the newest ingested event's ``hub_received_at``) and the
effective ``from``/``to``; ``format=csv`` exports the endpoint's table. The SQL, and why it is
not a ``SELECT`` over the ``web_visits`` view, is in :mod:`hub_api.analytics_queries`; the
definitions are docs/metrics.md's. All queries of one request run in one hop on the store thread.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from edgekite.envelope import EDGE_ID_PATTERN, parse_timestamp
from edgekite.hubstore import HubStore
from hub_api import analytics_queries as aq
from hub_api.app import CTX, ApiError
from hub_api.edge_days import EdgeDaysCache, FleetDaysTable, edge_day_rows, plan_days

DEFAULT_DAYS = 7
# Closed hub days of each edge's drill-down, computed once (hub_api/edge_days.py).
EDGE_DAYS = web.AppKey("hub_api_edge_days", EdgeDaysCache)
EDGE_DAYS_TABLE = web.AppKey("hub_api_edge_days_table", FleetDaysTable)
MAX_RANGE_DAYS = 400
MAX_TEXT = 256
TOP_DEFAULT, TOP_MAX = 10, 100
MAX_FUNNEL_STEPS, MIN_FUNNEL_STEPS = 8, 2
DEFAULT_WINDOW_SECS, MAX_WINDOW_SECS = 3600, 90 * 86_400
DEFAULT_WEEKS, MAX_WEEKS = 8, 26
SERIES_MAX_ROWS = 20_000
INCIDENTS_DEFAULT, INCIDENTS_MAX = 50, 500

_EDGE_RE = re.compile(EDGE_ID_PATTERN)
_STEP_RE = re.compile(r"^(page|event):(.+)$")

Table = tuple[Sequence[str], list[list[Any]]]


# -- parameters ---------------------------------------------------------------------------------
def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _text(request: web.Request, name: str, max_len: int = MAX_TEXT) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len or any(ord(c) < 32 for c in raw):
        raise _bad(f"{name}: not a valid value (at most {max_len} printable characters)")
    return raw


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise _bad(f"{name}: an integer is required") from None
    if not lo <= n <= hi:
        raise _bad(f"{name}: between {lo} and {hi}")
    return n


def _choice(request: web.Request, name: str, allowed: Sequence[str], default: str | None) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise _bad(f"{name}: {raw[:40]!r} is not one of {', '.join(allowed)}")
    return raw


def _period(
    request: web.Request, now_ms: int | None = None, default_days: int = DEFAULT_DAYS
) -> tuple[int, int]:
    values: dict[str, int | None] = {}
    for name in ("from", "to"):
        raw = request.query.get(name)
        if raw is None or raw == "":
            values[name] = None
            continue
        try:
            values[name] = parse_timestamp(raw)
        except ValueError as exc:
            raise _bad(f"{name}: {exc}") from None
    to_ms = values["to"] if values["to"] is not None else (now_ms or time.time_ns() // 1_000_000)
    from_ms = values["from"] if values["from"] is not None else to_ms - default_days * aq.DAY_MS
    if from_ms >= to_ms:
        raise _bad("from: must be before to")
    if to_ms - from_ms > MAX_RANGE_DAYS * aq.DAY_MS:
        raise _bad(f"from/to: at most {MAX_RANGE_DAYS} days")
    return from_ms, to_ms


def _include_bots(request: web.Request) -> bool:
    raw = request.query.get("include_bots", "0").lower()
    if raw in ("0", "false", "no", ""):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise _bad("include_bots: 0 or 1")


def _format(request: web.Request) -> str:
    fmt = _choice(request, "format", ("json", "csv"), "json")
    assert fmt is not None
    return fmt


def _web_query(request: web.Request) -> aq.WebQuery:
    ctx = request.app[CTX]
    from_ms, to_ms = _period(request)
    filters: dict[str, str] = {}
    for name in aq.FILTER_NAMES:
        value = _text(request, name)
        if value is not None:
            if name == "edge_id" and not _EDGE_RE.match(value):
                raise _bad("edge_id: not a valid edge id")
            filters[name] = value
    return aq.WebQuery(
        db=ctx.store.database,
        from_ms=from_ms,
        to_ms=to_ms,
        site=_text(request, "site"),
        include_bots=_include_bots(request),
        filters=filters,
    )


# -- running ------------------------------------------------------------------------------------
def _run_all(store: HubStore, queries: Sequence[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
    """Blocking, on the store thread: the latest-event query and then every query of the request."""
    out = [store.query_rows(aq.latest_event_sql(store.database))]
    out.extend(store.query_rows(sql, params) for sql, params in queries)
    return out


async def _query(
    request: web.Request, queries: Sequence[tuple[str, dict[str, Any]]]
) -> tuple[int | None, list[list[tuple[Any, ...]]]]:
    ctx = request.app[CTX]
    results = await ctx.store.run(_run_all, ctx.store, queries)
    latest = results[0]
    latest_ms = int(latest[0][0]) if latest and int(latest[0][1]) > 0 else None
    return latest_ms, results[1:]


def _num(x: Any) -> float:
    v = float(x)
    return v if math.isfinite(v) else 0.0


def _respond(
    request: web.Request,
    name: str,
    body: dict[str, Any],
    table: Table,
    *,
    latest_ms: int | None,
    from_ms: int,
    to_ms: int,
) -> web.Response:
    if _format(request) == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table[0])
        writer.writerows(table[1])
        return web.Response(
            text=buf.getvalue(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="edgekite-{name}.csv"'},
        )
    payload = {"truth": "hub", "latest_event_ms": latest_ms, "from": from_ms, "to": to_ms, **body}
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


# -- web ----------------------------------------------------------------------------------------
async def get_sites(request: web.Request) -> web.Response:
    q = _web_query(request)
    limit = _int(request, "limit", 1000, 1, 1000)
    latest, (rows,) = await _query(request, [aq.sites_sql(q, limit)])
    sites = [{"site": s, "pageviews": int(pv), "visitors": int(v)} for s, pv, v in rows]
    table: Table = (
        ("site", "pageviews", "visitors"),
        [[r["site"], r["pageviews"], r["visitors"]] for r in sites],
    )
    return _respond(
        request, "sites", {"sites": sites}, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms
    )


async def get_overview(request: web.Request) -> web.Response:
    q = _web_query(request)
    latest, (rows,) = await _query(request, [aq.overview_sql(q)])
    totals = {
        "pageviews": 0,
        "visitors": 0,
        "visits": 0,
        "bounces": 0,
        "bounce_rate": 0.0,
        "avg_duration_secs": 0.0,
    }
    series = []
    for is_total, t, pv, visitors, visits, bounces, duration in rows:
        if int(is_total):
            n = int(visits)
            totals = {
                "pageviews": int(pv),
                "visitors": int(visitors),
                "visits": n,
                "bounces": int(bounces),
                "bounce_rate": round(int(bounces) / n, 4) if n else 0.0,
                "avg_duration_secs": round(int(duration) / n, 1) if n else 0.0,
            }
        else:
            series.append(
                {"t": int(t), "pageviews": int(pv), "visitors": int(visitors), "visits": int(visits)}
            )
    interval = "hour" if q.interval_ms() == aq.HOUR_MS else "day"
    table: Table = (
        ("t", "pageviews", "visitors", "visits"),
        [[s["t"], s["pageviews"], s["visitors"], s["visits"]] for s in series],
    )
    body = {"totals": totals, "interval": interval, "series": series}
    return _respond(request, "overview", body, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms)


async def get_top(request: web.Request) -> web.Response:
    dim = _choice(request, "dim", aq.DIMS, None)
    if dim is None:
        raise _bad(f"dim: required, one of {', '.join(aq.DIMS)}")
    limit = _int(request, "limit", TOP_DEFAULT, 1, TOP_MAX)
    q = _web_query(request)
    latest, (rows,) = await _query(request, [aq.top_sql(q, dim, limit)])
    per_visit = dim in ("entry_page", "exit_page")
    out: list[dict[str, Any]] = []
    for value, visitors, pageviews, visits in rows:
        row: dict[str, Any] = {"value": value, "visitors": int(visitors)}
        if per_visit:
            row["visits"] = int(visits)
        else:
            row["pageviews"] = int(pageviews)
            if dim in aq.VISIT_DIMS:
                row["visits"] = int(visits)
        out.append(row)
    cols: list[str] = ["value", "visitors", "visits"] if per_visit else ["value", "visitors", "pageviews"]
    table: Table = (cols, [[r.get(c, "") for c in cols] for r in out])
    return _respond(
        request,
        f"top-{dim}",
        {"dim": dim, "rows": out},
        table,
        latest_ms=latest,
        from_ms=q.from_ms,
        to_ms=q.to_ms,
    )


def _steps(request: web.Request) -> list[aq.FunnelStep]:
    raw = request.query.get("steps", "")
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not MIN_FUNNEL_STEPS <= len(parts) <= MAX_FUNNEL_STEPS:
        raise _bad(
            f"steps: {MIN_FUNNEL_STEPS} to {MAX_FUNNEL_STEPS} comma-separated page:<path> or event:<type>"
        )
    steps = []
    for p in parts:
        m = _STEP_RE.match(p)
        if m is None or len(p) > MAX_TEXT:
            raise _bad(f"steps: {p[:40]!r} is not page:<path> or event:<type>")
        steps.append(aq.FunnelStep(m.group(1), m.group(2)))
    return steps


async def get_funnel(request: web.Request) -> web.Response:
    steps = _steps(request)
    window = _int(request, "window_secs", DEFAULT_WINDOW_SECS, 1, MAX_WINDOW_SECS)
    q = _web_query(request)
    latest, (rows,) = await _query(request, [aq.funnel_sql(q, steps, window * 1000)])
    exactly = {int(level): int(n) for level, n in rows}
    reached = [sum(n for level, n in exactly.items() if level >= i + 1) for i in range(len(steps))]
    first = reached[0] if reached else 0
    out = []
    for i, step in enumerate(steps):
        prev = reached[i - 1] if i else reached[0]
        out.append(
            {
                "step": step.label,
                "visitors": reached[i],
                "conversion_rate": round(reached[i] / first, 4) if first else 0.0,
                "drop_off": prev - reached[i],
                "drop_off_rate": round((prev - reached[i]) / prev, 4) if prev else 0.0,
            }
        )
    table: Table = (
        ("step", "visitors", "conversion_rate", "drop_off", "drop_off_rate"),
        [[s["step"], s["visitors"], s["conversion_rate"], s["drop_off"], s["drop_off_rate"]] for s in out],
    )
    body = {"window_secs": window, "steps": out}
    return _respond(request, "funnel", body, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms)


def _monday(ms: int) -> int:
    # 1970-01-01 was a Thursday: Mondays are 4 days after the epoch's week boundaries.
    return ((ms - 4 * aq.DAY_MS) // aq.WEEK_MS) * aq.WEEK_MS + 4 * aq.DAY_MS


async def get_cohorts(request: web.Request) -> web.Response:
    weeks = _int(request, "weeks", DEFAULT_WEEKS, 1, MAX_WEEKS)
    q = _web_query(request)
    if request.query.get("from"):
        first = _monday(q.from_ms)
        weeks = min(MAX_WEEKS, max(1, -(-(q.to_ms - first) // aq.WEEK_MS)))
    else:
        first = _monday(q.to_ms - 1) - (weeks - 1) * aq.WEEK_MS
    q = aq.WebQuery(q.db, first, q.to_ms, q.site, q.include_bots, q.filters)
    latest, (rows,) = await _query(request, [aq.cohorts_sql(q)])
    grid: dict[int, list[int]] = {}
    for cohort, n, visitors in rows:
        c = int(cohort)
        span = max(0, min(weeks, (q.to_ms - c + aq.WEEK_MS - 1) // aq.WEEK_MS))
        grid.setdefault(c, [0] * span)
        if int(n) < len(grid[c]):
            grid[c][int(n)] = int(visitors)
    cohorts = [
        {"week_start": c, "visitors": r[0] if r else 0, "retention": r} for c, r in sorted(grid.items())
    ]
    table: Table = (
        ("week_start", "visitors", *[f"week_{i}" for i in range(weeks)]),
        [[c, r[0] if r else 0, *r] for c, r in sorted(grid.items())],
    )
    body = {"weeks": weeks, "cohorts": cohorts}
    return _respond(request, "cohorts", body, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms)


# -- IoT ----------------------------------------------------------------------------------------
def _iot_query(request: web.Request) -> tuple[aq.IotQuery, int]:
    from_ms, to_ms = _period(request)
    edge = _text(request, "edge_id")
    if edge is not None and not _EDGE_RE.match(edge):
        raise _bad("edge_id: not a valid edge id")
    interval = _choice(request, "interval", ("hour", "day"), None)
    if interval is None:
        interval = "hour" if to_ms - from_ms <= 48 * aq.HOUR_MS else "day"
    step = aq.HOUR_MS if interval == "hour" else aq.DAY_MS
    q = aq.IotQuery(
        request.app[CTX].store.database,
        from_ms,
        to_ms,
        _text(request, "site"),
        _text(request, "source"),
        edge,
    )
    return q, step


async def get_detections(request: web.Request) -> web.Response:
    q, step = _iot_query(request)
    label = _text(request, "label")
    limit = _int(request, "limit", INCIDENTS_DEFAULT, 1, INCIDENTS_MAX)
    latest, (rows, incidents) = await _query(
        request, [aq.detections_sql(q, label, step, SERIES_MAX_ROWS + 1), aq.incidents_sql(q, label, limit)]
    )
    out = [
        {
            "t": int(t),
            "camera_id": cam,
            "label": lab,
            "detections": int(n),
            "avg_confidence": round(_num(avg), 4),
            "max_confidence": round(_num(mx), 4),
        }
        for t, cam, lab, n, avg, mx in rows[:SERIES_MAX_ROWS]
    ]
    inc = []
    for r in incidents:
        d = dict(zip(aq.INCIDENT_COLUMNS, r, strict=True))
        for k in ("first_seen", "last_seen", "duration", "detections", "correlated"):
            d[k] = int(d[k])
        d["max_confidence"] = round(_num(d["max_confidence"]), 4)
        d["avg_confidence"] = round(_num(d["avg_confidence"]), 4)
        inc.append(d)
    cols = ("t", "camera_id", "label", "detections", "avg_confidence", "max_confidence")
    table: Table = (cols, [[r[c] for c in cols] for r in out])
    body = {
        "interval": "hour" if step == aq.HOUR_MS else "day",
        "rows": out,
        "truncated": len(rows) > SERIES_MAX_ROWS,
        "incidents": inc,
    }
    return _respond(request, "detections", body, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms)


async def get_sensors(request: web.Request) -> web.Response:
    q, step = _iot_query(request)
    metric = _text(request, "metric")
    latest, (rows,) = await _query(request, [aq.sensors_sql(q, metric, step, SERIES_MAX_ROWS + 1)])
    out = [
        {
            "t": int(t),
            "source_id": src,
            "metric": m,
            "min": _num(lo),
            "avg": round(_num(avg), 4),
            "max": _num(hi),
            "samples": int(n),
        }
        for t, src, m, lo, avg, hi, n in rows[:SERIES_MAX_ROWS]
    ]
    cols = ("t", "source_id", "metric", "min", "avg", "max", "samples")
    table: Table = (cols, [[r[c] for c in cols] for r in out])
    body = {
        "interval": "hour" if step == aq.HOUR_MS else "day",
        "rows": out,
        "truncated": len(rows) > SERIES_MAX_ROWS,
    }
    return _respond(request, "sensors", body, table, latest_ms=latest, from_ms=q.from_ms, to_ms=q.to_ms)


# -- fleet --------------------------------------------------------------------------------------
def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def get_edge(request: web.Request) -> web.Response:
    edge_id = request.match_info["edge_id"]
    if not _EDGE_RE.match(edge_id):
        raise _bad("edge_id: not a valid edge id")
    from_ms, to_ms = _period(request, default_days=30)
    ctx = request.app[CTX]
    db = ctx.store.database
    params = {"edge_id": edge_id, "from": from_ms, "to": to_ms}
    plan = plan_days(from_ms, to_ms, _now_ms())
    latest, (ledger, known, beats) = await _query(
        request,
        [
            (aq.edge_ledger_sql(db), params),
            (aq.edge_known_sql(db), params),
            (aq.edge_heartbeats_sql(db), params),
        ],
    )
    batches, last_seen, backlog = ledger[0] if ledger else (0, 0, 0)
    if not int(batches) and not (known and int(known[0][0])):
        raise ApiError(404, "not_found", f"no edge {edge_id!r} has sent anything to this hub")
    days_sql = aq.edge_first_arrivals_sql(db)

    def first_arrivals(a: int, b: int) -> list[tuple[Any, ...]]:
        return ctx.store.query_rows(days_sql, {"edge_id": edge_id, "a": a, "b": b})

    days = await ctx.store.run(
        edge_day_rows, request.app[EDGE_DAYS], first_arrivals, db, edge_id, plan, request.app[EDGE_DAYS_TABLE]
    )
    events_per_day: dict[int, int] = {}
    per_source: dict[str, list[int]] = {}
    lag = []
    for k, _hub_day, d, s, n, q, last in days:
        if int(k) == 0:
            events_per_day[int(d)] = events_per_day.get(int(d), 0) + int(n)
            acc = per_source.setdefault(str(s), [0, int(last)])
            acc[0] += int(n)
            acc[1] = max(acc[1], int(last))
        else:
            lag.append(
                {
                    "day": int(d),
                    "events": int(n),
                    "p50_ms": int(q[0]),
                    "p95_ms": int(q[1]),
                    "p99_ms": int(q[2]),
                }
            )
    lag.sort(key=lambda row: row["day"])
    per_day = [{"day": d, "events": n} for d, n in sorted(events_per_day.items())]
    sources = sorted(per_source.items(), key=lambda item: (-item[1][0], item[0]))[: aq.EDGE_SOURCES_MAX]
    vitals: dict[str, tuple[Any, ...]] = {}
    if beats:
        newest: dict[str, Any] = {"edge_id": edge_id}
        for i, r in enumerate(beats):
            newest[f"s{i}"], newest[f"t{i}"] = r[0], int(r[2])
        vitals_sql = aq.edge_heartbeat_vitals_sql(db, len(beats))
        vitals = {str(r[0]): r[1:] for r in await ctx.store.run(ctx.store.query_rows, vitals_sql, newest)}
    heartbeats = []
    for source_id, source_type, last_at, count in beats:
        uptime, cpu, memory, disk = vitals.get(str(source_id), (0, 0.0, 0.0, 0.0))
        heartbeats.append(
            {
                "source_id": source_id,
                "source_type": source_type,
                "last_heartbeat_at": int(last_at),
                "heartbeats": int(count),
                "uptime_seconds": int(uptime),
                "cpu_percent": cpu,
                "memory_percent": memory,
                "disk_percent": disk,
            }
        )
    body = {
        "edge_id": edge_id,
        "last_seen": int(last_seen) if int(batches) else None,
        "backlog_reported": int(backlog) if int(batches) else None,
        "events_per_day": per_day,
        "sync_lag": lag,
        "heartbeats": heartbeats,
        "sources": [{"source_id": s, "events": n, "last_seen": t} for s, (n, t) in sources],
    }
    table: Table = (("day", "events"), [[d["day"], d["events"]] for d in per_day])
    return _respond(request, f"edge-{edge_id}", body, table, latest_ms=latest, from_ms=from_ms, to_ms=to_ms)


ROUTES: tuple[tuple[str, Callable[[web.Request], Any]], ...] = (
    ("/api/web/sites", get_sites),
    ("/api/web/overview", get_overview),
    ("/api/web/top", get_top),
    ("/api/web/funnel", get_funnel),
    ("/api/web/cohorts", get_cohorts),
    ("/api/iot/detections", get_detections),
    ("/api/iot/sensors", get_sensors),
    ("/api/fleet/{edge_id}", get_edge),
)


def add_analytics_routes(app: web.Application) -> None:
    """Mount the analytics routes on the hub's app (after ``create_app`` set ``app[CTX]``)."""
    app[EDGE_DAYS] = EdgeDaysCache()
    app[EDGE_DAYS_TABLE] = FleetDaysTable(app[CTX].store)
    for path, handler in ROUTES:
        app.router.add_get(path, handler)

"""SQL builders for the hub's analytics API (issue 6): ``(sql, params)`` pairs, values always bound.

Why the SQL is built here and does not select from the ``web_visits`` / ``web_daily`` views: a
filter on *top* of a view with window functions is not pushed below them, so the views
sessionise the whole history for every question (1.6–1.8 s for one site on 10 M events). These
builders put the site, the period and ``is_bot`` into the innermost ``SELECT`` (over
``events_enriched FINAL``, one row per ``event_id``, as the views read it) and sessionise only
what the question needs, with the views' definitions (docs/metrics.md):

- a visit is one visitor's web events on one site with gaps ≤ 30 min, per ``(site, visitor_id,
  is_bot)``; the events of an unknown visitor (``visitor_id = 0``) form no visit (each is its
  own pseudo-visit here, so filters still apply to it, but it never counts as a visit/visitor);
- the period is widened by :data:`LOOKBACK_MS` at the start: a visit in progress at ``from``
  keeps its landing attributes (unless it has lasted longer than that), and only visits that
  *start* in ``[from, to)`` count as visits, bounces and duration (30 minutes of look-back would
  already make that classification exact; the rest is for the attributes);
- page views and visitors are those of events observed in ``[from, to)``;
- filters select **visits** by the visit's attribute (its landing page view's: Umami's rule), or
  for ``path`` visits that viewed that path; the events of a matching visit are then counted.

The site's sources are a pre-filter of the innermost ``SELECT`` (``source_id`` is in the table's
sorting key, ``site`` is not), so ``FINAL`` merges only the site's rows, and visits are cut with
array functions over each visitor's sorted events, not window functions (see :func:`_visits`).

The IoT and fleet builders read the raw ``events`` table with the period and the filters in the
innermost ``SELECT`` and one row per ``event_id`` (the hub's rule for the raw table): ``LIMIT 1 BY
event_id`` for the IoT rows, ``GROUP BY event_id`` (parallel) for an edge's millions of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
VISIT_GAP_MS = 1_800_000
LOOKBACK_MS = 6 * HOUR_MS
"""How far before ``from`` the sessionisation reads (see the module doc)."""

FILTER_COLUMNS: dict[str, str] = {
    "country": "country",
    "region": "region",
    "city": "city",
    "browser": "browser",
    "os": "os",
    "device": "device_type",
    "channel": "channel",
    "referrer": "referrer_host",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "edge_id": "edge_id",
}
"""Query parameter -> the enriched column a visit's (landing) attribute comes from; plus ``path``."""

FILTER_NAMES: tuple[str, ...] = (*FILTER_COLUMNS, "path")

EVENT_DIMS: dict[str, str] = {
    "page": "url_path",
    "country": "country",
    "region": "region",
    "city": "city",
    "browser": "browser",
    "os": "os",
    "device": "device_type",
}
"""Top-list dimensions counted per event (stable for a visitor, or the page itself)."""

VISIT_DIMS: dict[str, str] = {
    "entry_page": "entry_path",
    "exit_page": "exit_path",
    "referrer": "referrer_host",
    "channel": "channel",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
}
"""Top-list dimensions counted per visit, by the visit's landing attribute (acquisition)."""

DIMS: tuple[str, ...] = (*EVENT_DIMS, *VISIT_DIMS)


def _ts(name: str) -> str:
    return f"fromUnixTimestamp64Milli({{{name}:Int64}}, 'UTC')"


@dataclass(frozen=True)
class WebQuery:
    """One web question: the database, an optional site, the period, bots, filters."""

    db: str
    from_ms: int
    to_ms: int
    site: str | None = None
    include_bots: bool = False
    filters: dict[str, str] = field(default_factory=dict)

    def interval_ms(self) -> int:
        return HOUR_MS if self.to_ms - self.from_ms <= 48 * HOUR_MS else DAY_MS

    def base_params(self, lookback: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"from": self.from_ms, "to": self.to_ms, "lo": self.from_ms - lookback}
        if self.site is not None:
            params["site"] = self.site
        for name, value in self.filters.items():
            params[f"f_{name}"] = value
        return params

    def base_where(self, *, lookback: bool) -> str:
        where = [
            "category = 'web'",
            f"observed_at >= {_ts('lo' if lookback else 'from')}",
            f"observed_at < {_ts('to')}",
        ]
        if self.site is not None:
            # The site's own sources first: ``source_id`` is in the sorting key, so the primary key
            # prunes to them before FINAL merges (``site`` is derived and has only a skip index).
            # The sources of any stored copy with that site (no FINAL): a superset, so exact.
            where.append(
                f"source_id IN (SELECT DISTINCT source_id FROM {self.db}.events_enriched "
                "WHERE category = 'web' AND site = {site:String})"
            )
            where.append("site = {site:String}")
        if not self.include_bots:
            where.append("is_bot = 0")
        return " AND ".join(where)


def _events_from(q: WebQuery, columns: list[str], *, lookback: bool, extra_where: str = "") -> str:
    where = q.base_where(lookback=lookback) + (f" AND {extra_where}" if extra_where else "")
    return f"SELECT {', '.join(columns)} FROM {q.db}.events_enriched FINAL WHERE {where}"


Fields = dict[str, str]
"""Column name -> its expression on one event ``x`` of a visit's array (see :func:`_visits`)."""


def _visits(
    q: WebQuery,
    landing: list[str],
    *,
    events: Callable[[Fields], str],
    per_event: Sequence[str] = (),
    need_entry: bool = False,
    need_exit: bool = False,
) -> str:
    """One row per visit (and per unknown-visitor event) with ``start``, ``dur_s``, ``pv``, ``pv_in``
    (page views observed in the period), ``ev_in``, the landing attributes ``v_<column>`` of
    ``landing`` (+ ``entry_path``/``exit_path`` if asked) and ``evs``: an array of
    ``events(fields)`` over the visit's events in the period, where ``fields`` maps ``t``,
    ``is_pv``, ``url_path`` and the columns of ``landing``/``per_event`` to their expressions on
    the event ``x``. Filters applied.

    Sessionised without window functions: one ``GROUP BY`` visitor collects the visitor's events
    as one array sorted by ``(t, event_id)`` (the order the views use; by ``t`` alone when no
    landing/entry/exit attribute is asked for, as then ties change nothing), ``arraySplit`` cuts
    it at gaps > 30 min, and each visit's numbers are array functions over its slice: the first
    event is the start, the first page view (else the first event) the landing one, the last page
    view the exit. Only the columns the question needs are collected. Visitors without an event
    in the period are dropped (their visits count nowhere).
    """
    filter_cols = [FILTER_COLUMNS[n] for n in q.filters if n in FILTER_COLUMNS]
    attrs = sorted((set(landing) | set(filter_cols) | set(per_event)) - {"url_path"})
    ordered = bool(landing or filter_cols or need_entry or need_exit)
    cols = ["t", "is_pv"]
    if ordered:
        cols.append("event_id")
    if need_entry or need_exit or "path" in q.filters or "url_path" in per_event:
        cols.append("url_path")
    cols += attrs
    index = {c: i for i, c in enumerate(cols, start=1)}
    fields: Fields = {c: f"x.{i}" for c, i in index.items()}
    exprs = {"t": "toUnixTimestamp64Milli(observed_at) AS t", "is_pv": "type = 'page_view' AS is_pv"}
    base = _events_from(q, ["site", "visitor_id", "is_bot", *[exprs.get(c, c) for c in cols]], lookback=True)
    sort_key = "(x.1, x.3)" if ordered else "x.1"
    # Two plain columns gather faster as two arrays zipped afterwards (both see the group's rows in
    # the same order) than as one array of tuples: 7 days of all sites, 460 -> 330 ms. With the
    # wider rows of the ordered case (ids, strings), one array of tuples stays the faster.
    if ordered or len(cols) > 2:
        collect = f"groupArray(({', '.join(cols)}))"
    else:
        collect = f"arrayZip({', '.join(f'groupArray({c})' for c in cols)})"
    per_visitor = f"""SELECT site, visitor_id, is_bot,
        arraySort(x -> {sort_key}, {collect}) AS ev,
        arraySplit((x, gap) -> visitor_id = 0 OR gap > {VISIT_GAP_MS}, ev,
            arrayDifference(arrayMap(x -> x.1, ev))) AS vs
    FROM ({base}) GROUP BY site, visitor_id, is_bot HAVING max(t) >= {{from:Int64}}"""
    selects = [
        "site",
        "visitor_id",
        "is_bot",
        "visit_no",
        "v[1].1 AS start",
        "intDiv(v[-1].1 - start, 1000) AS dur_s",
        "arrayCount(x -> x.2, v) AS pv",
        "arrayCount(x -> x.2 AND x.1 >= {from:Int64}, v) AS pv_in",
        "arrayCount(x -> x.1 >= {from:Int64}, v) AS ev_in",
        *[
            f"tupleElement(v[if(pv > 0, arrayFirstIndex(x -> x.2, v), 1)], {index[c]}) AS v_{c}"
            for c in attrs
            if c in landing or c in filter_cols
        ],
        f"arrayMap(x -> {events(fields)}, arrayFilter(x -> x.1 >= {{from:Int64}}, v)) AS evs",
    ]
    if need_entry:
        selects.append(f"tupleElement(arrayFirst(x -> x.2, v), {index['url_path']}) AS entry_path")
    if need_exit:
        selects.append(f"tupleElement(arrayLast(x -> x.2, v), {index['url_path']}) AS exit_path")
    where = [f"v_{FILTER_COLUMNS[n]} = {{f_{n}:String}}" for n in q.filters if n in FILTER_COLUMNS]
    if "path" in q.filters:
        where.append(f"arrayExists(x -> x.2 AND x.{index['url_path']} = {{f_path:String}}, v)")
    sql = f"""SELECT {", ".join(selects)}
FROM ({per_visitor})
ARRAY JOIN vs AS v, arrayEnumerate(vs) AS visit_no"""
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql


def overview_sql(q: WebQuery) -> tuple[str, dict[str, Any]]:
    """Rows ``(is_total, t, pageviews, visitors, visits, bounces, total_duration)``: one per bucket
    of the interval (hour or day, UTC) and one total row (``is_total = 1``)."""
    step = q.interval_ms()
    visits = _visits(
        q, [], events=lambda f: f"(toInt64(intDiv({f['t']}, {step}) * {step}), toUInt8({f['is_pv']}))"
    )
    per_row = f"""arrayJoin(arrayConcat(
            arrayMap(x -> (x.1, x.2, toUInt8(visitor_id != 0), toUInt8(0), toUInt8(0), toUInt64(0)), evs),
            if(start >= {{from:Int64}} AND visitor_id != 0,
               [(toInt64(intDiv(start, {step}) * {step}), toUInt8(0), toUInt8(0), toUInt8(1),
                 toUInt8(pv = 1), toUInt64(dur_s))],
               [])))"""
    sql = f"""SELECT grouping(b) AS is_total, b, sum(x.2) AS pageviews,
    uniqExactIf(visitor_id, x.3 = 1) AS visitors, sum(x.4) AS visits, sum(x.5) AS bounces,
    sum(x.6) AS total_duration
FROM (SELECT visitor_id, {per_row} AS x, x.1 AS b FROM ({visits}))
GROUP BY GROUPING SETS ((b), ())
ORDER BY is_total, b"""
    return sql, q.base_params(LOOKBACK_MS)


def sites_sql(q: WebQuery, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows ``(site, pageviews, visitors)`` of the period (event level, filters not applied)."""
    base = _events_from(q, ["site", "type", "visitor_id"], lookback=False)
    sql = f"""SELECT site, countIf(type = 'page_view') AS pageviews,
    uniqExactIf(visitor_id, visitor_id != 0) AS visitors
FROM ({base}) GROUP BY site ORDER BY pageviews DESC, site LIMIT {{limit:UInt32}}"""
    return sql, {**q.base_params(), "limit": limit}


def top_sql(q: WebQuery, dim: str, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows ``(value, visitors, pageviews, visits)`` of the top ``limit`` values of ``dim``.

    ``page`` and the per-visitor attributes without filters: one pass over the period's events.
    Otherwise sessionised: event dimensions count the events of matching visits, visit dimensions
    (entry/exit page, referrer, channel, UTM) count visits by their landing attribute; entry and
    exit pages count only visits that started in the period (and their ``visits`` is the ranking).
    """
    params = {**q.base_params(LOOKBACK_MS), "limit": limit}
    order = "visitors DESC, pageviews DESC, value"
    if dim in EVENT_DIMS and not q.filters:
        col = EVENT_DIMS[dim]
        extra = "type = 'page_view'" if dim == "page" else ""
        base = _events_from(q, [f"{col} AS value", "type", "visitor_id"], lookback=False, extra_where=extra)
        sql = f"""SELECT value, uniqExactIf(visitor_id, visitor_id != 0) AS visitors,
    countIf(type = 'page_view') AS pageviews, toUInt64(0) AS visits
FROM ({base}) GROUP BY value ORDER BY {order} LIMIT {{limit:UInt32}}"""
        return sql, params
    if dim in EVENT_DIMS:
        col = EVENT_DIMS[dim]
        visits = _visits(q, [], events=lambda f: f"({f[col]}, toUInt8({f['is_pv']}))", per_event=[col])
        pv_only = "WHERE x.2 = 1" if dim == "page" else ""
        sql = f"""SELECT x.1 AS value, uniqExactIf(visitor_id, visitor_id != 0) AS visitors,
    sum(x.2) AS pageviews, toUInt64(0) AS visits
FROM ({visits}) ARRAY JOIN evs AS x {pv_only}
GROUP BY value ORDER BY {order} LIMIT {{limit:UInt32}}"""
        return sql, params
    col = VISIT_DIMS[dim]
    if dim in ("entry_page", "exit_page"):
        visits = _visits(
            q,
            [],
            events=lambda f: "toUInt8(1)",
            need_entry=dim == "entry_page",
            need_exit=dim == "exit_page",
        )
        sql = f"""SELECT {col} AS value, uniqExact(visitor_id) AS visitors, sum(pv_in) AS pageviews,
    count() AS visits
FROM ({visits}) WHERE visitor_id != 0 AND start >= {{from:Int64}} AND pv > 0
GROUP BY value ORDER BY visits DESC, visitors DESC, value LIMIT {{limit:UInt32}}"""
        return sql, params
    visits = _visits(q, [col], events=lambda f: "toUInt8(1)")
    sql = f"""SELECT v_{col} AS value, uniqExactIf(visitor_id, visitor_id != 0) AS visitors,
    sum(pv_in) AS pageviews, countIf(visitor_id != 0 AND start >= {{from:Int64}}) AS visits
FROM ({visits}) WHERE ev_in > 0
GROUP BY value ORDER BY {order} LIMIT {{limit:UInt32}}"""
    return sql, params


@dataclass(frozen=True)
class FunnelStep:
    kind: str  # "page" | "event"
    value: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.value}"


def _event_filters(q: WebQuery) -> tuple[str, dict[str, Any]]:
    """Filters as conditions on each event's own attributes (funnels and cohorts are per visitor)."""
    conds = [f"{FILTER_COLUMNS[n]} = {{f_{n}:String}}" for n in q.filters if n in FILTER_COLUMNS]
    if "path" in q.filters:
        conds.append("url_path = {f_path:String}")
    return " AND ".join(conds), {}


def funnel_sql(q: WebQuery, steps: list[FunnelStep], window_ms: int) -> tuple[str, dict[str, Any]]:
    """Rows ``(level, visitors)``: how many visitors reached exactly ``level`` steps, in order,
    within ``window_ms`` of their first step (ClickHouse ``windowFunnel``, per visitor and site)."""
    params = q.base_params()
    params["window"] = window_ms
    conds = []
    for i, step in enumerate(steps):
        params[f"s{i}"] = step.value
        if step.kind == "page":
            conds.append(f"(type = 'page_view' AND url_path = {{s{i}:String}})")
        else:
            conds.append(f"type = {{s{i}:String}}")
    extra, _ = _event_filters(q)
    where = "visitor_id != 0 AND (" + " OR ".join(conds) + ")" + (f" AND {extra}" if extra else "")
    base = _events_from(
        q,
        ["site", "visitor_id", "toUInt64(toUnixTimestamp64Milli(observed_at)) AS t", "type", "url_path"],
        lookback=False,
        extra_where=where,
    )
    sql = f"""SELECT level, count() AS visitors FROM (
    SELECT site, visitor_id, windowFunnel({{window:UInt64}})(t, {", ".join(conds)}) AS level
    FROM ({base}) GROUP BY site, visitor_id)
WHERE level > 0 GROUP BY level ORDER BY level"""
    return sql, params


def cohorts_sql(q: WebQuery) -> tuple[str, dict[str, Any]]:
    """Rows ``(week_start_ms, week_no, visitors)``: visitors first seen (within the period) in the
    week ``week_start`` and active ``week_no`` weeks later; weeks start Monday 00:00 UTC."""
    extra, _ = _event_filters(q)
    base = _events_from(
        q,
        ["site", "visitor_id", "toUnixTimestamp64Milli(toDateTime64(toMonday(observed_at), 3, 'UTC')) AS w"],
        lookback=False,
        extra_where="visitor_id != 0" + (f" AND {extra}" if extra else ""),
    )
    sql = f"""SELECT cohort, intDiv(w - cohort, {WEEK_MS}) AS n, count() AS visitors FROM (
    SELECT site, visitor_id, arrayMin(ws) AS cohort, ws FROM (
        SELECT site, visitor_id, groupUniqArray(w) AS ws FROM ({base}) GROUP BY site, visitor_id))
ARRAY JOIN ws AS w
GROUP BY cohort, n ORDER BY cohort, n"""
    return sql, q.base_params()


# -- IoT -------------------------------------------------------------------------------------------


_CAMERA_EXPR = (
    "if(JSONExtractString(data, 'camera_id') != '', JSONExtractString(data, 'camera_id'), source_id)"
)
_LABEL_EXPR = (
    "if(JSONExtractString(data, 'label') != '', JSONExtractString(data, 'label'), "
    "replaceRegexpOne(type, '_detected$', ''))"
)


@dataclass(frozen=True)
class IotQuery:
    db: str
    from_ms: int
    to_ms: int
    site: str | None = None
    source: str | None = None
    edge_id: str | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"from": self.from_ms, "to": self.to_ms}
        for k in ("site", "source", "edge_id"):
            v = getattr(self, k)
            if v is not None:
                p[k] = v
        return p

    def where(self, types: str) -> str:
        w = [f"category = 'iot' AND {types}", f"observed_at >= {_ts('from')}", f"observed_at < {_ts('to')}"]
        if self.edge_id is not None:
            w.append("edge_id = {edge_id:String}")
        return " AND ".join(w)


def detections_sql(q: IotQuery, label: str | None, step_ms: int, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows ``(t, camera_id, label, detections, avg_confidence, max_confidence)``.

    The site/camera/label filters are in the innermost ``WHERE`` (before ``LIMIT 1 BY``: the
    copies of an event carry the same payload, so they pass or fail together), and ``site`` is
    parsed only when filtered on."""
    params = {**q.params(), "limit": limit}
    conds = _detection_filters(q, label, params)
    inner = f"""SELECT toUnixTimestamp64Milli(observed_at) AS t_ms,
        {_CAMERA_EXPR} AS camera_id, {_LABEL_EXPR} AS label,
        JSONExtractFloat(data, 'confidence') AS confidence
    FROM {q.db}.events WHERE {" AND ".join([q.where("endsWith(type, '_detected')"), *conds])}
    LIMIT 1 BY event_id"""
    sql = f"""SELECT intDiv(t_ms, {step_ms}) * {step_ms} AS t, camera_id, label, count() AS detections,
    avg(confidence) AS avg_confidence, max(confidence) AS max_confidence
FROM ({inner})
GROUP BY t, camera_id, label ORDER BY t, camera_id, label LIMIT {{limit:UInt32}}"""
    return sql, params


def _verbatim(value: str) -> bool:
    """Whether ``value`` appears as it is in any JSON text holding it as a string: printable ASCII
    without ``"``, ``\\`` or ``/`` (JSON escapes the first two, some writers the slash, and
    ``json.dumps`` non-ASCII; the hub writes ``data`` with orjson, which escapes only those two)."""
    return all(" " <= c <= "~" and c not in '"\\/' for c in value)


def _camera_is(param: str, value: str) -> str:
    """``camera_id = {param}``, with a cheap substring test first when it is exact: a row whose
    camera is ``value`` has it as its ``source_id`` or inside ``data``, so the JSON is parsed only
    for rows that pass (30 days of detections, one camera: ~18x fewer parses)."""
    exact = f"{_CAMERA_EXPR} = {{{param}:String}}"
    if not _verbatim(value):
        return exact
    return f"(source_id = {{{param}:String}} OR position(data, {{{param}:String}}) > 0) AND {exact}"


def _detection_filters(q: IotQuery, label: str | None, params: dict[str, Any]) -> list[str]:
    conds = []
    if q.site is not None:
        conds.append("site = {site:String}")  # stored at ingest (schema.py)
    if q.source is not None:
        conds.append(_camera_is("source", q.source))
    if label is not None:
        conds.append(f"{_LABEL_EXPR} = {{label:String}}")
        params["label"] = label
    return conds


INCIDENT_COLUMNS: tuple[str, ...] = (
    "incident_key",
    "site",
    "first_seen",
    "last_seen",
    "duration",
    "detections",
    "cameras",
    "edges",
    "labels",
    "max_confidence",
    "avg_confidence",
    "correlated",
)


def incidents_sql(q: IotQuery, label: str | None, limit: int) -> tuple[str, dict[str, Any]]:
    """The ``iot_incidents`` view's columns for incidents with a detection in the period, newest
    first (times in ms). Runs of uncorrelated detections are cut at the period's start."""
    params = {**q.params(), "limit": limit}
    having = []
    if q.site is not None:
        having.append("site = {site:String}")
    if q.source is not None:
        having.append("has(cameras, {source:String})")
    if label is not None:
        having.append("has(labels, {label:String})")
        params["label"] = label
    base = q.where("endsWith(type, '_detected')")
    only = {False: "", True: ""}  # per branch: uncorrelated, correlated
    if q.source is not None:
        # Only the incidents the camera is part of: its own runs of uncorrelated detections (runs
        # are per camera) and every detection of a correlated incident it has a detection in.
        only[False] = f" AND {_camera_is('source', q.source)}"
        only[True] = f""" AND incident_id IN (SELECT incident_id FROM {q.db}.events WHERE {base}
                AND ifNull(incident_id, '') != '' AND {_camera_is("source", q.source)})"""
    if q.site is not None:
        # Only incidents with a detection at the site (whole, all their detections), and only
        # cameras with an uncorrelated detection there (all of their runs): the incident's site
        # is one of its detections', so the rest cannot pass ``site = …`` below; 30 days, one of
        # six sites: parsing and grouping a sixth of the detections.
        at_site = f"{base} AND site = {{site:String}}"
        only[True] += f""" AND incident_id IN (SELECT incident_id FROM {q.db}.events WHERE {at_site}
                AND ifNull(incident_id, '') != '')"""
        only[False] += f""" AND {_CAMERA_EXPR} IN (SELECT {_CAMERA_EXPR} FROM {q.db}.events WHERE {at_site}
                AND ifNull(incident_id, '') = '')"""
    if label is None:
        # Without a label filter (decided per incident, after the grouping), only the newest
        # ``limit`` correlated incidents (of the site: an incident's site is its first
        # detection's) can be in the answer: find them from plain columns first, then parse and
        # group only their detections (7 days, all cameras: ~306k rows parsed and grouped
        # before, a few hundred now; 30 days of one site: 263 -> 182 ms, same rows).
        first_at_site = ""
        if q.site is not None:
            first_at_site = " HAVING argMin(site, (observed_at, event_id)) = {site:String}"
        # (the newest ones are picked among the camera's or site's: no need to test that twice)
        only[True] = f""" AND incident_id IN (SELECT incident_id FROM {q.db}.events WHERE {base}
                AND ifNull(incident_id, '') != ''{only[True]}
                GROUP BY incident_id{first_at_site}
                ORDER BY min(observed_at) DESC, incident_id LIMIT {{limit:UInt32}})"""
    cols = f"""event_id, toUnixTimestamp64Milli(observed_at) AS t_ms, edge_id,
        site, {_CAMERA_EXPR} AS camera_id, {_LABEL_EXPR} AS label,
        JSONExtractFloat(data, 'confidence') AS confidence, ifNull(incident_id, '') AS incident_id"""
    names = "event_id, t_ms, edge_id, site, camera_id, label, confidence, incident_id"

    def rows(correlated: bool) -> str:
        # the copies of an event share incident_id: each is in one branch only
        kind = "!=" if correlated else "="
        return f"""SELECT {cols} FROM {q.db}.events WHERE {base} AND ifNull(incident_id, '') {kind} ''
        {only[correlated]} LIMIT 1 BY event_id"""

    # Window functions only over the uncorrelated detections (runs per camera); a correlated
    # detection's incident is its incident_id.
    win = "PARTITION BY camera_id ORDER BY t_ms, event_id"
    runs = f"""SELECT {names}, concat(camera_id, '#', toString(sum(new_run) OVER (
            {win} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))) AS incident_key
        FROM (SELECT *, toUInt32(t_ms - lagInFrame(t_ms, 1, toInt64(0)) OVER (
            {win} ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) > 60000) AS new_run FROM ({rows(False)}))"""
    keyed = f"SELECT {names}, incident_id AS incident_key FROM ({rows(True)}) UNION ALL {runs}"
    # The site of an incident: its first detection's.
    sql = f"""SELECT incident_key, first_site AS site, first_seen, last_seen, duration, detections, cameras,
    edges, labels, max_confidence, avg_confidence, correlated
FROM (
    SELECT incident_key, argMin(site, (t_ms, event_id)) AS first_site, min(t_ms) AS first_seen,
        max(t_ms) AS last_seen,
        toUInt32(intDiv(max(t_ms) - min(t_ms), 1000)) AS duration, count() AS detections,
        arraySort(groupUniqArray(camera_id)) AS cameras, arraySort(groupUniqArray(edge_id)) AS edges,
        arraySort(groupUniqArray(label)) AS labels, max(confidence) AS max_confidence,
        avg(confidence) AS avg_confidence, max(incident_id != '') AS correlated
    FROM ({keyed}) GROUP BY incident_key)
{"WHERE " + " AND ".join(having) if having else ""}
ORDER BY first_seen DESC, incident_key LIMIT {{limit:UInt32}}"""
    return sql, params


def sensors_sql(q: IotQuery, metric: str | None, step_ms: int, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows ``(t, source_id, metric, min, avg, max, samples)`` of sensor readings with a value."""
    params = {**q.params(), "limit": limit}
    outer = []
    if metric is not None:
        outer.append("metric = {metric:String}")
        params["metric"] = metric
    types = "type = 'sensor_reading'" + (" AND source_id = {source:String}" if q.source is not None else "")
    # The site test in the innermost WHERE, behind its substring prefilter (30 days, one of six
    # sites: ~0.9 s when every reading's site was parsed and filtered afterwards).
    at_site = " AND site = {site:String}" if q.site is not None else ""
    inner = f"""SELECT toUnixTimestamp64Milli(observed_at) AS t_ms, source_id,
        JSONExtractString(data, 'metric') AS metric, JSONExtractFloat(data, 'value') AS value
    FROM {q.db}.events WHERE {q.where(types)}{at_site} AND JSONHas(data, 'value')
    LIMIT 1 BY event_id"""
    sql = f"""SELECT intDiv(t_ms, {step_ms}) * {step_ms} AS t, source_id, metric, min(value) AS min,
    avg(value) AS avg, max(value) AS max, count() AS samples
FROM ({inner}) {"WHERE " + " AND ".join(outer) if outer else ""}
GROUP BY t, source_id, metric ORDER BY t, source_id, metric LIMIT {{limit:UInt32}}"""
    return sql, params


# -- fleet -----------------------------------------------------------------------------------------

EDGE_SOURCES_MAX = 1000
"""Sources listed per edge (the busiest first)."""


def edge_ledger_sql(db: str) -> str:
    """``(batches, last_seen_ms, backlog_reported)`` of one edge from the batch ledger."""
    return f"""SELECT count(), toUnixTimestamp64Milli(max(hub_received_at)), argMax(backlog, hub_received_at)
FROM {db}.batches FINAL WHERE edge_id = {{edge_id:String}}"""


def edge_first_arrivals_sql(db: str) -> str:
    """Rows ``(kind, hub_day_ms, day_ms, source_id, events, [p50, p95, p99], last_seen_ms)`` of the
    edge's events whose **first arrival** at the hub is in ``[a, b)`` (ms, ``hub_received_at``).

    Each event counts once, on the hub day it first arrived (``hub_day_ms``): kind 0 = events per
    day of the edge's ``received_at`` and source (``last_seen_ms``: the source's newest
    ``observed_at``), kind 1 = sync lag (first arrival - ``observed_at``) percentiles of the hub
    day (``day_ms`` = ``hub_day_ms``, ``source_id`` empty). Rows of a closed hub day never
    change: a copy arriving later is later, and the table keeps the first copy on merge
    (``first_arrival_ver``), so the fleet route caches them per day.

    An event with a copy stored before its copy here (an earlier copy of this edge, or another
    edge's: the merge keeps only the first) did not first arrive here and is left out. One
    aggregation per ``event_id`` sees every copy of the candidates: copies share ``observed_at``
    (a key column), so only rows within the candidates' ``observed_at`` range are read, and of
    those only the candidates' ids are kept (an hour of data probes a few hundred thousand ids,
    not every stored one). ``h_ms`` is this edge's first copy in ``[a, b)``, ``first_ms`` the
    first copy anywhere. Two copies arriving in the same millisecond through two edges count for
    both (a merge then keeps one)."""
    h = "hub_received_at"
    own = f"edge_id = {{edge_id:String}} AND {h} >= {_ts('a')} AND {h} < {_ts('b')}"
    kept = f"""WITH (SELECT (min(observed_at), max(observed_at)) FROM {db}.events WHERE {own}) AS win
    SELECT event_id, minIf(toUnixTimestamp64Milli({h}), {own}) AS h_ms,
        min(toUnixTimestamp64Milli({h})) AS first_ms,
        anyIf(toUnixTimestamp64Milli(received_at), {own}) AS r_ms,
        any(toUnixTimestamp64Milli(observed_at)) AS o_ms, anyIf(toString(source_id), {own}) AS src
    FROM {db}.events
    WHERE observed_at >= win.1 AND observed_at <= win.2 AND {h} < {_ts("b")}
        AND event_id IN (SELECT event_id FROM {db}.events WHERE {own})
    GROUP BY event_id HAVING h_ms > 0 AND first_ms >= h_ms"""
    groups = f"""SELECT intDiv(r_ms, {DAY_MS}) * {DAY_MS} AS dr, src, intDiv(h_ms, {DAY_MS}) * {DAY_MS} AS dh,
        count() AS n, quantilesExactState(0.5, 0.95, 0.99)(h_ms - o_ms) AS st, max(o_ms) AS last
    FROM ({kept}) GROUP BY dr, src, dh"""
    return f"""SELECT k, dh, d, s, sum(n) AS events, quantilesExactMergeIf(0.5, 0.95, 0.99)(st, k = 1) AS q,
    max(last) AS last_seen
FROM (
    SELECT arrayJoin([(0, dr, src), (1, dh, '')]) AS kd, kd.1 AS k, kd.2 AS d, kd.3 AS s, dh, n, st, last
    FROM ({groups}))
GROUP BY k, dh, d, s ORDER BY k, dh, d, s"""


def edge_heartbeats_sql(db: str) -> str:
    """``(source_id, source_type, last_heartbeat_ms, heartbeats)`` of one edge's sources,
    heartbeats observed in the period (the ``fleet_heartbeats`` view's first columns).

    Duplicates are harmless to ``max``/``any`` (the copies of an event are the same heartbeat),
    so only the count deduplicates: distinct ``event_id`` per source. The vitals come from
    ``edge_heartbeat_vitals_sql``: reading ``data`` for the newest row only, by its key, instead
    of ``argMax(data, …)`` over every heartbeat (30 days of one edge: 105 → 47 + 22 ms)."""
    return f"""SELECT source_id, any(source_type), toUnixTimestamp64Milli(max(observed_at)),
    uniqExact(event_id)
FROM {db}.events
WHERE type = 'heartbeat' AND edge_id = {{edge_id:String}}
    AND observed_at >= {_ts("from")} AND observed_at < {_ts("to")}
GROUP BY source_id ORDER BY source_id LIMIT 1000"""


HEARTBEAT_VITALS: tuple[str, ...] = ("uptime_seconds", "cpu_percent", "memory_percent", "disk_percent")


def edge_heartbeat_vitals_sql(db: str, sources: int) -> str:
    """``(source_id, uptime_seconds, cpu_percent, memory_percent, disk_percent)`` parsed from the
    heartbeat of each source ``s<i>`` observed at ``t<i>`` (ms), ``i < sources``: its newest.
    Missing fields read as 0, as ``JSONExtract*`` has it."""
    if sources < 1:
        raise ValueError("sources: at least 1")
    rows = " OR ".join(
        f"(source_id = {{s{i}:String}} AND observed_at = {_ts(f't{i}')})" for i in range(sources)
    )
    vitals = ", ".join(
        f"JSONExtract{'UInt' if name == 'uptime_seconds' else 'Float'}(data, '{name}')"
        for name in HEARTBEAT_VITALS
    )
    return f"""SELECT source_id, {vitals}
FROM {db}.events
WHERE type = 'heartbeat' AND edge_id = {{edge_id:String}} AND ({rows})
LIMIT 1 BY source_id"""


def edge_known_sql(db: str) -> str:
    """1 when the edge has any stored event (an edge may predate the ledger's rows)."""
    return f"SELECT count() > 0 FROM (SELECT 1 FROM {db}.events WHERE edge_id = {{edge_id:String}} LIMIT 1)"


def latest_event_sql(db: str) -> str:
    """The newest ingested event's ``hub_received_at`` (ms), or 0 when there is none."""
    return f"SELECT toUnixTimestamp64Milli(max(hub_received_at)), count() FROM {db}.events"

"""The dashboard's questions, as functions of a read connection. No aiohttp here.

Each answers from the smallest structure that holds the answer: rollups and sketches for
counts, top-N and uniques; an index range for the timeline, alerts and incidents. Every list
is bounded by ``limit`` and continues from a keyset cursor (a position, never an offset).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from edgekite.rollups import (
    ALERT_SEVERITIES,
    DIM_ERROR,
    DIM_PAGE,
    DIM_REFERRER,
    SKETCH_SOURCES,
    SKETCH_VISITORS,
)
from edgekite.store.id_index import ROWID_OF_ID
from edgekite.store.in_list import padded_in
from edgekite.store.reads import Reader
from edgekite.store.rollup_writer import DAY_MS, HOUR_MS, merged_estimate
from edgekite.store.rows import EVENT_COLUMNS, row_to_event

# A free-text search examines events until it has a page of hits, or for about Q_SCAN_SECONDS
# (after at least Q_SCAN_MIN events, so a slow moment never returns an empty page for nothing),
# or Q_SCAN_LIMIT events; the client follows next_cursor for more. A time box, not a row count,
# keeps the answer's latency the same on a busy or slow box: measured here, 20,000 rows took
# 40-55 ms (the p95 target of a dashboard call is 50 ms).
Q_SCAN_LIMIT = 20_000
Q_SCAN_MIN = 2_000
Q_SCAN_SECONDS = 0.025
Q_CLOCK_EVERY = 512  # rows between clock reads
UNSEEN_CAP = 10_000
ALERTS_SEEN_KEY = "alerts_seen_at"
# Literal, not bound: SQLite uses the partial index only when the query repeats its condition.
ALERT_WHERE = "severity IN ('error', 'critical')"
assert ALERT_SEVERITIES == ("error", "critical")


@dataclass(frozen=True)
class TimelineFilter:
    start: int
    end: int
    category: str | None = None
    type: str | None = None
    source: str | None = None
    severities: tuple[str, ...] = ()
    q: str | None = None


def _page(rows: list[Any], limit: int, key: Any) -> tuple[list[Any], list[int] | None]:
    """Trim a limit+1 fetch to ``limit`` and derive the next cursor from the last row kept."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, key(rows[-1])
    return rows, None


def timeline(r: Reader, f: TimelineFilter, limit: int, cursor: list[int] | None) -> dict[str, Any]:
    where = ["observed_at >= ?", "observed_at <= ?"]
    params: list[Any] = [f.start, f.end]
    for column, value in (("category", f.category), ("type", f.type), ("source_id", f.source)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.severities:
        where.append(f"severity IN ({','.join('?' * len(f.severities))})")
        params.extend(f.severities)
    if cursor is not None:
        where.append("(observed_at, rowid) < (?, ?)")
        params.extend(cursor)
    sql = (
        f"SELECT rowid, {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} "
        "ORDER BY observed_at DESC, rowid DESC"
    )
    if f.q is None:
        rows = r.conn.execute(sql + " LIMIT ?", (*params, limit + 1)).fetchall()
        kept, nxt = _page(rows, limit, lambda row: [row[2], row[0]])
        return {"events": [row_to_event(row[1:], r.decode) for row in kept], "next_cursor": nxt}
    # Free text: examine a bounded number of events, so a rare word cannot scan the whole store;
    # read only what the match needs, then fetch the matching rows whole.
    needle = f.q.casefold()
    scan_sql = sql.replace(
        f"SELECT rowid, {EVENT_COLUMNS}", "SELECT rowid, observed_at, type, source_id, payload_json"
    )
    hits: list[int] = []
    last: list[int] | None = None
    scanned = 0
    deadline = time.monotonic() + Q_SCAN_SECONDS
    for rowid, observed_at, etype, source_id, payload in r.conn.execute(scan_sql, params):
        scanned += 1
        last = [observed_at, rowid]
        text = r.decode(payload) or ""
        if needle in etype.casefold() or needle in source_id.casefold() or needle in text.casefold():
            hits.append(rowid)
            if len(hits) == limit:
                break
        if scanned >= Q_SCAN_LIMIT:
            break
        if scanned >= Q_SCAN_MIN and scanned % Q_CLOCK_EVERY == 0 and time.monotonic() >= deadline:
            break
    else:
        last = None
    found: list[dict[str, Any]] = []
    if hits:
        marks, params = padded_in(hits, -1)  # hits <= MAX_LIMIT (500); rowid -1: never a row
        rows = r.conn.execute(
            f"SELECT rowid, {EVENT_COLUMNS} FROM events WHERE rowid IN ({marks}) "
            "ORDER BY observed_at DESC, rowid DESC",
            params,
        ).fetchall()
        found = [row_to_event(row[1:], r.decode) for row in rows]
    return {"events": found, "next_cursor": last, "scanned": scanned}


def event_by_id(r: Reader, event_id: UUID) -> dict[str, Any] | None:
    row = r.conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE rowid IN {ROWID_OF_ID}", (event_id.bytes,)
    ).fetchone()
    return None if row is None else row_to_event(row, r.decode)


GROUP_COLUMNS = {"type": "type", "source": "source_id", "category": "category"}


def counts(r: Reader, bucket: str, group_by: str, start: int, end: int) -> dict[str, Any]:
    table, col, size = (
        ("hourly_counts", "hour_bucket", HOUR_MS)
        if bucket == "hour"
        else ("daily_counts", "day_bucket", DAY_MS)
    )
    key = GROUP_COLUMNS[group_by]
    rows = r.conn.execute(
        f"SELECT {col}, {key}, sum(count) FROM {table} WHERE {col} >= ? AND {col} <= ? "
        f"GROUP BY {col}, {key} ORDER BY {col}, {key}",
        (start // size, end // size),
    ).fetchall()
    return {
        "bucket": bucket,
        "group_by": group_by,
        "from": start,
        "to": end,
        "buckets": [{"t": b * size, "key": k, "count": n} for b, k, n in rows],
    }


def _window_start(window_ms: int, now_ms: int) -> tuple[bool, int]:
    """Hourly buckets for a day, daily buckets beyond: (hourly?, first bucket)."""
    if window_ms <= DAY_MS:
        return True, (now_ms - window_ms) // HOUR_MS + 1
    return False, (now_ms - window_ms) // DAY_MS + 1


def top(r: Reader, dim: str, window_ms: int, limit: int, now_ms: int) -> list[dict[str, Any]]:
    hourly, first = _window_start(window_ms, now_ms)
    if dim in (DIM_PAGE, DIM_REFERRER, DIM_ERROR):
        table, col = ("hourly_dims", "hour_bucket") if hourly else ("daily_dims", "day_bucket")
        sql = (
            f"SELECT key, sum(count) AS n FROM {table} WHERE dim = ? AND {col} >= ? "
            "GROUP BY key ORDER BY n DESC, key LIMIT ?"
        )
        rows = r.conn.execute(sql, (dim, first, limit)).fetchall()
    else:
        table, col = ("hourly_counts", "hour_bucket") if hourly else ("daily_counts", "day_bucket")
        key = GROUP_COLUMNS[dim]
        sql = (
            f"SELECT {key}, sum(count) AS n FROM {table} WHERE {col} >= ? "
            f"GROUP BY {key} ORDER BY n DESC, {key} LIMIT ?"
        )
        rows = r.conn.execute(sql, (first, limit)).fetchall()
    return [{"key": k, "count": n} for k, n in rows]


def uniques(r: Reader, window_ms: int, now_ms: int, lg_k: int) -> dict[str, Any]:
    hourly, first = _window_start(window_ms, now_ms)
    out: dict[str, Any] = {}
    for dim in (SKETCH_VISITORS, SKETCH_SOURCES):
        blobs = [
            bytes(b)
            for (b,) in r.conn.execute(
                "SELECT sketch FROM sketches WHERE dim = ? AND granularity = ? AND bucket >= ?",
                (dim, "h" if hourly else "d", first),
            )
        ]
        out[dim] = merged_estimate(blobs, lg_k)
    return out


def alerts(r: Reader, limit: int, cursor: list[int] | None) -> dict[str, Any]:
    """The inbox: error/critical events in the order they arrived (the edge's clock)."""
    where, params = ALERT_WHERE, []
    if cursor is not None:
        where += " AND (received_at, rowid) < (?, ?)"
        params.extend(cursor)
    rows = r.conn.execute(
        f"SELECT rowid, {EVENT_COLUMNS} FROM events INDEXED BY idx_events_alerts WHERE {where} "
        "ORDER BY received_at DESC, rowid DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    kept, nxt = _page(rows, limit, lambda row: [row[3], row[0]])
    seen_at = seen_alerts_at(r)
    return {
        "alerts": [row_to_event(row[1:], r.decode) for row in kept],
        "next_cursor": nxt,
        "seen_at": seen_at,
        "unseen": unseen_alerts(r, seen_at),
    }


def seen_alerts_at(r: Reader) -> int | None:
    row = r.conn.execute("SELECT value FROM config WHERE key = ?", (ALERTS_SEEN_KEY,)).fetchone()
    return None if row is None else int(row[0])


def unseen_alerts(r: Reader, seen_at: int | None) -> int:
    """Unseen alerts, counted up to UNSEEN_CAP (a badge says "10000+", it needs no exact figure)."""
    (n,) = r.conn.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY idx_events_alerts WHERE {ALERT_WHERE} "
        "AND received_at > ? LIMIT ?)",
        (seen_at if seen_at is not None else -1, UNSEEN_CAP),
    ).fetchone()
    return int(n)


def incidents(
    r: Reader, start: int, end: int, source: str | None, limit: int, cursor: list[int] | None
) -> dict[str, Any]:
    where = ["end_ms >= ?", "start_ms <= ?"]
    params: list[Any] = [start, end]
    if source is not None:
        where.append("source_id = ?")
        params.append(source)
    if cursor is not None:
        where.append("(end_ms, id) < (?, ?)")
        params.extend(cursor)
    rows = r.conn.execute(
        "SELECT id, source_id, start_ms, end_ms, count, top_confidence, top_event_id, thumbnail_uri, labels "
        f"FROM incidents WHERE {' AND '.join(where)} ORDER BY end_ms DESC, id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    kept, nxt = _page(rows, limit, lambda row: [row[3], row[0]])
    return {
        "incidents": [
            {
                "id": i,
                "source_id": sid,
                "start": s,
                "end": e,
                "count": n,
                "top_confidence": conf,
                "top_event_id": str(UUID(bytes=bytes(top_id))) if top_id else None,
                "thumbnail": {"uri": thumb} if thumb else None,
                "labels": orjson.loads(labels),
            }
            for i, sid, s, e, n, conf, top_id, thumb, labels in kept
        ],
        "next_cursor": nxt,
    }


def sources(r: Reader, now_ms: int, stale_after_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
    rows = r.conn.execute(
        "SELECT source_id, source_type, first_seen, last_seen, last_heartbeat, events FROM sources "
        "ORDER BY last_seen DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {
            "source_id": sid,
            "source_type": st,
            "first_seen": first,
            "last_seen": last,
            "last_heartbeat": hb,
            "events": n,
            "stale": now_ms - last > stale_after_ms,
        }
        for sid, st, first, last, hb, n in rows
    ]


def stats(r: Reader, now_ms: int) -> dict[str, Any]:
    counters = dict(r.conn.execute("SELECT name, value FROM counters").fetchall())
    (events_24h,) = r.conn.execute(
        "SELECT coalesce(sum(count), 0) FROM hourly_counts WHERE hour_bucket >= ?",
        ((now_ms - DAY_MS) // HOUR_MS + 1,),
    ).fetchone()
    (rejected_24h,) = r.conn.execute(
        "SELECT count(*) FROM dead_letter WHERE received_at >= ?", (now_ms - DAY_MS,)
    ).fetchone()
    (n_sources,) = r.conn.execute("SELECT count(*) FROM sources").fetchone()
    oldest = r.conn.execute("SELECT min(observed_at) FROM events").fetchone()[0]
    newest = r.conn.execute("SELECT max(observed_at) FROM events").fetchone()[0]
    return {
        "events_stored": counters.get("events_stored", 0),
        "events_24h": events_24h,
        "rejected_24h": rejected_24h,
        "rejected_total": counters.get("rejected_total", 0),
        "duplicates_total": counters.get("duplicates_total", 0),
        "sources": n_sources,
        "oldest_event": oldest,
        "newest_event": newest,
    }


def dead_letters(r: Reader, limit: int, cursor: list[int] | None) -> dict[str, Any]:
    where, params = ("id < ?", [cursor[0]]) if cursor else ("1", [])
    rows = r.conn.execute(
        "SELECT id, received_at, transport, topic, code, reason, substr(payload, 1, 512), payload_bytes "
        f"FROM dead_letter WHERE {where} ORDER BY id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    kept, nxt = _page(rows, limit, lambda row: [row[0]])
    return {
        "dead_letters": [
            {
                "id": i,
                "received_at": t,
                "transport": tr,
                "topic": topic,
                "code": code,
                "reason": reason,
                "payload_preview": bytes(p).decode("utf-8", "replace") if p is not None else None,
                "payload_bytes": nb,
            }
            for i, t, tr, topic, code, reason, p, nb in kept
        ],
        "next_cursor": nxt,
    }


def now_ms() -> int:
    return int(time.time() * 1000)

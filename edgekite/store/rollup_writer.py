"""Rollups, sketches and incidents, written in the same transaction as the events they count.

Runs on the writer thread only. Keeps a little state between batches (recently touched HLL
sketches, each source's open incident) so a batch costs a few upserts, not a re-read; the
state is reloaded from SQLite on demand, so a restart or a late event is handled the same way.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import orjson

from edgekite import hll
from edgekite.config import RollupsSection
from edgekite.ingest import EventRow
from edgekite.rollups import (
    ALERT_SEVERITIES,
    DIM_ERROR,
    DIM_PAGE,
    DIM_REFERRER,
    SKETCH_SOURCES,
    SKETCH_VISITORS,
    is_detection,
    rollup_facts,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_SKETCH_CACHE = 64

_UPSERT_HOURLY = (
    "INSERT INTO hourly_counts (hour_bucket, source_id, category, type, count) VALUES (?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET count = count + excluded.count"
)
_UPSERT_DAILY = (
    "INSERT INTO daily_counts (day_bucket, source_id, category, type, count) VALUES (?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET count = count + excluded.count"
)
_UPSERT_HOURLY_DIM = (
    "INSERT INTO hourly_dims (dim, hour_bucket, key, count) VALUES (?,?,?,?) "
    "ON CONFLICT DO UPDATE SET count = count + excluded.count"
)
_UPSERT_DAILY_DIM = (
    "INSERT INTO daily_dims (dim, day_bucket, key, count) VALUES (?,?,?,?) "
    "ON CONFLICT DO UPDATE SET count = count + excluded.count"
)
_UPSERT_COUNTER = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT DO UPDATE SET value = value + excluded.value"
)


@dataclass
class _Incident:
    id: int
    start: int
    end: int
    count: int
    top_confidence: float | None
    top_event_id: bytes | None
    thumbnail: str | None
    labels: list[str] = field(default_factory=list)


def _thumbnail(row: EventRow) -> str | None:
    if not row.attachments_json:
        return None
    for att in orjson.loads(row.attachments_json):
        if att.get("kind") in ("thumbnail", "snapshot", "image"):
            return str(att.get("uri"))
    return None


class RollupWriter:
    def __init__(self, cfg: RollupsSection) -> None:
        self._cfg = cfg
        self._gap_ms = int(cfg.incident_gap_secs * 1000)
        self._sketches: OrderedDict[tuple[str, str, int], hll.hll_sketch] = OrderedDict()
        self._incidents: dict[str, _Incident | None] = {}

    def reset(self) -> None:
        """Forget cached state (after a rolled-back transaction it may be ahead of the database)."""
        self._sketches.clear()
        self._incidents.clear()

    def write(self, conn: sqlite3.Connection, rows: list[EventRow]) -> None:
        hourly: Counter[tuple[int, str, str, str]] = Counter()
        daily: Counter[tuple[int, str, str, str]] = Counter()
        hdims: Counter[tuple[str, int, str]] = Counter()
        ddims: Counter[tuple[str, int, str]] = Counter()
        sketch_updates: dict[tuple[str, str, int], set[int | str]] = {}

        def sketch(dim: str, t: int, value: int | str) -> None:
            sketch_updates.setdefault((dim, "h", t // HOUR_MS), set()).add(value)
            sketch_updates.setdefault((dim, "d", t // DAY_MS), set()).add(value)

        detections: list[tuple[EventRow, str, float | None]] = []
        for row in rows:
            t = row.observed_at
            hour, day = t // HOUR_MS, t // DAY_MS
            hourly[(hour, row.source_id, row.category, row.type)] += 1
            daily[(day, row.source_id, row.category, row.type)] += 1
            sketch(SKETCH_SOURCES, t, row.source_id)
            web_view = row.category == "web" and row.type == "page_view"
            alert = row.severity in ALERT_SEVERITIES
            detection = is_detection(row.category, row.type)
            if not (web_view or alert or detection):
                continue
            facts = row.facts
            if facts is None:  # a row from elsewhere than the decoders: work them out here
                facts = rollup_facts(row.category, row.type, row.severity, orjson.loads(row.payload_json))
            if not facts:  # its data is not a JSON object
                continue
            page, ref, visitor, err, label, confidence = facts
            if web_view:
                if page is not None:
                    hdims[(DIM_PAGE, hour, page)] += 1
                    ddims[(DIM_PAGE, day, page)] += 1
                hdims[(DIM_REFERRER, hour, ref)] += 1
                ddims[(DIM_REFERRER, day, ref)] += 1
                if visitor is not None:
                    sketch(SKETCH_VISITORS, t, visitor)
            if alert:
                hdims[(DIM_ERROR, hour, err)] += 1
                ddims[(DIM_ERROR, day, err)] += 1
            if detection:
                detections.append((row, label, confidence))

        conn.executemany(_UPSERT_HOURLY, [(*k, n) for k, n in hourly.items()])
        conn.executemany(_UPSERT_DAILY, [(*k, n) for k, n in daily.items()])
        if hdims:
            conn.executemany(_UPSERT_HOURLY_DIM, [(*k, n) for k, n in hdims.items()])
            conn.executemany(_UPSERT_DAILY_DIM, [(*k, n) for k, n in ddims.items()])
        self._write_sketches(conn, sketch_updates)
        if detections:
            self._write_incidents(conn, sorted(detections, key=lambda d: d[0].observed_at))
        conn.execute(_UPSERT_COUNTER, ("events_stored", len(rows)))

    # -- sketches --------------------------------------------------------------------------
    def _sketch(self, conn: sqlite3.Connection, key: tuple[str, str, int]) -> hll.hll_sketch:
        sk = self._sketches.get(key)
        if sk is not None:
            self._sketches.move_to_end(key)
            return sk
        row = conn.execute(
            "SELECT sketch FROM sketches WHERE dim = ? AND granularity = ? AND bucket = ?", key
        ).fetchone()
        sk = (
            hll.hll_sketch.deserialize(bytes(row[0]))
            if row is not None
            else hll.hll_sketch(self._cfg.hll_lg_k, hll.tgt_hll_type.HLL_4)
        )
        self._sketches[key] = sk
        while len(self._sketches) > _SKETCH_CACHE:
            self._sketches.popitem(last=False)
        return sk

    def _write_sketches(
        self, conn: sqlite3.Connection, updates: dict[tuple[str, str, int], set[int | str]]
    ) -> None:
        out = []
        for key, values in updates.items():
            sk = self._sketch(conn, key)
            before = sk.get_estimate()
            for v in values:
                sk.update(v)
            if sk.get_estimate() != before or before == 0:
                out.append((*key, sk.serialize_compact()))
        if out:
            conn.executemany(
                "INSERT INTO sketches (dim, granularity, bucket, sketch) VALUES (?,?,?,?) "
                "ON CONFLICT DO UPDATE SET sketch = excluded.sketch",
                out,
            )

    # -- incidents -------------------------------------------------------------------------
    def _open_incident(self, conn: sqlite3.Connection, source_id: str) -> _Incident | None:
        if source_id in self._incidents:
            return self._incidents[source_id]
        row = conn.execute(
            "SELECT id, start_ms, end_ms, count, top_confidence, top_event_id, thumbnail_uri, labels "
            "FROM incidents WHERE source_id = ? ORDER BY end_ms DESC LIMIT 1",
            (source_id,),
        ).fetchone()
        inc = None
        if row is not None:
            inc = _Incident(row[0], row[1], row[2], row[3], row[4], row[5], row[6], orjson.loads(row[7]))
        self._incidents[source_id] = inc
        return inc

    def _write_incidents(
        self, conn: sqlite3.Connection, detections: list[tuple[EventRow, str, float | None]]
    ) -> None:
        touched: dict[int, _Incident] = {}
        for row, label, confidence in detections:
            t = row.observed_at
            inc = self._open_incident(conn, row.source_id)
            if inc is not None and inc.start - self._gap_ms <= t <= inc.end + self._gap_ms:
                inc.start, inc.end = min(inc.start, t), max(inc.end, t)
                inc.count += 1
            else:
                cur = conn.execute(
                    "INSERT INTO incidents (source_id, start_ms, end_ms, count, labels) "
                    "VALUES (?,?,?,0,'[]')",
                    (row.source_id, t, t),
                )
                assert cur.lastrowid is not None
                new = _Incident(cur.lastrowid, t, t, 1, None, None, None)
                # A late detection far behind the open incident does not displace it.
                if inc is None or t > inc.end:
                    self._incidents[row.source_id] = new
                inc = new
            if label not in inc.labels and len(inc.labels) < 8:
                inc.labels.append(label)
            if confidence is not None and (inc.top_confidence is None or confidence > inc.top_confidence):
                inc.top_confidence = confidence
                inc.top_event_id = row.event_id
                inc.thumbnail = _thumbnail(row) or inc.thumbnail
            elif inc.thumbnail is None:
                inc.thumbnail = _thumbnail(row)
            touched[inc.id] = inc
        conn.executemany(
            "UPDATE incidents SET start_ms = ?, end_ms = ?, count = ?, top_confidence = ?, top_event_id = ?, "
            "thumbnail_uri = ?, labels = ? WHERE id = ?",
            [
                (
                    i.start,
                    i.end,
                    i.count,
                    i.top_confidence,
                    i.top_event_id,
                    i.thumbnail,
                    orjson.dumps(i.labels).decode(),
                    i.id,
                )
                for i in touched.values()
            ],
        )


def merged_estimate(blobs: list[bytes], lg_k: int) -> dict[str, float]:
    """Union of stored sketches: the estimate with 95 % bounds (two standard deviations)."""
    union = hll.hll_union(lg_k)
    for blob in blobs:
        union.update(hll.hll_sketch.deserialize(blob))
    result = union.get_result()
    return {
        "value": round(result.get_estimate()),
        "lower": round(result.get_lower_bound(2)),
        "upper": round(result.get_upper_bound(2)),
    }

"""The 10M-event hub data set for ``hub_queries.py`` (issue 6): generated once, cached on disk.

Not a benchmark itself. ``build(dir, events)`` fills a chDB hub data directory with the
simulator's mix (``edgekite.simulate.TrafficGenerator``: page views, sensor readings,
detections in incidents, heartbeats, logins, errors; bots among the browsers) spread evenly over
the 30 days before the build, written straight into the raw ``events`` table (plus one
``batches`` ledger row per edge and chunk) and enriched by the hub's own ``Enricher`` into
``events_enriched`` through ``hub_enrich.consumer.enriched_table`` (the consumer's insert path,
without re-reading the raw rows back). ``events`` counts web + IoT events (the ops/security part
of the mix comes on top).

Generation runs in one worker process per core (each owns its own sites: the generator's visitor
and incident state is sequential), in columnar chunks of ``CHUNK`` events sent to the parent as
Arrow IPC; the parent inserts them. Visitor ids are computed as hub ingest does (keyed BLAKE2b of
site, IP and user agent under a per-day salt, here derived from the day number so a rebuild is
reproducible), and the IP is truncated to /24 (/48) before it is stored, as ingest does.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

DAY = 86_400_000
CHUNK = 100_000
SITES_PER_WORKER = 3
WEB_IOT = ("web", "iot")


def edge_of(site: str) -> str:
    n = int(site.rsplit("-", 1)[1])
    return f"edge-{(n + 1) // 2}"


def _worker(
    widx: int, workers: int, events: int, start_ms: int, end_ms: int, geo_path: str, q: Any, seed: int
) -> None:
    from edgekite.hubstore.arrow import BATCHES_SCHEMA, EVENTS_SCHEMA, table_from_rows
    from edgekite.simulate import TrafficGenerator
    from edgekite.visitor import site_of, truncate_ip, visitor_id
    from hub_enrich.bots import BotDetector
    from hub_enrich.consumer import enriched_table
    from hub_enrich.enrich import Enricher
    from hub_enrich.geo import GeoLookup
    from hub_enrich.ua import UaParser

    target = events // workers + (1 if widx < events % workers else 0)
    clock = [start_ms]
    gen = TrafficGenerator(
        seed * 1000 + widx,
        sites=SITES_PER_WORKER,
        now_ms=lambda: clock[0],
        site_offset=widx * SITES_PER_WORKER,
    )
    sites = {s.web.site: f"site-{s.web.site}" for s in gen.sites}
    enricher = Enricher(
        UaParser(),
        BotDetector(),
        GeoLookup(geo_path),
        site_hosts={f"site-{n}": [f"site{n}.example.com"] for n in sites},
    )
    rng = random.Random(seed + widx)
    salts: dict[int, bytes] = {}
    trunc: dict[str, str] = {}
    step = (end_ms - start_ms) / max(1, target)
    # Edge "edge-3" (sites 5-6) is offline for 8 hours on day 20: its events reach the hub late.
    offline = (start_ms + 20 * DAY, start_ms + 20 * DAY + 8 * 3_600_000)
    done = 0
    batch_no = 0
    names = EVENTS_SCHEMA.names
    while done < target:
        n = min(CHUNK, target - done)
        cols: dict[str, list[Any]] = {name: [] for name in names}
        raw: list[dict[str, Any]] = []
        counted = 0
        while counted < n:
            clock[0] = int(start_ms + (done + counted) * step)
            source_id, env = gen.next_event()
            ev = env["event"]
            category = ev["category"]
            if category in WEB_IOT:
                counted += 1
            meta = env["source"].get("metadata") or {}
            site = str(meta.get("site_id") or source_id)
            edge = edge_of(site)
            observed = int(env["observed_at"])
            received = observed + rng.randint(20, 400)
            hub_at = received + rng.randint(150, 2500)
            if edge == "edge-3" and offline[0] <= received < offline[1]:
                hub_at = offline[1] + rng.randint(0, 1_800_000)
            data = ev["data"]
            vid = 0
            if category == "web":
                ip = str(data.get("ip") or "")
                day = observed // DAY
                salt = salts.get(day)
                if salt is None:
                    salt = salts[day] = hashlib.sha256(f"bench-salt-{day}".encode()).digest()
                vid = visitor_id(site, ip, str(data.get("user_agent") or ""), salt) if ip else 0
                t = trunc.get(ip)
                if t is None:
                    t = trunc[ip] = truncate_ip(ip)
                data = {**data, "ip": t}
            corr = env.get("correlation") or {}
            data_json = orjson.dumps(data).decode()
            meta_json = orjson.dumps(meta).decode()
            row = {
                "event_id": env["event_id"],
                "edge_id": edge,
                "batch_id": f"{edge}:{widx}:{batch_no}",
                "observed_at": observed,
                "received_at": received,
                "hub_received_at": hub_at,
                "source_type": env["source"]["type"],
                "source_id": source_id,
                "category": category,
                "type": ev["type"],
                "severity": ev["severity"],
                "source_seq": env["sync"]["source_seq"],
                "correlation_id": corr.get("correlation_id"),
                "session_id": corr.get("session_id"),
                "incident_id": corr.get("incident_id"),
                "data": data_json,
                "attachments": orjson.dumps(env.get("attachments") or []).decode(),
                "source_version": env["source"].get("version"),
                "source_metadata": meta_json,
                "schema_version": ev.get("schema_version", "1.0"),
                "pii": int(bool(env["privacy"]["pii"])),
                "retention_class": env["privacy"]["retention_class"],
                "flags": 0,
                "visitor_id": vid,
                "site": site_of(data, meta, source_id),
            }
            for name in names:
                cols[name].append(row[name])
            raw.append(row)
        done += counted
        raw_tbl = pa.Table.from_arrays(
            [pa.array(cols[f.name], type=f.type) for f in EVENTS_SCHEMA], schema=EVENTS_SCHEMA
        )
        enr_tbl = enriched_table(enricher, raw, int(time.time() * 1000))
        last = max(r["hub_received_at"] for r in raw)
        batch_rows = []
        for edge in sorted({r["edge_id"] for r in raw}):
            k = sum(1 for r in raw if r["edge_id"] == edge)
            batch_rows.append(
                (edge, f"{edge}:{widx}:{batch_no}", 0, 0, k, k, 0, rng.randint(0, 400), "", last - 500, last)
            )
        batch_no += 1
        bat_tbl = table_from_rows(BATCHES_SCHEMA, batch_rows)
        q.put((_ipc(raw_tbl), _ipc(enr_tbl), _ipc(bat_tbl), counted, len(raw)))
    q.put(None)


def _ipc(tbl: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as w:
        w.write_table(tbl)
    return bytes(sink.getvalue())


def _table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def hub_config(data_dir: Path) -> Any:
    from edgekite.config import load_hub_config

    return load_hub_config(environ={}, overrides={"hub": {"data_dir": str(data_dir)}, "http": {"port": 0}})


def build(data_dir: Path, events: int, seed: int = 1, workers: int | None = None) -> dict[str, Any]:
    """Fill ``data_dir/hub`` (chDB) and write ``data_dir/built.json``; returns its content."""
    from enrich_throughput import geo_db

    from edgekite.hubstore import HubStore
    from edgekite.hubstore.analytics import ensure_analytics

    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / "built.json"
    if marker.exists():
        info: dict[str, Any] = orjson.loads(marker.read_bytes())
        if info.get("events") == events and info.get("seed") == seed:
            return info
    hub_dir = data_dir / "hub"
    if hub_dir.exists():
        import shutil

        shutil.rmtree(hub_dir)
    geo = geo_db(data_dir / "city.mmdb")
    end_ms = (int(time.time() * 1000) // 3_600_000) * 3_600_000
    start_ms = end_ms - 30 * DAY
    workers = workers or max(1, min(4, os.cpu_count() or 2))
    store = HubStore(hub_config(hub_dir))
    store.open()
    ensure_analytics(store)
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=2 * workers)
    procs = [
        ctx.Process(
            target=_worker, args=(w, workers, events, start_ms, end_ms, str(geo), q, seed), daemon=True
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    finished = counted = rows = 0
    try:
        while finished < workers:
            item = q.get()
            if item is None:
                finished += 1
                continue
            raw_b, enr_b, bat_b, c, r = item
            store.insert_arrow("events", _table(raw_b))
            store.insert_arrow("events_enriched", _table(enr_b))
            store.insert_arrow("batches", _table(bat_b))
            counted += c
            rows += r
            el = time.monotonic() - t0
            print(
                f"\rbuild: {counted:,} / {events:,} web+iot events ({rows:,} rows), {rows / el:,.0f} rows/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        for p in procs:
            p.join()
        gen_s = time.monotonic() - t0
        info = {
            "events": events,
            "seed": seed,
            "rows": rows,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "workers": workers,
            "build_seconds": round(gen_s, 1),
        }
    finally:
        store.close()
        store.shutdown_executor()
    marker.write_bytes(orjson.dumps(info))
    return info


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/edgekite-bench-hub10m"))
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()
    print(build(a.dir, a.events, workers=a.workers))

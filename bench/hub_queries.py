"""Issue 6: p50/p95 of each analytics-API query over 10M web + IoT events (30 days) in chDB, and RSS.

    .venv/bin/python bench/hub_queries.py                     # 10M events (built once, ≈ 20 min), 20 runs
    .venv/bin/python bench/hub_queries.py --events 200000 --runs 3 --dir /tmp/ek-hub-small   # smoke

The data set (``_hub10m.py``) is cached in ``--dir`` (default ``/tmp/edgekite-bench-hub10m``) and
reused while ``--events``/seed match. The hub's real aiohttp app (``hub_api.app.create_app``, the
analytics routes included) is served in this process over that store, as ``edgekite hub`` serves
it (one store thread), and each dashboard query is requested over loopback HTTP ``--runs`` times
after one warm-up; the time is the full HTTP round trip (SQL, JSON, the latest-event query).
RSS is sampled every 50 ms from ``/proc/self/smaps_rollup`` while the queries run: anonymous
(heap: chDB's caches and query memory, Python) vs file-backed (chDB's ~400 MB mapped library).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
from _common import code_fingerprint, print_table, write_results
from _hub10m import DAY, build, hub_config

TARGET_MS = 500.0


def rss() -> dict[str, int]:
    """kB from /proc/self/smaps_rollup: Rss, Anonymous, file-backed (Rss - Anonymous - Shmem)."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[parts[0][:-1]] = int(parts[1])
    anon = out.get("Anonymous", 0)
    shmem = out.get("Shmem", 0) if "Shmem" in out else 0
    return {"rss_kb": out.get("Rss", 0), "anon_kb": anon, "file_kb": out.get("Rss", 0) - anon - shmem}


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_flag = threading.Event()
        self.peak: dict[str, int] = {"rss_kb": 0, "anon_kb": 0, "file_kb": 0}

    def run(self) -> None:
        while not self.stop_flag.wait(0.05):
            s = rss()
            if s["rss_kb"] > self.peak["rss_kb"]:
                self.peak = s


class Server:
    def __init__(self, app: Any) -> None:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def queries(end_ms: int) -> list[tuple[str, str]]:
    d7 = f"from={end_ms - 7 * DAY}&to={end_ms}"
    d30 = f"from={end_ms - 30 * DAY}&to={end_ms}"
    d1 = f"from={end_ms - DAY}&to={end_ms}"
    s = "site=site-1"
    funnel = "steps=page:/,page:/pricing,page:/shop,page:/checkout&window_secs=3600"
    return [
        ("sites 7d", f"/api/web/sites?{d7}"),
        ("overview 1d (hourly) site", f"/api/web/overview?{s}&{d1}"),
        ("overview 7d site", f"/api/web/overview?{s}&{d7}"),
        ("overview 30d site", f"/api/web/overview?{s}&{d30}"),
        ("overview 7d site country=DE", f"/api/web/overview?{s}&{d7}&country=DE"),
        ("overview 7d site channel=search", f"/api/web/overview?{s}&{d7}&channel=search"),
        ("overview 7d all sites", f"/api/web/overview?{d7}"),
        ("overview 7d site +bots", f"/api/web/overview?{s}&{d7}&include_bots=1"),
        ("top page 7d site", f"/api/web/top?dim=page&{s}&{d7}"),
        ("top page 30d site", f"/api/web/top?dim=page&{s}&{d30}"),
        ("top browser 7d site country=DE", f"/api/web/top?dim=browser&{s}&{d7}&country=DE"),
        ("top country 30d site", f"/api/web/top?dim=country&{s}&{d30}"),
        ("top entry_page 7d site", f"/api/web/top?dim=entry_page&{s}&{d7}"),
        ("top referrer 7d site", f"/api/web/top?dim=referrer&{s}&{d7}"),
        ("top channel 30d site", f"/api/web/top?dim=channel&{s}&{d30}"),
        ("top utm_campaign 7d site", f"/api/web/top?dim=utm_campaign&{s}&{d7}"),
        ("funnel 4 steps 7d site", f"/api/web/funnel?{s}&{d7}&{funnel}"),
        ("funnel 4 steps 30d site", f"/api/web/funnel?{s}&{d30}&{funnel}"),
        ("cohorts 5 weeks site", f"/api/web/cohorts?{s}&weeks=5&to={end_ms}"),
        ("iot detections 7d", f"/api/iot/detections?{d7}"),
        ("iot detections 30d camera", f"/api/iot/detections?{d30}&source=cam-barn-01"),
        ("iot detections 30d site", f"/api/iot/detections?{d30}&{s}"),
        ("iot sensors 7d", f"/api/iot/sensors?{d7}"),
        ("iot sensors 30d source", f"/api/iot/sensors?{d30}&source=sensor-greenhouse-temp"),
        ("fleet edge-1 30d", f"/api/fleet/edge-1?{d30}"),
        ("fleet edge-3 7d", f"/api/fleet/edge-3?{d7}"),
    ]


def fetch(url: str) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
        status = resp.status
    return (time.perf_counter() - t0) * 1000, status, body


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(p * (len(s) - 1))))
    return s[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/edgekite-bench-hub10m"))
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--only", default="", help="substring of the query names to run")
    args = ap.parse_args()

    info = build(args.dir, args.events)
    print(f"data: {info}")
    from edgekite.hub_metrics import HubMetrics
    from edgekite.hubstore import HubStore
    from hub_api.app import HubApiContext, create_app

    before = rss()
    config = hub_config(args.dir / "hub")
    store = HubStore(config)
    store.open()
    opened = rss()
    server = Server(create_app(HubApiContext(config, store, HubMetrics(), dev_mode=True)))
    parts = store.query_rows(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE active AND database = 'edgekite' "
        "AND table IN ('events', 'events_enriched') GROUP BY table ORDER BY table"
    )
    print(f"parts: {parts}")
    results: list[dict[str, Any]] = []
    sampler = Sampler()
    sampler.start()
    try:
        for name, path in queries(int(info["end_ms"])):
            if args.only and args.only not in name:
                continue
            url = server.url + path
            first_ms, status, body = fetch(url)  # warm-up; for the fleet route it fills the day cache
            if status != 200:
                raise SystemExit(f"{name}: HTTP {status}: {body[:300]!r}")
            times = [fetch(url)[0] for _ in range(args.runs)]
            summary = orjson.loads(body)
            shape = {k: (len(v) if isinstance(v, list) else v) for k, v in summary.items() if k != "truth"}
            row = {
                "query": name,
                "path": path,
                "runs": args.runs,
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(pct(times, 0.95), 1),
                "max_ms": round(max(times), 1),
                "first_ms": round(first_ms, 1),
                "bytes": len(body),
                "shape": shape,
                "rss_after": rss(),
            }
            results.append(row)
            flag = "" if row["p95_ms"] < TARGET_MS else "  MISS"
            print(
                f"{name:36s} p50 {row['p50_ms']:8.1f}  p95 {row['p95_ms']:8.1f} ms  (first {first_ms:.0f} ms){flag}",
                flush=True,
            )
    finally:
        sampler.stop_flag.set()
        sampler.join()
        server.close()
        store.close()
        store.shutdown_executor()
    print()
    print_table(
        ["query", "p50 ms", "p95 ms", "max ms", "first ms", "< 500 ms"],
        [
            [
                r["query"],
                r["p50_ms"],
                r["p95_ms"],
                r["max_ms"],
                r["first_ms"],
                "yes" if r["p95_ms"] < TARGET_MS else "NO",
            ]
            for r in results
        ],
    )
    peak = sampler.peak
    print(
        f"\nRSS: before open {before['rss_kb'] // 1024} MB; store open {opened['rss_kb'] // 1024} MB "
        f"(anon {opened['anon_kb'] // 1024}, file {opened['file_kb'] // 1024}); peak while answering "
        f"{peak['rss_kb'] // 1024} MB (anon {peak['anon_kb'] // 1024}, file {peak['file_kb'] // 1024})"
    )
    payload = {
        "data": info,
        "parts": parts,
        "runs": args.runs,
        "results": results,
        "rss": {"before_open": before, "store_open": opened, "peak": peak},
        "code": code_fingerprint(),
    }
    print(f"results: {write_results('hub_queries', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HTTP batch ingest throughput of ``edgekite edge`` (issue #4), against a trivial baseline.

Starts ``edgekite edge`` (embedded broker, fresh temp data dir, shipped defaults apart from the
body-size limit, see below) and POSTs ``/api/events/batch`` JSON arrays of 100, 500 and 1000
simulator envelopes from K concurrent keep-alive connections (aiohttp client, K=4 by default),
about 200,000 events per round, 3 rounds per setting. Bodies are generated and encoded before
the clock starts (fresh event ids every round, so nothing is a duplicate); the clock runs from
the first POST to the last response, and the edge answers only after the SQLite commit.

In the same run, after each edge round, the very same bodies go to a baseline: a trivial
aiohttp handler in its own process that reads the body and answers ``{}``. The ratio
edge/baseline tells what the edge costs over the HTTP plumbing itself.

The edge's ``limits.max_message_bytes`` defaults to 256 KiB, smaller than an array of 500 or
1000 simulator envelopes (~640 B each); the bench raises it (``--max-body``, default 1 MiB) via
``EDGEKITE_LIMITS__MAX_MESSAGE_BYTES`` and first checks what the default answers (413).

Run from the repository root::

    .venv/bin/python bench/http_ingest.py                     # ~3-4 min
    .venv/bin/python bench/http_ingest.py --events 50000 --rounds 1 --batches 100

Target: >= 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_py_spy, stop_py_spy, tree_cpu_by_process
from edge_panels import (
    REPO,
    EdgeChild,
    MemorySampler,
    free_port,
    machine_info,
    print_table,
    write_results,
)

DEFAULT_MAX_BODY = 256 * 1024  # limits.max_message_bytes as shipped


# -- the baseline server (this file, run with --baseline-server PORT) ----------------------
def serve_baseline(port: int) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/api/events/batch", handler)
    print(f"baseline ready on {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Baseline:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Baseline:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--baseline-server", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.stop()
            raise RuntimeError("the baseline server did not start")
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.02)
        raise RuntimeError("the baseline server does not listen")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# -- load ---------------------------------------------------------------------------------
def make_bodies(gen: Any, n_events: int, batch: int, ids: str = "v4") -> list[bytes]:
    """``ids="v7"`` replaces the simulator's random (v4) event ids with time-ordered UUIDv7s, as
    producers following the envelope spec send them."""
    import orjson
    import uuid_utils

    bodies = []
    left = n_events
    while left > 0:
        n = min(batch, left)
        envs = [gen.next_event()[1] for _ in range(n)]
        if ids == "v7":
            for env in envs:
                env["event_id"] = str(uuid_utils.uuid7())
        bodies.append(orjson.dumps(envs))
        left -= n
    return bodies


def cpu_per_event(
    before: dict[int, float], after: dict[int, float], edge_pid: int, n: int
) -> dict[str, float]:
    """CPU µs per event spent in the edge's own process and in its children (the HTTP decode
    workers) over one round. Less noisy than events/s on a shared machine: another tenant
    slows the clock, much less the CPU time each event takes."""
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    edge = spent.pop(edge_pid, 0.0)
    return {"edge": edge / n * 1e6, "workers": sum(spent.values()) / n * 1e6}


async def post_all(port: int, bodies: list[bytes], concurrency: int, *, check: bool) -> dict[str, Any]:
    """POST every body once over ``concurrency`` keep-alive connections; wall time and answers."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/api/events/batch"
    headers = {"Content-Type": "application/json"}
    next_i = 0
    accepted = duplicates = rejected = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_i, accepted, duplicates, rejected
            while next_i < len(bodies):
                body = bodies[next_i]
                next_i += 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    latencies.append(time.perf_counter() - t0)
                    if resp.status != 200:
                        key = f"{resp.status} {raw[:120]!r}"
                        errors[key] = errors.get(key, 0) + 1
                        continue
                    if check:
                        ans = json.loads(raw)
                        accepted += ans["accepted"]
                        duplicates += ans["duplicates"]
                        rejected += len(ans["rejected"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "elapsed_secs": elapsed,
        "requests": len(bodies),
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected,
        "errors": errors,
        "latency_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "latency_p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 2) if lat else None,
    }


async def probe_default_limit(edge_port: int, body: bytes) -> int:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{edge_port}/api/events/batch",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        await r.read()
        return r.status


def summarize_profile(path: Path, top: int = 18) -> dict[str, Any]:
    """Self and inclusive sample shares per frame, from py-spy's raw (collapsed) output."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] = threads.get(frames[0], 0) + n
        frames = list(frames[1:]) or frames
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "threads": share(threads), "self": share(self_n), "inclusive": share(incl_n)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batches", default="100,500,1000", help="envelopes per POST (default 100,500,1000)")
    ap.add_argument("--events", type=int, default=200_000, help="events per round (default 200,000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per setting (default 3)")
    ap.add_argument("--concurrency", "-k", type=int, default=4, help="client connections (default 4)")
    ap.add_argument(
        "--max-body",
        type=int,
        default=1024 * 1024,
        help="limits.max_message_bytes given to the edge (default 1 MiB; shipped 256 KiB)",
    )
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--ids",
        choices=["v4", "v7"],
        default="v4",
        help="event ids: the simulator's random v4 (default) or time-ordered v7 (the spec's advice)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the edge (experiments), e.g. EDGEKITE_STORE__CACHE_MB=16",
    )
    ap.add_argument(
        "--py-spy",
        choices=("all", "gil"),
        help="profile the edge during the edge rounds "
        "(all threads, or only the one holding the GIL) and print its top frames",
    )
    args = ap.parse_args(argv)
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return 0

    from edgekite.simulate import TrafficGenerator

    batches = [int(b) for b in args.batches.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="edgekite-http-ingest-"))
    gen = TrafficGenerator(seed=args.seed)
    out: dict[str, Any] = {
        "bench": "http_ingest",
        "machine": machine_info(),
        "args": vars(args),
        "settings": [],
    }
    extra_env = dict(kv.split("=", 1) for kv in args.edge_env)
    edge = EdgeChild(
        tmp / "data", log_dir=tmp, env={"EDGEKITE_LIMITS__MAX_MESSAGE_BYTES": str(args.max_body), **extra_env}
    )
    default_edge = EdgeChild(tmp / "data-default", log_dir=tmp)
    baseline = Baseline()
    total_sent = 0
    try:
        # What the shipped limit does with these bodies.
        default_edge.start()
        probes = {}
        for b in batches:
            body = make_bodies(gen, b, b)[0]
            probes[b] = {
                "body_bytes": len(body),
                "status": asyncio.run(probe_default_limit(default_edge.http_port, body)),
            }
        default_edge.stop()
        out["default_limit_probe"] = probes
        print(
            "shipped limits.max_message_bytes = 256 KiB: "
            + ", ".join(
                f"{b} envelopes ({p['body_bytes'] / 1024:.0f} KiB) -> {p['status']}"
                for b, p in probes.items()
            ),
            flush=True,
        )

        edge.start()
        baseline.start()
        print(
            f"edge ready (pid {edge.pid}, http :{edge.http_port}, max body {args.max_body} B); "
            f"baseline on :{baseline.port}; K={args.concurrency}",
            flush=True,
        )
        with MemorySampler(edge.pid, interval=0.2, uss_every=5) as mem:
            for b in batches:
                setting: dict[str, Any] = {"batch": b, "rounds": []}
                for rnd in range(args.rounds):
                    bodies = make_bodies(gen, args.events, b, args.ids)
                    n = args.events
                    body_bytes = sum(len(x) for x in bodies)
                    spy = (
                        start_py_spy(edge.pid, tmp / f"spy-{b}-{rnd}.txt", args.py_spy == "gil")
                        if args.py_spy
                        else None
                    )
                    if spy is not None:
                        time.sleep(1.0)  # let py-spy attach
                    cpu0 = tree_cpu_by_process(edge.pid)
                    e = asyncio.run(post_all(edge.http_port, bodies, args.concurrency, check=True))
                    e["cpu_us_per_event"] = cpu_per_event(cpu0, tree_cpu_by_process(edge.pid), edge.pid, n)
                    stop_py_spy(spy)
                    bl = asyncio.run(post_all(baseline.port, bodies, args.concurrency, check=False))
                    total_sent += n
                    e["events_per_sec"] = n / e["elapsed_secs"]
                    bl["events_per_sec"] = n / bl["elapsed_secs"]
                    r = {
                        "round": rnd + 1,
                        "events": n,
                        "body_bytes_mean": body_bytes // len(bodies),
                        "edge": e,
                        "baseline": bl,
                        "ratio": e["events_per_sec"] / bl["events_per_sec"],
                    }
                    setting["rounds"].append(r)
                    bad = (
                        ""
                        if not e["errors"] and e["accepted"] == n
                        else f"  !! accepted {e['accepted']} of {n}, errors {e['errors']}"
                    )
                    cpu = e["cpu_us_per_event"]
                    print(
                        f"  batch {b:>5}  round {rnd + 1}: edge {e['events_per_sec']:>9,.0f} ev/s "
                        f"(POST p50 {e['latency_p50_ms']} ms, p95 {e['latency_p95_ms']} ms; CPU µs/event: "
                        f"edge {cpu['edge']:.1f}, workers {cpu['workers']:.1f})  baseline "
                        f"{bl['events_per_sec']:>10,.0f} ev/s  ratio {r['ratio']:.1%}{bad}",
                        flush=True,
                    )
                edge_rates = [r["edge"]["events_per_sec"] for r in setting["rounds"]]
                base_rates = [r["baseline"]["events_per_sec"] for r in setting["rounds"]]
                setting["edge_events_per_sec_median"] = statistics.median(edge_rates)
                setting["baseline_events_per_sec_median"] = statistics.median(base_rates)
                setting["ratio_median"] = statistics.median(r["ratio"] for r in setting["rounds"])
                for part in ("edge", "workers"):
                    setting[f"cpu_us_per_event_{part}_median"] = statistics.median(
                        r["edge"]["cpu_us_per_event"][part] for r in setting["rounds"]
                    )
                out["settings"].append(setting)
        out["edge_memory"] = mem.summary()
        if args.py_spy:
            merged = tmp / "spy-all.txt"
            merged.write_text("".join(p.read_text() for p in sorted(tmp.glob("spy-*-*.txt"))))
            out["profile"] = summarize_profile(merged)
    finally:
        edge.stop()
        baseline.stop()
        default_edge.stop()
        import sqlite3

        db = tmp / "data" / "edge.db"
        if db.exists():
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                out["events_in_db"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                conn.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print_table(
        [
            "POST batch",
            "edge ev/s (median)",
            "baseline ev/s (median)",
            "edge/baseline",
            "CPU µs/event edge + workers",
            "≥ 20k",
        ],
        [
            [
                s["batch"],
                f"{s['edge_events_per_sec_median']:,.0f}",
                f"{s['baseline_events_per_sec_median']:,.0f}",
                f"{s['ratio_median']:.1%}",
                f"{s['cpu_us_per_event_edge_median']:.1f} + {s['cpu_us_per_event_workers_median']:.1f}",
                "ok" if s["edge_events_per_sec_median"] >= 20_000 else "MISS",
            ]
            for s in out["settings"]
        ],
    )
    m = out.get("edge_memory", {})
    print(
        f"\nedge RSS max {m.get('rss_max_bytes', 0) / 1e6:.1f} MB, USS max {(m.get('uss_max_bytes') or 0) / 1e6:.1f} MB; "
        f"events in edge.db {out.get('events_in_db')} (sent {total_sent:,})"
    )
    prof = out.get("profile")
    if prof:
        print(f"\npy-spy ({args.py_spy}, {prof['samples']} samples over the edge rounds)")
        for title in ("threads", "self", "inclusive"):
            print(f"  {title}:")
            for frame, sh in prof[title]:
                print(f"    {sh:6.1%}  {frame[:150]}")
    path = write_results("http_ingest", out)
    print(f"results: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

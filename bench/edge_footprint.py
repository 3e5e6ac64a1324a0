#!/usr/bin/env python3
"""Footprint of ``edgekite edge``: start-to-ready time, memory idle and under load, bytes per event.

Two deployments are measured: ``embedded`` (the default: no --mqtt-url, the in-process amqtt
broker on a free --mqtt-port) and ``mosquitto`` (--mqtt-url to a throwaway Mosquitto).

  (a) start-to-ready   wall time from spawning ``.venv/bin/edgekite edge`` to its "ready" line
                       (interpreter start included), median of --starts, fresh data dir each time
  (b) idle memory      RSS, USS and PSS (psutil memory_full_info) --idle-wait s after ready, and
                       "each page once": the tree's resident pages with a page shared by the edge
                       and its bridge child counted once (their libpython, libcrypto, libc...),
                       read from /proc/PID/pagemap (needs root; "-" otherwise)
  (c) memory under load  peak RSS sampled every 100 ms while --load-events simulator events are
                       published with ingest_mqtt.py's publishers (Mosquitto; --embedded-load also
                       pushes the same load through the embedded broker)
  (d) bytes per event  --disk-events simulator events stored via Mosquitto, edge stopped with
                       SIGTERM (it checkpoints and truncates the WAL), then
                       (page_count - freelist_count) * page_size / rows, broken down per table and
                       index with the dbstat virtual table when this SQLite has it

Targets: start-to-ready < 1 s, RSS < 80 MB idle and under load, <= 400 bytes/event on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from _common import (
    BENCH_DIR,
    Edge,
    Load,
    Mosquitto,
    RowCounter,
    exit_on_sigterm,
    fmt,
    free_port,
    generate_envelopes,
    machine_info,
    median,
    print_table,
    probe_until_stored,
    process_tree,
    publish,
    tempdir,
    tree_distinct_rss,
    tree_rss,
    write_load,
    write_results,
)

TARGET_READY_S = 1.0
TARGET_RSS_MB = 80.0
TARGET_BYTES_PER_EVENT = 400.0
MB = 2**20


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MB


def memory(pid: int) -> dict[str, Any]:
    """Totals over the edge and its children (the bridge's child process with an external
    broker): RSS counts shared pages once per process, PSS splits them, USS is private only."""
    totals = {"rss_mb": 0.0, "uss_mb": 0.0, "pss_mb": 0.0, "swap_mb": 0.0, "threads": 0}
    per_process = {}
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            full = p.memory_full_info()
            rec = {
                "rss_mb": full.rss / MB,
                "uss_mb": full.uss / MB,
                "pss_mb": getattr(full, "pss", 0) / MB,
                "swap_mb": getattr(full, "swap", 0) / MB,
                "threads": p.num_threads(),
            }
            per_process["edge" if p.pid == pid else "bridge-child"] = {k: round(v, 1) for k, v in rec.items()}
            for k, v in rec.items():
                totals[k] += v
    return {**totals, "processes": per_process}


def start_edge(
    work: Path, mode: str, tag: str, mq: Mosquitto | None, env: dict[str, str], cpus: str | None = None
) -> Edge:
    data_dir = work / f"edge-{tag}"
    if mode == "embedded":
        return Edge(data_dir, mqtt_port=free_port(), edge_id=f"fp-{tag}", env=env, cpus=cpus).start()
    assert mq is not None
    return Edge(data_dir, mqtt_url=mq.url, edge_id=f"fp-{tag}", env=env, cpus=cpus).start()


def measure_starts(work: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """(a) and (b): --starts cold starts, each on a fresh data dir."""
    starts = []
    with contextlib.ExitStack() as stack:
        mq = stack.enter_context(Mosquitto(work)) if mode == "mosquitto" else None
        for i in range(args.starts):
            edge = start_edge(work, mode, f"{mode}-start{i}", mq, args.edge_env_dict, args.edge_cpus)
            try:
                rec: dict[str, Any] = {"ready_wall_s": edge.ready_wall_s, "ready_own_s": edge.ready_own_s}
                time.sleep(args.idle_wait)
                rec["idle"] = memory(edge.pid)
                rec["idle"]["distinct_mb"] = _mb(tree_distinct_rss(edge.pid))
                starts.append(rec)
            finally:
                edge.stop()
            print(
                f"  {mode} start {i + 1}: ready {rec['ready_wall_s']:.2f} s (edge says {rec['ready_own_s']:.2f} s), "
                f"idle RSS {rec['idle']['rss_mb']:.1f} MB, USS {rec['idle']['uss_mb']:.1f} MB, "
                f"PSS {rec['idle']['pss_mb']:.1f} MB, each page once {fmt(rec['idle']['distinct_mb'], '.1f')} MB",
                flush=True,
            )
    return {
        "starts": starts,
        "ready_wall_s_median": median([s["ready_wall_s"] for s in starts]),
        "ready_own_s_median": median([s["ready_own_s"] for s in starts]),
        "idle_rss_mb_median": median([s["idle"]["rss_mb"] for s in starts]),
        "idle_uss_mb_median": median([s["idle"]["uss_mb"] for s in starts]),
        "idle_pss_mb_median": median([s["idle"]["pss_mb"] for s in starts]),
        "idle_distinct_mb_median": median([s["idle"]["distinct_mb"] for s in starts]),
    }


def ingest(
    work: Path, mode: str, load: Load, args: argparse.Namespace, tag: str, after_stop: Any = None
) -> dict[str, Any]:
    """Start an edge, push ``load`` through it, sample memory every --sample-interval s.

    ``after_stop(edge)`` runs once the edge has exited after SIGTERM (for the disk analysis)."""
    with contextlib.ExitStack() as stack:
        mq = stack.enter_context(Mosquitto(work)) if mode == "mosquitto" else None
        edge = start_edge(work, mode, tag, mq, args.edge_env_dict, args.edge_cpus)
        run = None
        counter = RowCounter(edge.db_path)
        try:
            port = mq.port if mq is not None else edge.mqtt_port
            assert port
            probes = probe_until_stored(port, counter, edge)
            before = memory(edge.pid)
            before["distinct_mb"] = _mb(tree_distinct_rss(edge.pid))
            samples: list[tuple[float, float]] = []
            peak_distinct = before["distinct_mb"]
            peak_full = dict(before)
            target = load.events + 1
            run = publish(port, load, args.max_inflight, tag)
            t0 = run.started
            next_full = t0
            timed_out = False
            while True:
                now = time.monotonic()
                rss_now = tree_rss(edge.pid) / MB
                if rss_now >= max((r for _, r in samples), default=0.0):
                    # pagemap costs ~25 ms: read it at each new RSS high only
                    distinct = _mb(tree_distinct_rss(edge.pid))
                    if distinct is not None:
                        peak_distinct = max(peak_distinct or 0.0, distinct)
                samples.append((now - t0, rss_now))
                if now >= next_full:  # smaps is costlier: USS/PSS once a second
                    next_full = now + 1.0
                    with contextlib.suppress(psutil.Error):
                        full = memory(edge.pid)
                        for k in ("rss_mb", "uss_mb", "pss_mb", "threads"):
                            peak_full[k] = max(peak_full[k], full[k])
                stored = counter.fast()
                if stored >= target:
                    break
                if now - t0 > args.timeout:
                    timed_out = True
                    break
                time.sleep(args.sample_interval)
            secs = time.monotonic() - t0
            run.poll_done()
            time.sleep(args.idle_wait)
            settled = memory(edge.pid)
            settled["distinct_mb"] = _mb(tree_distinct_rss(edge.pid))
            rows_seen = counter.fast() - 1
            counter.close()
            rc = edge.stop()
            result: dict[str, Any] = {
                "events": load.events,
                "stored": rows_seen,
                "timed_out": timed_out,
                "seconds": secs,
                "events_per_s": rows_seen / secs,
                "before_load": before,
                "peak_rss_mb": max(r for _, r in samples),
                "peak_uss_mb": peak_full["uss_mb"],
                "peak_distinct_mb": peak_distinct,
                "peak_pss_mb": peak_full["pss_mb"],
                "peak_threads": peak_full["threads"],
                "after_load_settled": settled,
                "samples": len(samples),
                "rss_series_mb": [
                    (round(t, 2), round(r, 1)) for t, r in samples[:: max(1, len(samples) // 200)]
                ],
                "sigterm_exit_code": rc,
                "probes_sent": probes,
            }
            if after_stop is not None:
                result["disk"] = after_stop(edge)
            return result
        finally:
            counter.close()
            if run is not None:
                run.kill()
            edge.stop()


def disk_usage(db_path: Path) -> dict[str, Any]:
    """(d): live bytes per event, per table/index via dbstat, plus column sizes."""
    wal = db_path.with_name(db_path.name + "-wal")
    out: dict[str, Any] = {
        "db_file_bytes": db_path.stat().st_size,
        "wal_bytes_after_sigterm": wal.stat().st_size if wal.exists() else 0,
    }
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        live = (page_count - freelist) * page_size
        out.update(
            page_size=page_size,
            page_count=page_count,
            freelist_count=freelist,
            rows=rows,
            live_bytes=live,
            bytes_per_event=live / rows if rows else None,
        )
        try:
            stat = conn.execute(
                "SELECT name, count(*), sum(pgsize), sum(payload), sum(unused) FROM dbstat GROUP BY name "
                "ORDER BY sum(pgsize) DESC"
            ).fetchall()
            out["dbstat_supported"] = True
            out["objects"] = [
                {
                    "name": n,
                    "pages": p,
                    "bytes": b,
                    "payload_bytes": pl,
                    "unused_bytes": u,
                    "bytes_per_event": b / rows if rows else None,
                    "fill": (pl / b) if b else None,
                }
                for n, p, b, pl, u in stat
            ]
        except sqlite3.OperationalError as exc:
            out["dbstat_supported"] = False
            out["dbstat_error"] = str(exc)
        cols = [
            "event_id",
            "source_type",
            "source_id",
            "category",
            "type",
            "severity",
            "correlation_id",
            "payload_json",
            "attachments_json",
            "retention_class",
            "meta_json",
        ]
        avg = conn.execute(
            "SELECT "
            + ", ".join(f"avg(coalesce(length(CAST({c} AS BLOB)), 0))" for c in cols)
            + " FROM events"
        ).fetchone()
        out["avg_column_bytes"] = {c: round(v, 1) for c, v in zip(cols, avg, strict=True)}
        out["table_rows"] = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("events", "hourly_counts", "sources", "dead_letter", "fingerprints")
        }
    finally:
        conn.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--starts", type=int, default=5, help="cold starts per deployment for (a)/(b) (default: %(default)s)"
    )
    ap.add_argument(
        "--idle-wait",
        type=float,
        default=2.0,
        help="seconds after ready before idle memory (default: %(default)s)",
    )
    ap.add_argument("--load-events", type=int, default=100_000, help="events for (c) (default: %(default)s)")
    ap.add_argument("--disk-events", type=int, default=200_000, help="events for (d) (default: %(default)s)")
    ap.add_argument("--events", type=int, help="shorthand: sets both --load-events and --disk-events")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat (c) and (d) this many times; medians (default: %(default)s)",
    )
    ap.add_argument(
        "--batch", type=int, default=1, help="envelopes per message for (c)/(d) (default: %(default)s)"
    )
    ap.add_argument(
        "--topics", type=int, default=8, help="publisher processes / source topics (default: %(default)s)"
    )
    ap.add_argument("--max-inflight", type=int, default=1000, help="mosquitto_pub -M (default: %(default)s)")
    ap.add_argument(
        "--embedded-load",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run (c) through the embedded amqtt broker (default: on)",
    )
    ap.add_argument(
        "--sample-interval", type=float, default=0.1, help="RSS sampling period, s (default: %(default)s)"
    )
    ap.add_argument(
        "--timeout", type=float, default=120, help="max seconds per load run (default: %(default)s)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="EDGEKITE_X__Y=V",
        help="extra environment for the edge, e.g. EDGEKITE_STORE__COMPRESS=false (repeatable)",
    )
    ap.add_argument("--tmp-dir", help="where data dirs go (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument(
        "--edge-cpus",
        help="run the edge under `taskset -c LIST` (e.g. 0: a one-CPU box; the broker and the "
        "publishers keep every CPU)",
    )
    ap.add_argument("--skip", default="", help="comma list of parts to skip: starts,load,disk")
    args = ap.parse_args()
    args.edge_env_dict = dict(kv.split("=", 1) for kv in args.edge_env)
    exit_on_sigterm()
    if args.events:
        args.load_events = args.disk_events = args.events
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    results: dict[str, Any] = {
        "bench": "edge_footprint",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": dict(vars(args)),
    }
    t_all = time.monotonic()
    with tempdir("ekbench-footprint-", args.tmp_dir, args.keep) as work:
        if "starts" not in skip:
            print("(a)/(b) start-to-ready and idle memory", flush=True)
            results["starts"] = {m: measure_starts(work, m, args) for m in ("embedded", "mosquitto")}

        need = max(
            args.load_events if "load" not in skip else 0, args.disk_events if "disk" not in skip else 0
        )
        if need:
            per_source = generate_envelopes(need, args.topics, args.seed)

            def subset(n: int) -> list[list[dict[str, Any]]]:
                k = len(per_source)
                return [envs[: n // k + (1 if i < n % k else 0)] for i, envs in enumerate(per_source)]

        if "load" not in skip:
            print(f"(c) memory under a {args.load_events:,}-event load", flush=True)
            load = write_load(work, subset(args.load_events), args.batch)
            results["load"] = {}
            for mode in ["mosquitto"] + (["embedded"] if args.embedded_load else []):
                runs = []
                for r in range(args.rounds):
                    res = ingest(work, mode, load, args, f"{mode}-load{r}")
                    runs.append(res)
                    print(
                        f"  {mode} load {r + 1}: {res['stored']:,}/{load.events:,} events in {res['seconds']:.1f} s "
                        f"({res['events_per_s']:,.0f} ev/s{', TIMED OUT' if res['timed_out'] else ''}), "
                        f"RSS before {res['before_load']['rss_mb']:.1f} MB, peak {res['peak_rss_mb']:.1f} MB, "
                        f"settled {res['after_load_settled']['rss_mb']:.1f} MB; each page once: before "
                        f"{fmt(res['before_load']['distinct_mb'], '.1f')}, peak {fmt(res['peak_distinct_mb'], '.1f')} MB",
                        flush=True,
                    )
                results["load"][mode] = {
                    "runs": runs,
                    "peak_rss_mb_median": median([x["peak_rss_mb"] for x in runs]),
                    "peak_uss_mb_median": median([x["peak_uss_mb"] for x in runs]),
                    "peak_distinct_mb_median": median([x["peak_distinct_mb"] for x in runs]),
                    "settled_rss_mb_median": median([x["after_load_settled"]["rss_mb"] for x in runs]),
                    "events_per_s_median": median([x["events_per_s"] for x in runs]),
                }

        if "disk" not in skip:
            print(f"(d) bytes per event after {args.disk_events:,} events (Mosquitto, SIGTERM)", flush=True)
            dload = write_load(work, subset(args.disk_events), args.batch)
            runs = []
            for r in range(args.rounds):
                res = ingest(
                    work, "mosquitto", dload, args, f"disk{r}", after_stop=lambda e: disk_usage(e.db_path)
                )
                runs.append(res)
                d = res["disk"]
                print(
                    f"  disk {r + 1}: {d['rows']:,} rows, {d['live_bytes'] / MB:.1f} MB live, "
                    f"{d['bytes_per_event']:.0f} B/event, WAL after SIGTERM {d['wal_bytes_after_sigterm']} B, "
                    f"exit code {res['sigterm_exit_code']}",
                    flush=True,
                )
            results["disk"] = {
                "runs": [x["disk"] for x in runs],
                "bytes_per_event_median": median([x["disk"]["bytes_per_event"] for x in runs]),
                "ingest_events_per_s": [x["events_per_s"] for x in runs],
                "json_bytes_per_event": dload.payload_bytes / dload.events,
            }

    # -- report ---------------------------------------------------------------------------------
    print()
    rows = []
    if "starts" in results:
        for m, s in results["starts"].items():
            rows.append(
                [
                    f"start-to-ready ({m})",
                    fmt(s["ready_wall_s_median"], ".2f") + " s",
                    " / ".join(fmt(x["ready_wall_s"], ".2f") for x in s["starts"]),
                    f"< {TARGET_READY_S:.0f} s",
                    "OK" if s["ready_wall_s_median"] < TARGET_READY_S else "MISS",
                ]
            )
        for m, s in results["starts"].items():
            rows.append(
                [
                    f"idle RSS ({m})",
                    fmt(s["idle_rss_mb_median"], ".1f") + " MB",
                    f"USS {fmt(s['idle_uss_mb_median'], '.1f')} / PSS {fmt(s['idle_pss_mb_median'], '.1f')} MB"
                    f" / each page once {fmt(s['idle_distinct_mb_median'], '.1f')} MB",
                    f"< {TARGET_RSS_MB:.0f} MB",
                    "OK" if s["idle_rss_mb_median"] < TARGET_RSS_MB else "MISS",
                ]
            )
    if "load" in results:
        for m, s in results["load"].items():
            rows.append(
                [
                    f"peak RSS under load ({m})",
                    fmt(s["peak_rss_mb_median"], ".1f") + " MB",
                    f"USS {fmt(s['peak_uss_mb_median'], '.1f')} MB, each page once "
                    f"{fmt(s['peak_distinct_mb_median'], '.1f')} MB, settled {fmt(s['settled_rss_mb_median'], '.1f')} MB"
                    f", {fmt(s['events_per_s_median'])} ev/s",
                    f"< {TARGET_RSS_MB:.0f} MB",
                    "OK" if s["peak_rss_mb_median"] < TARGET_RSS_MB else "MISS",
                ]
            )
    if "disk" in results:
        d = results["disk"]
        rows.append(
            [
                "bytes/event on disk",
                fmt(d["bytes_per_event_median"], ".0f") + " B",
                f"JSON on the wire {d['json_bytes_per_event']:.0f} B/event",
                f"<= {TARGET_BYTES_PER_EVENT:.0f} B",
                "OK" if d["bytes_per_event_median"] <= TARGET_BYTES_PER_EVENT else "MISS",
            ]
        )
    print("edge_footprint: medians")
    print_table(["measure", "median", "detail", "target", "verdict"], rows)
    if "disk" in results:
        last = results["disk"]["runs"][-1]
        print()
        if last.get("dbstat_supported"):
            print(f"per table/index (dbstat, last run, {last['rows']:,} rows, page size {last['page_size']})")
            print_table(
                ["object", "pages", "MB", "B/event", "fill"],
                [
                    [
                        o["name"],
                        f"{o['pages']:,}",
                        f"{o['bytes'] / MB:.1f}",
                        fmt(o["bytes_per_event"], ".1f"),
                        f"{o['fill']:.0%}",
                    ]
                    for o in last["objects"]
                ],
            )
        else:
            print(f"dbstat not available in this SQLite: {last.get('dbstat_error')}")
        print(
            "average stored column bytes per event: "
            + ", ".join(f"{k} {v:.0f}" for k, v in last["avg_column_bytes"].items())
        )
    results["wall_seconds"] = time.monotonic() - t_all
    path = write_results("edge_footprint", results)
    print(f"\nwrote {path.relative_to(BENCH_DIR.parent)} (total {results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sustained MQTT -> SQLite ingest of ``edgekite edge`` through a real Mosquitto, vs a bare subscriber.

For every round and message layout (single envelopes, JSON arrays of --batch envelopes):

  publish-only  fresh Mosquitto, nobody subscribed: how fast the mosquitto_pub processes push
                the load (the ceiling of the load generator itself)
  edge          fresh Mosquitto + ``edgekite edge --mqtt-url ... --data-dir <fresh tmp>``; events/s
                from the first publish until the edge's ``events`` table holds every event
  baseline      fresh Mosquitto + a bare paho subscriber (MQTT 5, QoS 1, auto-ack, persistent
                session, Receive Maximum 2000 like the edge); events/s until it got every message

The load is the simulator's realistic mix (TrafficGenerator), generated once up front and dealt
round-robin onto --topics source topics (one ``mosquitto_pub -l -q 1`` per topic). events/s
always counts envelopes. A fresh broker per phase means no session or backlog leaks between
phases. If the publishers finish long before the edge has stored everything, the edge is the
bottleneck, which is what this measures (see "pub done" and "lag" columns).

Target: edge >= 15,000 events/s single-envelope and >= 50 % of the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from _common import (
    BENCH_DIR,
    PYTHON,
    Edge,
    Load,
    Mosquitto,
    RowCounter,
    exit_on_sigterm,
    fmt,
    generate_envelopes,
    machine_info,
    median,
    print_table,
    probe_until_stored,
    publish,
    start_py_spy,
    stop_group,
    stop_py_spy,
    tempdir,
    tree_cpu_by_process,
    tree_cpu_secs,
    tree_rss,
    write_load,
    write_results,
)

TARGET_EPS_SINGLE = 15_000
TARGET_RATIO = 0.5


def _cpu(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


def summarize_py_spy(raw: Path, top: int = 15) -> dict[str, Any]:
    """Sample shares from py-spy's raw format: self time per source line, inclusive time per
    function, and per thread."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread, frames = (
            (frames[0], frames[1:]) if frames and frames[0].startswith("thread ") else ("?", frames)
        )
        total += count
        threads[thread] += count
        if frames:
            self_c[frames[-1]] += count
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:  # inclusive: per function, not per line
            incl[f] += count
    share = lambda c: [(f, round(100 * k / total, 1)) for f, k in c.most_common(top)] if total else []  # noqa: E731
    return {
        "samples": total,
        "self_top": share(self_c),
        "inclusive_top": share(incl),
        "threads": share(threads),
    }


def run_publish_only(work: Path, load: Load, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    with Mosquitto(work) as mq:
        run = publish(mq.port, load, args.max_inflight, tag)
        try:
            secs = run.wait(args.timeout)
        finally:
            run.kill()
    return {"seconds": secs, "events_per_s": load.events / secs, "messages_per_s": load.messages / secs}


def run_edge(work: Path, load: Load, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    data_dir = work / f"edge-{tag}"
    with Mosquitto(work) as mq:
        edge = Edge(data_dir, mqtt_url=mq.url, edge_id=f"bench-{tag}", env=args.edge_env_dict)
        run = None
        counter = None
        try:
            edge.start()
            counter = RowCounter(edge.db_path)
            # One probe event proves the bridge's subscription is in place before the clock starts.
            probes = probe_until_stored(mq.port, counter, edge)
            target = load.events + 1
            cpu0_edge, cpu0_mq = tree_cpu_secs(edge.pid), _cpu(mq.pid)
            cpu0_by = tree_cpu_by_process(edge.pid)
            peak_rss = tree_rss(edge.pid)
            next_rss = 0.0
            spy = (
                start_py_spy(edge.pid, work / f"py-spy-{tag}.txt", args.py_spy == "gil")
                if args.py_spy
                else None
            )
            run = publish(mq.port, load, args.max_inflight, tag)
            t0 = run.started
            pub_done = None
            deadline = t0 + args.timeout
            stored = 0
            while True:
                stored = counter.fast()
                now = time.monotonic()
                if pub_done is None and run.poll_done():
                    pub_done = max(f for f in run.finished if f is not None) - t0
                    for p in run.procs:
                        if p.returncode:
                            raise RuntimeError(f"a mosquitto_pub exited with {p.returncode}")
                if stored >= target:
                    t_end = now
                    break
                if now > deadline:
                    raise TimeoutError(
                        f"edge stored {stored - 1:,} of {load.events:,} events in {args.timeout:.0f} s; "
                        f"stderr:\n{edge.stderr_tail()}"
                    )
                if now >= next_rss:  # walking the process tree costs CPU: not at every poll
                    next_rss = now + 0.25
                    peak_rss = max(peak_rss, tree_rss(edge.pid))
                time.sleep(args.poll_interval)
            secs = t_end - t0
            stop_py_spy(spy)
            cpu_edge, cpu_mq = tree_cpu_secs(edge.pid) - cpu0_edge, _cpu(mq.pid) - cpu0_mq
            cpu_by = {
                ("edge" if p == edge.pid else f"child-{p}"): round(
                    (v - cpu0_by.get(p, 0.0)) / (t_end - t0), 2
                )
                for p, v in tree_cpu_by_process(edge.pid).items()
            }
            if pub_done is None:
                run.wait(args.timeout)
                pub_done = max(f for f in run.finished if f is not None) - t0
            exact = counter.exact()
            m = edge.metrics()
            rejected = sum(v for k, v in m.items() if k.startswith("edgekite_events_rejected_total"))
            dups = sum(v for k, v in m.items() if k.startswith("edgekite_events_duplicate_total"))
            commits = m.get("edgekite_commit_seconds_count")
            counter.close()
            t_stop = time.monotonic()
            rc = edge.stop()
            stop_secs = time.monotonic() - t_stop
        finally:
            if counter is not None:
                counter.close()
            if run is not None:
                run.kill()
            edge.stop()
    if exact != target:
        raise RuntimeError(f"edge.db holds {exact} rows, expected {target}")
    profile = None
    if args.py_spy and (work / f"py-spy-{tag}.txt").exists():
        profile = summarize_py_spy(work / f"py-spy-{tag}.txt")
        if args.py_spy_dir:
            Path(args.py_spy_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(work / f"py-spy-{tag}.txt", Path(args.py_spy_dir) / f"py-spy-{tag}.txt")
    return {
        "py_spy": profile,
        "probes_sent": probes,
        "seconds": secs,
        "events_per_s": load.events / secs,
        "publishers_done_s": pub_done,
        "lag_after_publishers_s": secs - pub_done,
        "edge_cpu_s": cpu_edge,
        "edge_cpu_cores": cpu_edge / secs,
        "edge_cpu_cores_by_process": cpu_by,
        "mosquitto_cpu_s": cpu_mq,
        "edge_peak_rss_mb": peak_rss / 2**20,
        "rows": exact - 1,
        "rejected": rejected,
        "duplicates": dups,
        "commits": commits,
        "events_per_commit": (exact / commits) if commits else None,
        "start_to_ready_s": edge.ready_wall_s,
        "sigterm_exit_code": rc,
        "sigterm_stop_s": stop_secs,
    }


def run_baseline(work: Path, load: Load, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    with Mosquitto(work) as mq:
        sub = subprocess.Popen(
            [
                str(PYTHON),
                str(BENCH_DIR / "_bare_subscriber.py"),
                "--port",
                str(mq.port),
                "--expect",
                str(load.messages),
                "--receive-maximum",
                str(args.receive_maximum),
                "--client-id",
                f"bench-bare-{tag}",
            ]
            + (["--parse"] if args.baseline_parse else []),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        run = None
        try:
            assert sub.stdout is not None
            line = sub.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"bare subscriber: {line!r}")
            cpu0 = _cpu(sub.pid)
            run = publish(mq.port, load, args.max_inflight, tag)
            t0 = run.started
            done: list[str] = []

            import threading

            def read() -> None:
                done.append(sub.stdout.readline().strip())  # type: ignore[union-attr]

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            cpu1 = cpu0
            pub_done = None
            deadline = t0 + args.timeout
            while reader.is_alive():
                if pub_done is None and run.poll_done():
                    pub_done = max(f for f in run.finished if f is not None) - t0
                if time.monotonic() > deadline:
                    raise TimeoutError("bare subscriber did not receive everything")
                cpu1 = _cpu(sub.pid) or cpu0
                reader.join(0.02)
            if pub_done is None:
                run.wait(args.timeout)
                pub_done = max(f for f in run.finished if f is not None) - t0
            parts = done[0].split()
            if not parts or parts[0] != "done":
                raise RuntimeError(f"bare subscriber: {done[0]!r}")
            last = float(parts[2])
        finally:
            if run is not None:
                run.kill()
            stop_group(sub, timeout=5)
    secs = last - t0
    return {
        "seconds": secs,
        "events_per_s": load.events / secs,
        "messages_per_s": load.messages / secs,
        "publishers_done_s": pub_done,
        "subscriber_cpu_s": cpu1 - cpu0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="envelopes per phase (default: %(default)s)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds; medians are reported (default: %(default)s)"
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=50,
        help="envelopes per array message in layout (b) (default: %(default)s)",
    )
    ap.add_argument(
        "--layouts", default="single,array", help="comma list of single,array (default: %(default)s)"
    )
    ap.add_argument(
        "--topics", type=int, default=8, help="source topics = mosquitto_pub processes (default: %(default)s)"
    )
    ap.add_argument("--max-inflight", type=int, default=1000, help="mosquitto_pub -M (default: %(default)s)")
    ap.add_argument(
        "--receive-maximum",
        type=int,
        default=2000,
        help="baseline's Receive Maximum; the edge's default is 2000",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--timeout", type=float, default=240, help="seconds allowed per phase (default: %(default)s)"
    )
    ap.add_argument(
        "--poll-interval", type=float, default=0.05, help="row-count poll period, s (default: %(default)s)"
    )
    ap.add_argument(
        "--baseline-parse",
        action="store_true",
        help="make the bare subscriber also orjson.loads each payload (off by default: the baseline is "
        "pure MQTT delivery)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare-subscriber phase")
    ap.add_argument("--no-publish-only", action="store_true", help="skip the publish-only phase")
    ap.add_argument(
        "--py-spy",
        choices=["all", "gil"],
        help="profile the edge during its phase with py-spy "
        "(all: every active thread; gil: only samples holding the GIL) and print the top frames; "
        "skews the edge's rate a little",
    )
    ap.add_argument("--py-spy-dir", help="also copy py-spy's raw collapsed stacks here")
    ap.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="EDGEKITE_X__Y=V",
        help="extra environment for the edge, e.g. EDGEKITE_STORE__COMPRESS=false (repeatable)",
    )
    ap.add_argument(
        "--tmp-dir",
        help="where data dirs and load files go (default: system temp; it must be a real disk "
        "for synchronous=FULL to mean anything)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (edge.db, logs, load files)")
    args = ap.parse_args()
    args.edge_env_dict = dict(kv.split("=", 1) for kv in args.edge_env)
    exit_on_sigterm()

    layouts = {"single": 1, "array": args.batch}
    chosen = [x.strip() for x in args.layouts.split(",") if x.strip()]
    for c in chosen:
        if c not in layouts:
            ap.error(f"unknown layout {c!r}")

    results: dict[str, Any] = {
        "bench": "ingest_mqtt",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "config": dict(vars(args)),
        "layouts": {},
    }
    t_all = time.monotonic()
    with tempdir("ekbench-ingest-", args.tmp_dir, args.keep) as work:
        t = time.monotonic()
        per_source = generate_envelopes(args.events, args.topics, args.seed)
        loads = {c: write_load(work, per_source, layouts[c]) for c in chosen}
        del per_source
        print(
            f"generated {args.events:,} envelopes in {time.monotonic() - t:.1f} s: "
            + ", ".join(
                f"{c}: {ld.messages:,} msgs, {ld.payload_bytes / ld.events:.0f} B/envelope"
                for c, ld in loads.items()
            ),
            flush=True,
        )
        for c in chosen:
            results["layouts"][c] = {
                "batch": layouts[c],
                "messages": loads[c].messages,
                "payload_bytes": loads[c].payload_bytes,
                "rounds": [],
            }
        for r in range(1, args.rounds + 1):
            for c in chosen:
                load = loads[c]
                rec: dict[str, Any] = {"round": r}
                tag = f"r{r}-{c}"
                if not args.no_publish_only:
                    rec["publish_only"] = run_publish_only(work, load, args, tag + "-pub")
                phases = ["edge", "baseline"] if r % 2 else ["baseline", "edge"]  # alternate order: noisy box
                for ph in phases:
                    if ph == "edge":
                        rec["edge"] = run_edge(work, load, args, tag)
                    elif not args.no_baseline:
                        rec["baseline"] = run_baseline(work, load, args, tag + "-bare")
                if "baseline" in rec:
                    rec["ratio"] = rec["edge"]["events_per_s"] / rec["baseline"]["events_per_s"]
                results["layouts"][c]["rounds"].append(rec)
                e = rec["edge"]
                print(
                    f"round {r} {c:6s}: edge {e['events_per_s']:>9,.0f} ev/s "
                    f"(pub done {e['publishers_done_s']:.1f}s, stored {e['seconds']:.1f}s, "
                    f"edge CPU {e['edge_cpu_cores']:.2f} cores {e['edge_cpu_cores_by_process']}, peak RSS {e['edge_peak_rss_mb']:.0f} MB)"
                    + (
                        f" | baseline {rec['baseline']['events_per_s']:>9,.0f} ev/s, ratio {rec['ratio']:.2f}"
                        if "baseline" in rec
                        else ""
                    )
                    + (
                        f" | publish-only {rec['publish_only']['events_per_s']:>9,.0f} ev/s"
                        if "publish_only" in rec
                        else ""
                    ),
                    flush=True,
                )

    rows = []
    for c in chosen:
        rounds = results["layouts"][c]["rounds"]

        def col(path: tuple[str, ...], rounds: list[dict[str, Any]] = rounds) -> list[float]:
            out = []
            for rec in rounds:
                v: Any = rec
                for p in path:
                    v = v.get(p) if isinstance(v, dict) else None
                if v is not None:
                    out.append(v)
            return out

        summary = {
            "edge_events_per_s": median(col(("edge", "events_per_s"))),
            "baseline_events_per_s": median(col(("baseline", "events_per_s"))),
            "ratio": median(col(("ratio",))),
            "publish_only_events_per_s": median(col(("publish_only", "events_per_s"))),
            "edge_publishers_done_s": median(col(("edge", "publishers_done_s"))),
            "edge_seconds": median(col(("edge", "seconds"))),
            "edge_cpu_cores": median(col(("edge", "edge_cpu_cores"))),
            "edge_peak_rss_mb": median(col(("edge", "edge_peak_rss_mb"))),
            "events_per_commit": median(col(("edge", "events_per_commit"))),
        }
        results["layouts"][c]["median"] = summary
        per = lambda path, spec=",.0f": " / ".join(fmt(v, spec) for v in col(path))  # noqa: E731
        rows.append(
            [
                f"{c} (x{layouts[c]})",
                fmt(summary["edge_events_per_s"]),
                per(("edge", "events_per_s")),
                fmt(summary["baseline_events_per_s"]),
                per(("baseline", "events_per_s")),
                fmt(summary["ratio"], ".2f"),
                per(("ratio",), ".2f"),
                fmt(summary["publish_only_events_per_s"]),
                fmt(summary["edge_publishers_done_s"], ".1f") + " / " + fmt(summary["edge_seconds"], ".1f"),
                fmt(summary["edge_cpu_cores"], ".2f"),
            ]
        )
    print()
    print(
        f"ingest_mqtt: {args.events:,} events per phase, {args.rounds} round(s), {args.topics} publishers, "
        f"medians (per-round values)"
    )
    print_table(
        [
            "layout",
            "edge ev/s",
            "per round",
            "baseline ev/s",
            "per round",
            "edge/base",
            "per round",
            "pub-only ev/s",
            "pub done/stored s",
            "edge cores",
        ],
        rows,
    )
    if "single" in chosen:
        s = results["layouts"]["single"]["median"]
        verdicts = [
            f"single-envelope edge {fmt(s['edge_events_per_s'])} ev/s vs target {TARGET_EPS_SINGLE:,}: "
            + ("OK" if (s["edge_events_per_s"] or 0) >= TARGET_EPS_SINGLE else "BELOW TARGET")
        ]
        if s["ratio"] is not None:
            verdicts.append(
                f"edge/baseline {s['ratio']:.2f} vs target {TARGET_RATIO:.2f}: "
                + ("OK" if s["ratio"] >= TARGET_RATIO else "BELOW TARGET")
            )
        print("\n".join(verdicts))
        results["verdicts"] = verdicts
    if args.py_spy:
        for c in chosen:
            prof = results["layouts"][c]["rounds"][-1]["edge"].get("py_spy")
            if not prof:
                continue
            print(
                f"\npy-spy ({args.py_spy}) of the edge, layout {c}, last round: {prof['samples']:,} samples"
            )
            print("  threads: " + ", ".join(f"{t} {p}%" for t, p in prof["threads"]))
            print_table(["self (top lines)", "%"], prof["self_top"])
            print_table(["inclusive (functions)", "%"], prof["inclusive_top"])
    results["wall_seconds"] = time.monotonic() - t_all
    path = write_results("ingest_mqtt", results)
    print(f"\nwrote {path.relative_to(BENCH_DIR.parent)} (total {results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

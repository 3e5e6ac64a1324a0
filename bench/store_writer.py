"""The edge's SQLite writer alone: how many events/s ``EdgeStore`` commits into a store that
already holds N events, with random (v4) or time-ordered (v7) event ids, and what the store
settings change (issue #4: HTTP batch ingest is bounded by this writer).

No HTTP, no MQTT, no decode on the clock: the bodies are generated and decoded up front, as
the HTTP path does (``decode_body``, 1,000 envelopes per item), then submitted to a real
``EdgeStore`` opened on a copy of a cached store; the clock runs from the first submit to the
last commit callback. Each round copies the cached store afresh, so every variant starts from
the very same file; variants alternate within a round, so they share the machine's mood.

The cached store (``--data-dir``, filled once with ``--prefill`` simulator events with their
random v4 ids through the same writer, reused while it holds at least that many) stands for an
edge that has been taking events for a while.

Run from the repository root::

    .venv/bin/python bench/store_writer.py                     # fill ~1.5 min once, then ~2 min
    .venv/bin/python bench/store_writer.py --variant base= --variant fg=store.background_checkpoint=false
    .venv/bin/python bench/store_writer.py --ids v4,v7 --prefill 200000 --events 50000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import RowCounter, machine_info, median, print_table, write_results
from http_ingest import make_bodies

from edge_api.ingest_http import decode_body
from edgekite.config import EdgeConfig
from edgekite.metrics import EdgeMetrics
from edgekite.simulate import TrafficGenerator
from edgekite.store import EdgeStore, WriteItem
from edgekite.store.schema import SCHEMA_VERSION

BATCH = 1000


def config(data_dir: Path, overrides: dict[str, Any]) -> EdgeConfig:
    raw: dict[str, Any] = {"edge": {"data_dir": str(data_dir)}}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return EdgeConfig.model_validate(raw)


def items_for(bodies: list[bytes], cfg: EdgeConfig) -> list[WriteItem]:
    now = int(time.time() * 1000)
    out = []
    for body in bodies:
        _, decoded = decode_body(body, "application/json", True, None, None, cfg, now)
        out.append(WriteItem(decoded=decoded, transport="http", size=len(body)))
    return out


def write_all(cfg: EdgeConfig, bodies: list[bytes]) -> dict[str, float]:
    """Open a store, commit every body, close it; events/s from first submit to last commit."""
    items = items_for(bodies, cfg)
    events = sum(len(i.decoded.events) for i in items)
    metrics = EdgeMetrics()
    store = EdgeStore(cfg, metrics).open()
    done = threading.Semaphore(0)
    for item in items:
        item.done = lambda _result: done.release()
    try:
        t0 = time.perf_counter()
        for item in items:
            store.submit(item)
        for _ in items:
            done.acquire()
        secs = time.perf_counter() - t0
    finally:
        store.close()
    reg = metrics.registry
    return {
        "events": events,
        "seconds": secs,
        "events_per_s": events / secs,
        "checkpoint_s_background": reg.get_sample_value(
            "edgekite_wal_checkpoint_seconds_total", {"by": "background"}
        )
        or 0.0,
        "checkpoint_s_writer": reg.get_sample_value("edgekite_wal_checkpoint_seconds_total", {"by": "writer"})
        or 0.0,
    }


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    counter = RowCounter(db)
    try:
        return counter.fast()
    finally:
        counter.close()


def fill(data_dir: Path, n: int, seed: int) -> None:
    have = stored(data_dir / "edge.db")
    if have >= n:
        print(f"cached store {data_dir}: {have:,} events (>= {n:,}), reused")
        migrate_cached(data_dir)
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"filling {data_dir} with {n:,} simulator events (random v4 ids) ...", flush=True)
    gen = TrafficGenerator(seed=seed)
    cfg = config(data_dir, {})
    t0 = time.perf_counter()
    left = n
    while left > 0:
        chunk = min(100_000, left)
        write_all(cfg, make_bodies(gen, chunk, BATCH))
        left -= chunk
    print(f"  filled in {time.perf_counter() - t0:.0f} s", flush=True)


def migrate_cached(data_dir: Path) -> None:
    """Bring a store cached by older code to this code's schema once, not once per round
    (a store grown by its own code is the fairer comparison: use a fresh --data-dir for that)."""
    conn = sqlite3.connect(data_dir / "edge.db")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    if version >= SCHEMA_VERSION:
        return
    print(f"  migrating the cached store from schema {version} to {SCHEMA_VERSION} ...", flush=True)
    t0 = time.perf_counter()
    EdgeStore(config(data_dir, {}), EdgeMetrics()).open().close()
    print(f"  migrated in {time.perf_counter() - t0:.1f} s", flush=True)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition("=")
    overrides: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        overrides[key] = value
    return name, overrides


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--prefill", type=int, default=1_200_000, help="events in the cached store (default 1.2M)"
    )
    ap.add_argument("--events", type=int, default=100_000, help="events per variant per round (default 100k)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ids", default="v4,v7", help="id kinds to run, comma-separated (default v4,v7)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SECTION.KEY=V[,...]",
        help="store settings to compare (default: shipped, and background_checkpoint off)",
    )
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/edgekite-bench-writer"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [
        ("shipped", {}),
        ("checkpoint in writer", {"store.background_checkpoint": "false"}),
    ]
    fill(args.data_dir, args.prefill, args.seed)
    base_events = stored(args.data_dir / "edge.db")
    gen = TrafficGenerator(seed=args.seed + 1000)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekite-bench-writer-") as tmp:
        for rnd in range(1, args.rounds + 1):
            for ids in args.ids.split(","):
                bodies = make_bodies(gen, args.events, BATCH, ids)
                for name, overrides in variants:
                    work = Path(tmp) / "data"
                    shutil.rmtree(work, ignore_errors=True)
                    shutil.copytree(args.data_dir, work)
                    # The copy leaves its pages dirty in the OS cache; without this the writer's
                    # first fsync (checkpoint, FULL commits) pays for writing back the whole copy.
                    os.sync()
                    r = write_all(config(work, overrides), bodies)
                    r.update(round=rnd, ids=ids, variant=name)
                    runs.append(r)
                    print(
                        f"  round {rnd} {ids} {name:24s} {r['events_per_s']:>9,.0f} ev/s  "
                        f"(checkpoint s: background {r['checkpoint_s_background']:.2f}, "
                        f"writer {r['checkpoint_s_writer']:.2f})",
                        flush=True,
                    )
    rows = []
    summary = []
    for ids in args.ids.split(","):
        base = None
        for name, _ in variants:
            rates = [r["events_per_s"] for r in runs if r["ids"] == ids and r["variant"] == name]
            med = median(rates)
            base = base if base is not None else med
            per = " / ".join(f"{x:,.0f}" for x in rates)
            ratio = med / base if med is not None and base else None
            rows.append([ids, name, f"{med:,.0f}" if med else "-", per, f"{ratio:.2f}" if ratio else "-"])
            summary.append({"ids": ids, "variant": name, "median_events_per_s": med, "rounds": rates})
    print(f"\nstore_writer: {base_events:,} events already stored, {args.events:,} per run, medians")
    print_table(["ids", "variant", "ev/s", "per round", f"vs {variants[0][0]}"], rows)
    path = write_results(
        "store_writer",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "stored_before": base_events,
            "machine": machine_info(),
            "runs": runs,
            "summary": summary,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

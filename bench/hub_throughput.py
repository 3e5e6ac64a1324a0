"""Hub ingest throughput and memory (issue 5): insert alone, end to end in-process and over MQTT, RSS.

    .venv/bin/python bench/hub_throughput.py                 # 100k events x 3 rounds per phase
    .venv/bin/python bench/hub_throughput.py --batches 10 --rounds 1   # smoke

(a) insert step alone: pre-built 2,000-row Arrow IPC streams -> chDB ``send_insert(...,
    "ArrowStream")`` with a dedup token each, as the processor inserts a batch that arrives
    alone; and (``insert-group``) the same batches 4 to an INSERT, as ``commit_many`` inserts
    them under load (4 was the median group in the pipelined phase, 2026-11-24). The ledger is
    not included.
(b) end to end per hub process, batch bytes -> decode -> validate -> insert -> ack:
    in-process (``BatchProcessor.process`` in a loop on one thread, no worker process; and
    pipelined: what the MQTT consumers do, ``submit_prepare`` to a decode worker process, then
    the ``GroupCommitter`` on the store thread, at most ``receive_maximum`` batches in flight),
    and through Mosquitto (``edgekite hub --mqtt-url``, batches published at QoS 1 by a separate
    publisher process, clock stops at the last ack).
(c) hub RSS idle and peak while ingesting over MQTT, split into anonymous and file-backed memory
    (/proc/PID/smaps_rollup).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
from _common import PYTHON, REPO, Mosquitto, fmt, median, print_table, stop_group, write_results

from edgekite.config import load_hub_config
from edgekite.simulate import TrafficGenerator
from edgekite.sync_protocol import BatchHeader, encode_batch

BATCH = 2000
GROUP = 4  # batches per INSERT in the insert-group phase


def build_batches(n: int, edge_id: str, seed: int) -> list[bytes]:
    gen = TrafficGenerator(seed, sites=4)
    now = int(time.time() * 1000)
    out = []
    for b in range(n):
        evs = []
        for _, env in gen.events(BATCH):
            env["received_at"] = now
            evs.append(orjson.dumps(env))
        h = BatchHeader(
            edge_id=edge_id,
            batch_id=f"bench-{seed}:{b * BATCH + 1}-{(b + 1) * BATCH}",
            first_seq=b * BATCH + 1,
            last_seq=(b + 1) * BATCH,
            created_at=now,
            count=BATCH,
        )
        out.append(encode_batch(h, evs))
    return out


def in_process(batches: list[bytes], workdir: Path, mode: str) -> float:
    import pyarrow as pa

    from edgekite.hub_metrics import HubMetrics
    from edgekite.hubstore import HubStore
    from edgekite.hubstore.arrow import EVENTS_SCHEMA
    from hub_ingest.consumer import GroupCommitter
    from hub_ingest.prepare import DecodePool, PrepareContext, PreparedBatch, prepare_payload
    from hub_ingest.processor import BatchProcessor

    cfg = load_hub_config(environ={}, overrides={"hub": {"data_dir": str(workdir / mode)}})
    store = HubStore(cfg)
    store.open()
    pool = None
    try:
        if mode in ("insert", "insert-python", "insert-group"):
            ctx = PrepareContext.from_config(cfg)
            streams = []
            for b in batches:
                prep = prepare_payload(ctx, None, b, None, None, "mqtt", 0)
                assert isinstance(prep, PreparedBatch) and prep.events_ipc is not None
                streams.append((prep.header.batch_id, prep.events_ipc))
            if (
                mode == "insert-python"
            ):  # HubStore.insert_arrow(tbl): since 19:45 also an IPC stream, built in this process
                tables = [(bid, pa.ipc.open_stream(ipc).read_all()) for bid, ipc in streams]
                t0 = time.perf_counter()
                for bid, tbl in tables:
                    store.insert_arrow("events", tbl, f"bench/{bid}")
                return len(tables) * BATCH / (time.perf_counter() - t0)
            if mode == "insert-group":  # what commit_many does with the batches waiting
                groups = [streams[i : i + GROUP] for i in range(0, len(streams), GROUP)]
                t0 = time.perf_counter()
                for g in groups:
                    tbl = pa.concat_tables([pa.ipc.open_stream(ipc).read_all() for _, ipc in g])
                    store.insert_arrow("events", tbl, "bench/" + "+".join(bid for bid, _ in g))
                return len(streams) * BATCH / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for bid, ipc in streams:
                store.insert_arrow_ipc("events", ipc, EVENTS_SCHEMA.names, f"bench/{bid}")
            return len(streams) * BATCH / (time.perf_counter() - t0)
        if mode == "sequential":
            p = BatchProcessor(cfg, store, HubMetrics())
            t0 = time.perf_counter()
            for b in batches:
                ack = p.process("bench-edge", b, None)
                assert ack.status == "ok" and ack.accepted == BATCH, ack
            return len(batches) * BATCH / (time.perf_counter() - t0)
        # pipelined, as the MQTT consumers run it: decode workers -> group commit on the store thread
        from edgekite.hub_node import HubNode

        workers = int(os.environ.get("EK_BENCH_WORKERS", HubNode.decode_workers()))
        pool = DecodePool(PrepareContext.from_config(cfg), workers)
        pool.start()
        p = BatchProcessor(cfg, store, HubMetrics(), decode_pool=pool)
        committer = GroupCommitter(p, store)
        window = threading.Semaphore(cfg.mqtt.receive_maximum)
        acks: queue.Queue[Any] = queue.Queue()

        def done(ack: Any) -> None:
            window.release()
            acks.put(ack)

        def prepared(f: Any) -> None:
            r = f.result()
            if isinstance(r, PreparedBatch):
                committer.put(r, done)
            else:
                done(r)

        t0 = time.perf_counter()
        for b in batches:
            window.acquire()
            p.submit_prepare("bench-edge", b, None).add_done_callback(prepared)
        for _ in batches:
            ack = acks.get(timeout=120)
            assert ack.status == "ok" and ack.accepted == BATCH, ack
        return len(batches) * BATCH / (time.perf_counter() - t0)
    finally:
        if pool is not None:
            pool.shutdown()
        store.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def smaps(pid: int) -> dict[str, int]:
    """The hub's memory in MB, and its decode workers' (child processes) as worker_Rss/_Anonymous."""
    out = _smaps(pid)
    kids = [_smaps(c) for c in _children(pid)]
    out["worker_Rss"] = sum(k.get("Rss", 0) for k in kids)
    out["worker_Anonymous"] = sum(k.get("Anonymous", 0) for k in kids)
    return out


def _smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) // 1024
    # smaps_rollup has no RssFile line: file-backed resident memory is what is not anonymous.
    out["RssFile"] = out.get("Rss", 0) - out.get("Anonymous", 0)
    return out


PUBLISHER = r"""
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()
parts = []
i = 0
while i < len(data):
    n = int.from_bytes(data[i:i+4], "big"); parts.append(data[i+4:i+4+n]); i += 4 + n
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", port); c.loop_start()
infos = [c.publish("ek/v1/hub/bench-edge/batch", p, qos=1) for p in parts]
for inf in infos: inf.wait_for_publish(120)
c.disconnect(); c.loop_stop()
"""


def over_mqtt(batches: list[bytes], workdir: Path, rnd: int) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    load = workdir / f"load-{rnd}.bin"
    load.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in batches))
    pub_script = workdir / "pub.py"
    pub_script.write_text(PUBLISHER)
    with Mosquitto(workdir) as broker:
        hub = subprocess.Popen(
            [str(PYTHON), "-m", "edgekite.cli", "hub", "--data-dir", str(workdir / f"mqtt-{rnd}"),
             "--mqtt-url", broker.url, "--http-port", "0", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, start_new_session=True,
        )  # fmt: skip
        try:
            assert hub.stdout is not None
            line = hub.stdout.readline()
            assert "ready" in line, line
            acks: queue.Queue[bytes] = queue.Queue()
            sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-acks", protocol=mqtt.MQTTv5)
            sub.on_message = lambda c, u, m: acks.put(bytes(m.payload))
            sub.connect("127.0.0.1", broker.port)
            sub.loop_start()
            sub.subscribe("ek/v1/hub/+/ack", qos=1)
            time.sleep(1.0)
            idle = smaps(hub.pid)
            peak: dict[str, int] = {}
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    s = smaps(hub.pid)
                    if s.get("Rss", 0) > peak.get("Rss", 0):
                        peak.update(s)
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            pub = subprocess.Popen([str(PYTHON), str(pub_script), str(broker.port), str(load)], cwd=REPO)
            got = 0
            while got < len(batches):
                ack = orjson.loads(acks.get(timeout=120))
                assert ack["status"] == "ok", ack
                got += 1
            rate = len(batches) * BATCH / (time.perf_counter() - t0)
            done.set()
            sampler.join()
            pub.wait(30)
            sub.disconnect()
            sub.loop_stop()
            return {"rate": rate, "idle": idle, "peak": peak}
        finally:
            stop_group(hub)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=50, help="2,000-event batches per round (default 50)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"building {args.batches} batches x {BATCH} simulator events ...", flush=True)
    batches = build_batches(args.batches, "bench-edge", seed=1)
    print(f"  {sum(map(len, batches)) / len(batches) / 1024:.0f} KiB compressed per batch")
    modes = ("insert-python", "insert", "insert-group", "sequential", "pipelined")
    results: dict[str, list[float]] = {m: [] for m in (*modes, "mqtt")}
    mem: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        # each in-process phase in a child process: chDB allows one data directory per process
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix="ek-hubbench-") as tmp:
                rate = _child(mode, args.batches, Path(tmp))
            results[mode].append(rate)
            print(f"round {rnd + 1}: {mode:<13} {rate:,.0f} events/s", flush=True)
        with tempfile.TemporaryDirectory(prefix="ek-hubbench-") as tmp:
            r = over_mqtt(batches, Path(tmp), rnd)
        results["mqtt"].append(r["rate"])
        mem.append(r)
        print(f"round {rnd + 1}: mqtt       {r['rate']:,.0f} events/s", flush=True)

    def mb(key: str, which: str) -> str:
        return fmt(median([m[which].get(key, 0) for m in mem]))

    print()
    print_table(
        ["phase", "events/s (median)", "rounds", "target"],
        [
            ["(a) insert alone, insert_arrow(tbl)", fmt(median(results["insert-python"])),
             " / ".join(fmt(x) for x in results["insert-python"]), "(baseline)"],
            ["(a) insert alone, Arrow IPC -> chDB", fmt(median(results["insert"])),
             " / ".join(fmt(x) for x in results["insert"]), ">= 100,000"],
            [f"(a) insert alone, {GROUP} batches per INSERT", fmt(median(results["insert-group"])),
             " / ".join(fmt(x) for x in results["insert-group"]), ">= 100,000"],
            ["(b) e2e in-process, 1 thread, no worker", fmt(median(results["sequential"])),
             " / ".join(fmt(x) for x in results["sequential"]), ">= 50,000"],
            ["(b) e2e in-process, workers + group commit", fmt(median(results["pipelined"])),
             " / ".join(fmt(x) for x in results["pipelined"]), ">= 50,000"],
            ["(b) e2e through Mosquitto", fmt(median(results["mqtt"])),
             " / ".join(fmt(x) for x in results["mqtt"]), ">= 50,000"],
        ],
    )  # fmt: skip
    print()
    print_table(
        ["hub RSS (MB, median)", "Rss", "Anonymous", "RssFile", "workers Rss", "workers Anonymous"],
        [
            [
                label,
                mb("Rss", w),
                mb("Anonymous", w),
                mb("RssFile", w),
                mb("worker_Rss", w),
                mb("worker_Anonymous", w),
            ]
            for label, w in (("idle (MQTT on, chDB open)", "idle"), ("peak while ingesting", "peak"))
        ],
    )
    path = write_results("hub_ingest", {"args": vars(args), "rates": results, "memory": mem})
    print(f"\nresults: {path}")


def _child(mode: str, n: int, tmp: Path) -> float:
    """Run one in-process phase in a fresh interpreter (one chDB per process, clean RSS)."""
    proc = subprocess.run(
        [str(PYTHON), str(Path(__file__)), "--child", mode, str(n), str(tmp)],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    return float(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, n, tmp = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        print(in_process(build_batches(n, "bench-edge", seed=1), tmp, mode))
    else:
        main()

"""Hub ingest throughput and memory (issue 5): insert alone, end to end in-process and over MQTT, RSS.

    .venv/bin/python bench/hub_throughput.py                 # 100k events x 3 rounds per phase
    .venv/bin/python bench/hub_throughput.py --batches 10 --rounds 1   # smoke

(a) insert step alone: pre-built 2,000-row Arrow tables -> chDB ``INSERT ... FROM Python(tbl)``
    with a dedup token each, as the processor does.
(b) end to end per hub process, batch bytes -> decode -> validate -> insert -> ack:
    in-process (``BatchProcessor.process`` in a loop; and pipelined: ``prepare`` on one thread,
    ``commit`` on the store thread, which is what the MQTT consumers do), and through Mosquitto
    (``edgekite hub --mqtt-url``, batches published at QoS 1 by a separate publisher process,
    clock stops at the last ack).
(c) hub RSS idle and peak while ingesting over MQTT, split into anonymous and file-backed memory
    (/proc/PID/smaps_rollup).
"""

from __future__ import annotations

import argparse
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
from _common import PYTHON, REPO, Mosquitto, fmt, median, print_table, stop_group, write_results

from edgekite.config import load_hub_config
from edgekite.simulate import TrafficGenerator
from edgekite.sync_protocol import BatchHeader, encode_batch

BATCH = 2000


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
    from edgekite.hub_metrics import HubMetrics
    from edgekite.hubstore import HubStore
    from edgekite.hubstore.arrow import EVENTS_SCHEMA, table_from_columns
    from edgekite.sync_protocol import decode_batch
    from hub_ingest.decode import decode_events
    from hub_ingest.processor import BatchProcessor

    cfg = load_hub_config(environ={}, overrides={"hub": {"data_dir": str(workdir / mode)}})
    store = HubStore(cfg)
    store.open()
    try:
        p = BatchProcessor(cfg, store, HubMetrics())
        if mode == "insert":
            tables = []
            for b in batches:
                h, evs = decode_batch(b)
                d = decode_events(h, evs, hub_received_at=0, limits=cfg.limits, dead_letter_max_bytes=0)
                tables.append((h.batch_id, table_from_columns(EVENTS_SCHEMA, d.columns)))
            t0 = time.perf_counter()
            for bid, tbl in tables:
                store.insert_arrow("events", tbl, f"bench/{bid}")
            return len(tables) * BATCH / (time.perf_counter() - t0)
        if mode == "sequential":
            t0 = time.perf_counter()
            for b in batches:
                ack = p.process("bench-edge", b, None)
                assert ack.status == "ok" and ack.accepted == BATCH, ack
            return len(batches) * BATCH / (time.perf_counter() - t0)
        # pipelined: prepare on one thread, commit on another (the consumers' arrangement)
        with ThreadPoolExecutor(1) as prep, ThreadPoolExecutor(1) as commit:
            t0 = time.perf_counter()
            futs = []
            for b in batches:
                pf = prep.submit(p.prepare, "bench-edge", b, None)
                futs.append(commit.submit(lambda pf=pf: p.commit(pf.result())))  # type: ignore[misc]
            for f in futs:
                ack = f.result()
                assert ack.status == "ok" and ack.accepted == BATCH, ack
            return len(batches) * BATCH / (time.perf_counter() - t0)
    finally:
        store.close()


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
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
    results: dict[str, list[float]] = {"insert": [], "sequential": [], "pipelined": [], "mqtt": []}
    mem: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        # each in-process phase in a child process: chDB allows one data directory per process
        for mode in ("insert", "sequential", "pipelined"):
            with tempfile.TemporaryDirectory(prefix="ek-hubbench-") as tmp:
                rate = _child(mode, args.batches, Path(tmp))
            results[mode].append(rate)
            print(f"round {rnd + 1}: {mode:<10} {rate:,.0f} events/s", flush=True)
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
            ["(a) insert alone, Arrow -> chDB", fmt(median(results["insert"])),
             " / ".join(fmt(x) for x in results["insert"]), ">= 100,000"],
            ["(b) e2e in-process, sequential", fmt(median(results["sequential"])),
             " / ".join(fmt(x) for x in results["sequential"]), ">= 50,000"],
            ["(b) e2e in-process, pipelined", fmt(median(results["pipelined"])),
             " / ".join(fmt(x) for x in results["pipelined"]), ">= 50,000"],
            ["(b) e2e through Mosquitto", fmt(median(results["mqtt"])),
             " / ".join(fmt(x) for x in results["mqtt"]), ">= 50,000"],
        ],
    )  # fmt: skip
    print()
    print_table(
        ["hub RSS (MB, median)", "Rss", "Anonymous", "RssFile"],
        [
            ["idle (MQTT on, chDB open)", mb("Rss", "idle"), mb("Anonymous", "idle"), mb("RssFile", "idle")],
            ["peak while ingesting", mb("Rss", "peak"), mb("Anonymous", "peak"), mb("RssFile", "peak")],
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

#!/usr/bin/env python3
"""The bridge's receive path alone: stock paho vs ``edgekite.paho_client.ReceiverClient``.

Per round and variant: a fresh Mosquitto; the bridge's session is created, left, and the load
(single-envelope messages of the simulator's mix, 8 ``mosquitto_pub -l -q 1`` publishers) is
queued for it; then a ``MqttReceiver`` reconnects and drains the backlog, PUBACKing each message
itself (manual acks, as the bridge does), optionally decoding it with the bridge's router.
Reports messages/s and CPU µs per message of the receiving process, medians of --rounds, and
the ratio of each variant to stock paho in the same round.

  stock     paho's own Client: ``on_message`` with an MQTTMessage, one PUBACK per ``ack()``
  fast      ReceiverClient: buffered reads, ``fast_on_publish``, one PUBACK per ``ack()``
  batched   ReceiverClient with PUBACKs queued 100 at a time through ``ack_many``, as the
            bridge's child sends them for a committed batch
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt
from _common import (
    Mosquitto,
    fmt,
    generate_load,
    machine_info,
    median,
    print_table,
    publish,
    tempdir,
    write_results,
)

import edge_bridge.receiver as receiver_mod
from edge_bridge.inbound import InboundRouter
from edgekite.config import EdgeConfig
from edgekite.paho_client import ReceiverClient

VARIANTS = ("stock", "fast", "batched")
ACK_BATCH = 100


def drain(mq: Mosquitto, load: Any, variant: str, n: int, decode: bool) -> dict[str, float]:
    cfg = EdgeConfig.model_validate(
        {"mqtt": {"url": mq.url, "client_id": "paho-receive-bench", "receive_maximum": 2000}}
    )
    router = InboundRouter(cfg)
    ready = threading.Event()

    def on_status(connected: bool, error: str | None, new: bool) -> None:
        if connected:
            ready.set()

    # Create the persistent session, leave, and queue the whole load for it.
    receiver_mod.ReceiverClient = ReceiverClient  # type: ignore[misc]
    rx = receiver_mod.MqttReceiver(
        cfg, router.filters, url=mq.url, on_message=lambda *a: None, on_status=on_status
    )
    rx.stop_reading()
    rx.start()
    if not ready.wait(10):
        raise SystemExit("the receiver did not connect")
    rx.disconnect()
    publish(mq.port, load, 1000, f"paho-{variant}").wait(300)

    got = 0
    pending: list[int] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, dup: bool, mid: int, qos: int, generation: int) -> None:
        nonlocal got
        if decode:
            router.decode(topic, payload, int(time.time() * 1000))
        got += 1
        if variant == "batched":
            pending.append(mid)
            if len(pending) >= ACK_BATCH or got >= n:
                rx.ack_many(generation, pending[:])
                pending.clear()
        else:
            rx.ack(generation, mid, qos)
        if got >= n:
            done.set()

    # "stock": the receiver builds paho's own Client, so the fast path is never installed.
    receiver_mod.ReceiverClient = mqtt.Client if variant == "stock" else ReceiverClient  # type: ignore[misc]
    ready.clear()
    rx = receiver_mod.MqttReceiver(
        cfg, router.filters, url=mq.url, on_message=on_message, on_status=on_status
    )
    t0, c0 = time.monotonic(), time.process_time()
    rx.start()
    finished = done.wait(600)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    rx.disconnect()
    receiver_mod.ReceiverClient = ReceiverClient  # type: ignore[misc]
    if not finished:
        raise SystemExit(f"{variant}: only {got}/{n} messages arrived")
    return {"msgs_per_s": got / wall, "cpu_us_per_msg": cpu / got * 1e6, "seconds": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="messages per drain (default: %(default)s)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds; medians are reported (default: %(default)s)"
    )
    ap.add_argument(
        "--decode", action="store_true", help="also validate each message with the bridge's router"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rounds: list[dict[str, dict[str, float]]] = []
    t_all = time.monotonic()
    with tempdir("ekbench-paho-") as work:
        load = generate_load(work, args.messages, 1, 8, args.seed)
        for r in range(args.rounds):
            this: dict[str, dict[str, float]] = {}
            for variant in VARIANTS:
                with Mosquitto(work) as mq:
                    this[variant] = drain(mq, load, variant, args.messages, args.decode)
                print(
                    f"round {r + 1} {variant:8s} {fmt(this[variant]['msgs_per_s'])} msg/s, "
                    f"{this[variant]['cpu_us_per_msg']:.1f} µs CPU/msg",
                    flush=True,
                )
            rounds.append(this)

    rows = []
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        rate = median([rd[variant]["msgs_per_s"] for rd in rounds])
        cpu = median([rd[variant]["cpu_us_per_msg"] for rd in rounds])
        ratio = median([rd[variant]["msgs_per_s"] / rd["stock"]["msgs_per_s"] for rd in rounds])
        summary[variant] = {"msgs_per_s": rate, "cpu_us_per_msg": cpu, "rate_vs_stock": ratio}
        rows.append([variant, fmt(rate), fmt(cpu, ".1f"), fmt(ratio, ".2f")])
    print(
        f"\npaho_receive: {args.messages:,} queued messages, decode={args.decode}, medians of {args.rounds}"
    )
    print_table(["variant", "msg/s", "CPU µs/msg", "rate vs stock"], rows)
    path = write_results(
        "paho_receive",
        {
            "bench": "paho_receive",
            "machine": machine_info(),
            "config": vars(args),
            "rounds": rounds,
            "summary": summary,
            "total_s": time.monotonic() - t_all,
        },
    )
    print(f"\nwrote {path} (total {time.monotonic() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Enrichment events/s per consumer (issue 6): ``Enricher.enrich_many`` over stored rows, one core.

    .venv/bin/python bench/enrich_throughput.py               # 100k web + 100k mixed rows x 3 rounds
    .venv/bin/python bench/enrich_throughput.py --events 20000 --rounds 1   # smoke

Rows are the simulator's events (4 sites, seed 1) shaped as the hub's ``events`` table stores them
(``data`` and ``source_metadata`` as JSON text), enriched in 2,000-row chunks as a consumer would
after a ``SELECT``: UA parsing, bot detection, referrer/channel/UTM, geo on a generated City
database covering the simulator's documentation ranges, and salted visitor ids. Each round uses a
fresh ``Enricher`` (cold caches: the first chunk pays uap-core's ~0.5 ms per new user agent), so a
round is what a consumer sees from start. Reading from and writing to ClickHouse are *not* timed:
this is the pure CPU cost the consumer adds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
from _common import code_fingerprint, fmt, machine_info, median, print_table, write_results
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from edgekite.simulate import TrafficGenerator
from edgekite.visitor import DailySalts
from hub_enrich.bots import BotDetector
from hub_enrich.enrich import Enricher
from hub_enrich.geo import GeoLookup
from hub_enrich.ua import UaParser

CHUNK = 2000
TARGET = 50_000


def stored_rows(events: int, seed: int, now_ms: int, web_only: bool) -> list[dict[str, Any]]:
    gen = TrafficGenerator(seed, sites=4, now_ms=lambda: now_ms)
    rows: list[dict[str, Any]] = []
    while len(rows) < events:
        source_id, env = gen.next_event()
        event = env["event"]
        if web_only and event["category"] != "web":
            continue
        rows.append(
            {
                "event_id": env["event_id"],
                "edge_id": "edge-1",
                "observed_at": env["observed_at"],
                "received_at": env["observed_at"] + 50,
                "hub_received_at": env["observed_at"] + 900,
                "source_id": source_id,
                "category": event["category"],
                "type": event["type"],
                "data": orjson.dumps(event["data"]).decode(),
                "source_metadata": orjson.dumps(env["source"].get("metadata") or {}).decode(),
            }
        )
    return rows


def geo_db(path: Path) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Bench-City")
    for net, cc, sub, city in (
        ("192.0.2.0/24", "DE", "BE", "Berlin"),
        ("198.51.100.0/24", "US", "NY", "New York"),
        ("203.0.113.0/24", "GB", "ENG", "London"),
        ("2001:db8::/32", "NL", "NH", "Amsterdam"),
    ):
        rec = {
            "country": {"iso_code": cc},
            "subdivisions": [{"iso_code": sub}],
            "city": {"names": {"en": city}},
        }
        writer.insert_network(IPSet([net]), rec)
    writer.to_db_file(str(path))
    return path


def run(rows: list[dict[str, Any]], db: Path, now_ms: int) -> float:
    enricher = Enricher(
        UaParser(),
        BotDetector(),
        GeoLookup(db),
        site_hosts={f"site-{n}": [f"site{n}.example.com"] for n in range(1, 5)},
        salts=DailySalts().rotated(now_ms),
    )
    start = time.perf_counter()
    for i in range(0, len(rows), CHUNK):
        enricher.enrich_many(rows[i : i + CHUNK])
    return len(rows) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="rows per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    now_ms = int(time.time() * 1000)
    phases = {
        "web mix (page views)": stored_rows(args.events, args.seed, now_ms, web_only=True),
        "full mix (web+iot+ops+security)": stored_rows(args.events, args.seed, now_ms, web_only=False),
    }
    results: dict[str, Any] = {
        "events": args.events,
        "rounds": args.rounds,
        "chunk": CHUNK,
        "machine": machine_info(),
        "code": code_fingerprint(),
        "phases": {},
    }
    table = []
    with tempfile.TemporaryDirectory(prefix="ek-enrich-") as tmp:
        db = geo_db(Path(tmp) / "city.mmdb")
        for name, rows in phases.items():
            rates = [run(rows, db, now_ms) for _ in range(args.rounds)]
            med = median(rates)
            results["phases"][name] = {"rates": rates, "median": med}
            table.append([name, fmt(med), " / ".join(fmt(r) for r in rates), f"≥ {TARGET:,}"])
    print_table(["phase", "median events/s", "rounds", "target"], table)
    print(f"results: {write_results('enrich_throughput', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

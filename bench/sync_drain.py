#!/usr/bin/env python3
"""Backlog drain edge -> hub (issue 5): events/s, the edge's RSS while draining, where the time goes.

A store of N realistic events (the simulator's mix, written through EdgeStore by
``edge_panels.fill``: 1 day of traffic, 18 sources) is built once and kept under --cache-dir;
every run starts from a pristine copy of that edge.db (the outbox state lives in it), so every
run drains exactly the same N-event backlog. The fill is not timed.

Parts (``--parts``, comma list; default all):

  product  the product's figure: a throwaway Mosquitto as hub broker, ``edgekite hub --mqtt-url``
           (chDB, fresh data dir, started and ready first), then ``edgekite edge --hub-mqtt-url`` on
           the copy. The clock starts when the edge is spawned and stops when the edge's
           /api/health says ``sync.backlog == 0`` *and* the hub's GET /api/fleet shows N events for
           that edge (asserted: exactly N). Also recorded: when the outbox watermark
           (``counters.sync_synced_to`` in edge.db, read-only) reached the last row, i.e. when the
           last ack was committed; health's backlog gauge is refreshed at most once a second.
  http     the same drain over the HTTP transport (``--hub-url``; hub without MQTT).
  acker    component measurement, NOT the product's figure: the edge's send capacity against a
           trivial acker process (paho, subscribes to ek/v1/hub/+/batch, ``decode_batch``, answers
           an "ok" Ack on ek/v1/hub/<edge>/ack at once), no hub at all.
  sweep    sync settings on the acker path with --sweep-events: batch_max_events 2000/5000 (and
           5000 with batch_max_bytes raised, since 1 MiB caps a batch at ~2,000 events), max_in_flight
           4/8, compress_level 1/3; rounds interleaved, ratio to the same round's default config.
  profile  one extra product drain and one acker drain with py-spy attached to the edge (not in
           the medians): samples per thread and per step (reading rows, envelope_json, zstd, paho,
           outbox writes, backlog gauge, ...).

The edge's RSS is sampled every --sample-interval (0.1 s) with psutil over the whole drain; peak
and median are reported. The edge's site broker is its own throwaway Mosquitto (idle).

Run from the repository root::

    .venv/bin/python bench/sync_drain.py                          # everything (~25-35 min)
    .venv/bin/python bench/sync_drain.py --parts product --rounds 3
    .venv/bin/python bench/sync_drain.py --parts acker,sweep --sweep-events 200000
    .venv/bin/python bench/sync_drain.py --events 20000 --sweep-events 20000 --rounds 1   # smoke

Targets: >= 20,000 events/s drained edge -> hub, edge RSS < 100 MB while draining.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    EDGEKITE,
    PYTHON,
    REPO,
    Edge,
    Mosquitto,
    code_fingerprint,
    exit_on_sigterm,
    fmt,
    machine_info,
    median,
    print_table,
    start_py_spy,
    stop_group,
    stop_py_spy,
    tempdir,
    write_results,
)

TARGET_EPS = 20_000
TARGET_RSS_MB = 100.0
MB = 2**20
DEFAULT_CACHE = Path("/tmp/edgekite-bench-drain")
FILL = {"days": 1.0, "seed": 4, "sites": 2, "batch": 100}  # edge_panels.fill parameters
# The fill is 1 day of traffic; however old the cached copy gets, retention must not delete any of it.
RETENTION_ENV = {
    "EDGEKITE_RETENTION__SHORT_DAYS": "400",
    "EDGEKITE_RETENTION__STANDARD_DAYS": "400",
    "EDGEKITE_RETENTION__LONG_DAYS": "400",
}
SWEEP = [
    ("default (2000 ev, 1 MiB, 4 in flight, zstd 3)", {}),
    ("batch_max_events 5000", {"EDGEKITE_SYNC__BATCH_MAX_EVENTS": "5000"}),
    (
        "batch_max_events 5000 + batch_max_bytes 4 MiB",
        {"EDGEKITE_SYNC__BATCH_MAX_EVENTS": "5000", "EDGEKITE_SYNC__BATCH_MAX_BYTES": str(4 * MB)},
    ),
    ("max_in_flight 8", {"EDGEKITE_SYNC__MAX_IN_FLIGHT": "8"}),
    ("compress_level 1", {"EDGEKITE_SYNC__COMPRESS_LEVEL": "1"}),
    (
        "5000 ev + 4 MiB + 8 in flight + zstd 1",
        {
            "EDGEKITE_SYNC__BATCH_MAX_EVENTS": "5000",
            "EDGEKITE_SYNC__BATCH_MAX_BYTES": str(4 * MB),
            "EDGEKITE_SYNC__MAX_IN_FLIGHT": "8",
            "EDGEKITE_SYNC__COMPRESS_LEVEL": "1",
        },
    ),
]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def cpu_secs(pid: int | None) -> float | None:
    """User + system CPU of a process and its children that were waited for (psutil)."""
    import psutil

    if pid is None:
        return None
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return None


# -- the store to drain --------------------------------------------------------------------
def store_facts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (n, top) = conn.execute("SELECT count(*), max(rowid) FROM events").fetchone()
        counters = dict(conn.execute("SELECT name, value FROM counters WHERE name LIKE 'sync_%'").fetchall())
        (pending,) = conn.execute("SELECT count(*) FROM sync_batches").fetchone()
    finally:
        conn.close()
    return {"events": int(n), "max_rowid": int(top or 0), "sync_batches": int(pending), **counters}


def ensure_fill(cache_dir: Path, n: int, refill: bool) -> tuple[Path, dict[str, Any]]:
    """The cached N-event store (filled once with edge_panels.fill, never touched afterwards)."""
    from edge_panels import FILL_INFO, fill, stored_events

    src = cache_dir / f"fill-{n}"
    db = src / "edge.db"
    if refill and src.exists():
        shutil.rmtree(src)
    if stored_events(db) != n:
        if src.exists():
            shutil.rmtree(src)
        src.mkdir(parents=True)
        print(f"[{utc_now()}] filling {src} with {n:,} events (once; reused by later runs)", flush=True)
        fill(src, n, producer_process=True, **FILL)  # type: ignore[arg-type]
    facts = store_facts(db)
    if facts["events"] != n or facts["sync_batches"] or facts.get("sync_synced_to", 0):
        raise RuntimeError(f"{db} is not a pristine {n:,}-event store: {facts}; use --refill")
    wal = src / "edge.db-wal"
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{wal} is not empty: the cached store was not closed cleanly; use --refill")
    info = json.loads((src / FILL_INFO).read_text()) if (src / FILL_INFO).exists() else {}
    return src, {"path": str(src), "facts": facts, "fill_info": info}


def pristine_copy(src: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    shutil.copyfile(src / "edge.db", data_dir / "edge.db")


# -- the hub and the acker as children ------------------------------------------------------
_HUB_READY = re.compile(r"ready in (?P<secs>[0-9.]+)s: HTTP (?P<http>\S+)")


class Hub:
    """``edgekite hub`` (chDB in a fresh data dir) in its own process group."""

    def __init__(self, data_dir: Path, mqtt_url: str | None) -> None:
        self.data_dir = data_dir
        self.mqtt_url = mqtt_url
        self.proc: subprocess.Popen[str] | None = None
        self.http_url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.ready_s = 0.0

    def __enter__(self) -> Hub:
        cmd = [str(EDGEKITE), "hub", "--data-dir", str(self.data_dir), "--http-port", "0"]
        if self.mqtt_url:
            cmd += ["--mqtt-url", self.mqtt_url]
        log = self.log_path.open("w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
            cwd=str(self.data_dir.parent),
        )
        log.close()
        ready = threading.Event()

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                m = _HUB_READY.search(line)
                if m and not ready.is_set():
                    self.http_url = m.group("http")
                    ready.set()

        threading.Thread(target=reader, daemon=True, name="hub-stdout").start()
        deadline = time.monotonic() + 120
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_group(self.proc)
                raise RuntimeError(f"the hub did not get ready; log tail:\n{self.log_tail()}")
        self.ready_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        stop_group(self.proc, signal.SIGTERM, 60)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def fleet_events(self, edge_id: str) -> int:
        body = http_json(self.http_url + "/api/fleet")
        return next((int(e["events"]) for e in body["edges"] if e["edge_id"] == edge_id), 0)


class Acker:
    """This script's ``_acker`` mode as a child process: acks every batch "ok" at once."""

    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        self.out = out
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Acker:
        self.proc = subprocess.Popen(
            [
                str(PYTHON),
                str(Path(__file__).resolve()),
                "_acker",
                "--port",
                str(self.port),
                "--out",
                str(self.out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "acker subscribed" once SUBACK arrived
        if "subscribed" not in line:
            stop_group(self.proc)
            raise RuntimeError(f"the acker did not subscribe: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_group(self.proc, signal.SIGTERM, 10)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stats(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.out.read_text()))
        return {}


def acker_main(port: int, out: Path) -> int:
    """The trivial hub: decode_batch for the header, answer "ok" with the count, nothing stored."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekite import topics
    from edgekite.sync_protocol import Ack, decode_batch

    stats = {"batches": 0, "events": 0, "bytes": 0, "errors": 0, "first": None, "last": None}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-acker-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(100)

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        c.subscribe("ek/v1/hub/+/batch", qos=1)

    def on_subscribe(*_: Any) -> None:
        print("acker subscribed", flush=True)

    def on_message(c: Any, _u: Any, msg: Any) -> None:
        try:
            header, _events = decode_batch(msg.payload)
        except ValueError:
            stats["errors"] += 1
            return
        now = time.time()
        stats["first"] = stats["first"] or now
        stats["last"] = now
        if header.count == 0:  # a heartbeat: the hub answers those too
            pass
        stats["batches"] += 1
        stats["events"] += header.count
        stats["bytes"] += len(msg.payload)
        ack = Ack(edge_id=header.edge_id, batch_id=header.batch_id, status="ok", accepted=header.count)
        c.publish(topics.hub_ack_topic(header.edge_id), ack.to_bytes(), qos=1)

    def on_term(signum: int, frame: object) -> None:
        out.write_text(json.dumps(stats))
        client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, on_term)
    client.connect("127.0.0.1", port)
    client.loop_forever()
    out.write_text(json.dumps(stats))
    return 0


# -- one drain ----------------------------------------------------------------------------
def drain(
    work: Path,
    src: Path,
    n: int,
    transport: str,
    tag: str,
    args: argparse.Namespace,
    extra_env: dict[str, str] | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """One drain of a pristine copy of ``src``; transport: "mqtt" (hub), "http" (hub), "acker"."""
    import psutil

    run_dir = work / tag
    run_dir.mkdir()
    data_dir = run_dir / "edge"
    pristine_copy(src, data_dir)
    edge_id = f"drain-{tag}"[:60].replace("_", "-")
    env = {**RETENTION_ENV, **args.edge_env_dict, **(extra_env or {})}
    result: dict[str, Any] = {
        "tag": tag,
        "transport": transport,
        "events": n,
        "edge_env": {k: v for k, v in env.items() if k.startswith("EDGEKITE_SYNC")},
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
        "code_hub_at_start": hub_fingerprint()["sha256"],
    }
    with contextlib.ExitStack() as stack:
        site = stack.enter_context(Mosquitto(run_dir))  # the edge's own (idle) site broker
        hub_broker = stack.enter_context(Mosquitto(run_dir)) if transport in ("mqtt", "acker") else None
        hub: Hub | None = None
        acker: Acker | None = None
        if transport == "mqtt":
            assert hub_broker is not None
            hub = stack.enter_context(Hub(run_dir / "hub", hub_broker.url))
            link = ["--hub-mqtt-url", hub_broker.url]
        elif transport == "http":
            hub = stack.enter_context(Hub(run_dir / "hub", None))
            link = ["--hub-url", hub.http_url]
        else:
            assert hub_broker is not None
            acker = stack.enter_context(Acker(hub_broker.port, run_dir / "acker.json"))
            link = ["--hub-mqtt-url", hub_broker.url]
        if hub is not None:
            result["hub_ready_s"] = round(hub.ready_s, 2)
        edge = Edge(data_dir, mqtt_url=site.url, edge_id=edge_id, extra_args=link, env=env)
        stack.callback(edge.stop)
        others = {
            "hub": hub.pid if hub else None,
            "hub_broker": hub_broker.pid if hub_broker else None,
            "acker": acker.pid if acker else None,
        }
        cpu0 = {k: cpu_secs(p) for k, p in others.items()}
        t0 = time.monotonic()
        edge.start()
        t_ready = time.monotonic() - t0
        cpu0["edge"] = 0.0  # a fresh process: all of its CPU time is this run's
        spy = None
        if profile:
            spy = start_py_spy(edge.pid, run_dir / "py-spy.txt", profile == "gil")
        proc = psutil.Process(edge.pid)
        watermark = sqlite3.connect(f"file:{data_dir / 'edge.db'}?mode=ro", uri=True, timeout=5)
        stack.callback(watermark.close)
        rss: list[float] = []
        uss_peak = 0.0
        next_uss = next_health = next_print = time.monotonic()
        t_synced = t_backlog0 = t_hub = None
        synced = 0
        progress_at, progress_val = time.monotonic(), -1
        health: dict[str, Any] = {}
        hub_events = None
        errors: set[str] = set()
        try:
            while True:
                now = time.monotonic()
                el = now - t0
                with contextlib.suppress(psutil.Error):
                    rss.append(proc.memory_info().rss / MB)
                if now >= next_uss:
                    next_uss = now + 1.0
                    with contextlib.suppress(psutil.Error):
                        uss_peak = max(uss_peak, proc.memory_full_info().uss / MB)
                with contextlib.suppress(sqlite3.Error):
                    row = watermark.execute(
                        "SELECT value FROM counters WHERE name = 'sync_synced_to'"
                    ).fetchone()
                    synced = int(row[0]) if row else 0
                if synced != progress_val:
                    progress_at, progress_val = now, synced
                elif now - progress_at > args.stall_timeout:
                    raise RuntimeError(
                        f"no sync progress for {args.stall_timeout:g} s at {synced:,}/{n:,}; edge sync status "
                        f"{health}; hub log tail:\n{hub.log_tail() if hub else '-'}"
                    )
                if t_synced is None and synced >= n:
                    t_synced = el
                # health every second while draining, every sample once the watermark is through
                if t_synced is not None or now >= next_health:
                    next_health = now + 1.0
                    with contextlib.suppress(OSError, ValueError):
                        health = http_json(edge.http_url + "/api/health")["sync"]  # type: ignore[operator]
                        for k in ("last_error", "transport_error"):
                            if health.get(k):
                                errors.add(str(health[k]))
                    if t_synced is not None and t_backlog0 is None and health.get("backlog") == 0:
                        t_backlog0 = el
                if t_backlog0 is not None and t_hub is None:
                    if hub is None:
                        t_hub = el
                    else:
                        with contextlib.suppress(OSError, ValueError, KeyError):
                            hub_events = hub.fleet_events(edge_id)
                            if hub_events >= n:
                                t_hub = el
                if t_hub is not None:
                    break
                if now >= next_print:
                    next_print = now + 10
                    print(
                        f"    [{utc_now()}] {el:6.1f} s: synced {synced:>9,}/{n:,} "
                        f"({synced / max(el, 1e-9):,.0f} ev/s), edge RSS {rss[-1] if rss else 0:.0f} MB, "
                        f"in flight {health.get('in_flight')}",
                        flush=True,
                    )
                if el > args.timeout:
                    result["timed_out"] = True
                    break
                if edge.proc is not None and edge.proc.poll() is not None:
                    raise RuntimeError(f"the edge exited ({edge.proc.returncode}):\n{edge.stderr_tail()}")
                time.sleep(args.sample_interval)
            wall = time.monotonic() - t0
            cpu = {k: cpu_secs(p) for k, p in {**others, "edge": edge.pid}.items()}
            stop_py_spy(spy)
            spy = None
            with contextlib.suppress(Exception):
                m = edge.metrics()
                result["edge_metrics"] = {
                    k: v
                    for k, v in m.items()
                    if k.startswith("edgekite_sync_") and not k.endswith("_created")
                }
        finally:
            stop_py_spy(spy)
        if hub is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                hub_events = hub.fleet_events(edge_id)
        done = t_hub if t_hub is not None else wall
        result.update(
            edge_ready_s=round(t_ready, 2),
            seconds=round(done, 2),
            events_per_s=n / done,
            synced_at_s=None if t_synced is None else round(t_synced, 2),
            events_per_s_watermark=None if not t_synced else n / t_synced,
            backlog0_at_s=None if t_backlog0 is None else round(t_backlog0, 2),
            hub_fleet_events=hub_events,
            rss_peak_mb=max(rss) if rss else None,
            rss_median_mb=median(rss),
            uss_peak_mb=uss_peak,
            rss_samples=len(rss),
            rss_series_mb=[round(r, 1) for r in rss[:: max(1, len(rss) // 200)]],
            cpu_secs={
                k: None if v is None or cpu0.get(k) is None else round(v - cpu0[k], 2)  # type: ignore[operator]
                for k, v in cpu.items()
            },
            errors_seen=sorted(errors),
            loadavg_at_end=os.getloadavg(),
            final_sync_status=health,
            ended_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        result["cores"] = {
            k: None if v is None else round(v / done, 2) for k, v in result["cpu_secs"].items()
        }
        em = result.get("edge_metrics", {})
        ok = sum(
            v for k, v in em.items() if k.startswith("edgekite_sync_batches_total") and 'result="ok"' in k
        )
        if ok:
            result["events_per_batch"] = round(n / ok)
        if acker is not None:
            edge.stop()
            stop_group(acker.proc, signal.SIGTERM, 10)
            result["acker"] = acker.stats()
        if profile and (run_dir / "py-spy.txt").exists():
            result["profile"] = summarize_profile(run_dir / "py-spy.txt")
            if args.py_spy_dir:
                Path(args.py_spy_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(run_dir / "py-spy.txt", Path(args.py_spy_dir) / f"py-spy-{tag}.txt")
    if hub is not None and not result.get("timed_out"):
        assert hub_events == n, f"hub fleet shows {hub_events} events for {edge_id}, expected exactly {n}"
    if args.verify_hub and hub is not None:
        result["hub_storage"] = verify_hub_storage(run_dir / "hub", edge_id)
        assert result["hub_storage"]["rows"] == n == result["hub_storage"]["distinct"], result["hub_storage"]
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def verify_hub_storage(hub_dir: Path, edge_id: str) -> dict[str, Any]:
    """count() and uniqExact(event_id) of the edge's rows in the stopped hub's chDB (own process)."""
    code = (
        "import json, sys\n"
        "from edgekite.config import load_hub_config\n"
        "from edgekite.hubstore import HubStore\n"
        "s = HubStore(load_hub_config(environ={}, overrides={'hub': {'data_dir': sys.argv[1]}}))\n"
        "s.open()\n"
        "rows, distinct = s.query_rows(f\"SELECT count(), uniqExact(event_id) FROM {s.table('events')} "
        "WHERE edge_id = {{e:String}}\", {'e': sys.argv[2]})[0]\n"
        "s.close()\n"
        "print(json.dumps({'rows': int(rows), 'distinct': int(distinct)}))\n"
    )
    out = subprocess.run(
        [str(PYTHON), "-c", code, str(hub_dir), edge_id],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- profile ------------------------------------------------------------------------------
# (category, thread hint, frame substrings): the innermost frame matching a rule names the step.
PROFILE_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("payload columns: zstd-dict decode (Reader.decode)", ("decode (/", "store/reads.py", "edgekite/codec.py")),
    ("read rows: SELECT ... fetchall (outbox.read_rows)", ("read_rows (",)),
    ("envelope_json (dict build + orjson.dumps)", ("envelope_json (",)),
    ("form_batch loop", ("form_batch (", "rebuild_batch (")),
    ("batch probe: count(*) LIMIT n + oldest row (_form.probe)", ("probe (",)),
    ("backlog gauge: count(*) over the backlog (_refresh_gauges)", ("measure (", "_refresh_gauges (")),
    ("zstd compress + document assembly (encode_batch)", ("encode_batch (",)),
    ("paho publish, caller side (transport.send)", ("send (/", "publish (")),
    ("ack parse (Ack.model_validate_json)", ("_on_message (",)),
    ("outbox SQLite writes (record_batch / complete_batch)", ("record_batch (", "complete_batch (")),
    (
        "writer thread: transaction, commit, WAL control",
        ("_commit_with_retry (", "_control_wal (", "_commit ("),
    ),
    ("writer thread: retention / size cap", ("_maintenance_step (",)),
    ("paho network thread (socket I/O, packets)", ("_network (",)),
    ("aiohttp (health/metrics polled by the bench, HTTP transport)", ("aiohttp/",)),
    ("sync worker loop, other", ("sync_worker.py",)),
]


_WAITING = ("select (", "Condition.wait (", "_worker (/", "Event.wait (", "_write_to_self (")


def _category(frames: list[str]) -> str:
    if frames and any(s in frames[-1] for s in _WAITING):
        return "waiting (selector, condition, executor queue: idle)"
    for frame in reversed(frames):  # innermost first
        for name, needles in PROFILE_RULES:
            if any(s in frame for s in needles):
                return name
    return "other"


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> shares per thread, per step, top self lines and functions."""
    threads: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        k = int(cnt)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith(("thread ", "process ")):
            # "process 123:"...; "thread (0x..)" or 'thread (0x7f..): "name"'
            while frames and frames[0].startswith(("thread ", "process ")):
                head = frames.pop(0)
                if head.startswith("thread "):
                    m = re.search(r'"([^"]+)"', head)
                    thread = m.group(1) if m else head
        thread = re.sub(r"^thread \(\w+\): ", "", thread)
        total += k
        threads[thread] += k
        cats[_category(frames)] += k
        if frames:
            self_c[re.sub(r"\(/.*?/(?=[^/]+/[^/]+:)", "(", frames[-1])] += k
        for f in {re.sub(r":\d+\)$", ")", x) for x in frames}:
            incl[re.sub(r"\(/.*?/(?=[^/]+/[^/]+\))", "(", f)] += k

    def share(c: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(f, round(100 * v / total, 1)) for f, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "threads": share(threads),
        "categories": share(cats, 100),
        "self_top": share(self_c),
        "inclusive_top": share(incl),
    }


# -- reporting ------------------------------------------------------------------------------
def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(k: str) -> list[Any]:
        return [r.get(k) for r in runs]

    return {
        "runs": runs,
        "events_per_s_median": median(col("events_per_s")),
        "events_per_s_watermark_median": median(col("events_per_s_watermark")),
        "seconds_median": median(col("seconds")),
        "rss_peak_mb_median": median(col("rss_peak_mb")),
        "rss_median_mb_median": median(col("rss_median_mb")),
        "uss_peak_mb_median": median(col("uss_peak_mb")),
        "edge_cores_median": median([r["cores"].get("edge") for r in runs]),
        "hub_cores_median": median([r["cores"].get("hub") for r in runs]),
        "events_per_batch_median": median(col("events_per_batch")),
    }


def per_run(runs: list[dict[str, Any]], key: str, spec: str = ",.0f") -> str:
    return " / ".join(fmt(r.get(key), spec) for r in runs)


def print_run(r: dict[str, Any]) -> None:
    c = r["cores"]
    print(
        f"    [{utc_now()}] {r['events']:,} events in {r['seconds']:.1f} s = {r['events_per_s']:,.0f} ev/s "
        f"(watermark at {fmt(r.get('synced_at_s'), '.1f')} s = {fmt(r.get('events_per_s_watermark'))} ev/s); "
        f"edge RSS peak {r['rss_peak_mb']:.1f} / median {r['rss_median_mb']:.1f} MB; "
        f"cores edge {fmt(c.get('edge'), '.2f')} hub {fmt(c.get('hub'), '.2f')} "
        f"acker {fmt(c.get('acker'), '.2f')}; {fmt(r.get('events_per_batch'))} ev/batch"
        + (f"; hub fleet {r['hub_fleet_events']:,}" if r.get("hub_fleet_events") is not None else "")
        + (" TIMED OUT" if r.get("timed_out") else "")
        + (f"; errors: {r['errors_seen']}" if r.get("errors_seen") else ""),
        flush=True,
    )


def print_profile(name: str, prof: dict[str, Any]) -> None:
    print(f"\npy-spy of the edge, {name}: {prof['samples']:,} samples (100 Hz, active threads only)")
    print_table(["thread", "% samples"], [[t, f"{p:.1f}"] for t, p in prof["threads"]])
    print()
    print_table(["step", "% samples"], [[t, f"{p:.1f}"] for t, p in prof["categories"]])
    print()
    print_table(["top self (line)", "% samples"], [[t, f"{p:.1f}"] for t, p in prof["self_top"][:15]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="product,http,acker,sweep,profile", help="comma list (default: all)")
    ap.add_argument("--events", type=int, default=1_000_000, help="backlog for product/http/acker/profile")
    ap.add_argument("--http-events", type=int, help="backlog for the HTTP part (default: --events)")
    ap.add_argument(
        "--sweep-events", type=int, default=200_000, help="backlog per sweep run (default 200,000)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="runs per figure (default 3; medians)")
    ap.add_argument("--sample-interval", type=float, default=0.1, help="RSS sampling period, s (default 0.1)")
    ap.add_argument("--timeout", type=float, default=900, help="max seconds per drain (default 900)")
    ap.add_argument(
        "--py-spy", choices=("all", "gil"), default="all", help="profile sampling mode (default all)"
    )
    ap.add_argument("--py-spy-dir", help="also copy py-spy's raw collapsed stacks here")
    ap.add_argument(
        "--profile-paths", default="mqtt,acker", help="drains profiled by 'profile': mqtt, http, acker"
    )
    ap.add_argument(
        "--stall-timeout", type=float, default=60, help="abort a drain after this long without progress (s)"
    )
    ap.add_argument(
        "--verify-hub",
        action="store_true",
        help="after each hub run, count() and uniqExact(event_id) in the hub's chDB (slower)",
    )
    ap.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="EDGEKITE_X__Y=V",
        help="extra edge env (repeatable)",
    )
    ap.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"filled stores (default {DEFAULT_CACHE})"
    )
    ap.add_argument("--refill", action="store_true", help="build the cached stores again")
    ap.add_argument("--tmp-dir", help="where the per-run copies go (default: system temp; a real disk)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    args.edge_env_dict = dict(kv.split("=", 1) for kv in args.edge_env)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"product", "http", "acker", "sweep", "profile"}
    if unknown:
        ap.error(f"unknown parts: {sorted(unknown)}")
    exit_on_sigterm()
    http_events = args.http_events or args.events

    results: dict[str, Any] = {
        "bench": "sync_drain",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k != "edge_env_dict"},
        "stores": {},
    }
    results["machine"]["code_hub"] = hub_fingerprint()
    t_all = time.monotonic()
    sizes = {args.events} if set(parts) & {"product", "acker", "profile"} else set()
    if "http" in parts:
        sizes.add(http_events)
    if "sweep" in parts:
        sizes.add(args.sweep_events)
    stores = {}
    for n in sorted(sizes):
        stores[n], results["stores"][str(n)] = ensure_fill(args.cache_dir, n, args.refill)

    failures = (RuntimeError, AssertionError, TimeoutError, OSError)

    def timed(name: str, n: int, transport: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        runs, errors = [], []
        for r in range(args.rounds):
            print(f"  {name} round {r + 1}/{args.rounds} ({n:,} events, {transport})", flush=True)
            try:
                res = drain(work, stores[n], n, transport, f"{name}-{r}", args, extra)
            except failures as exc:
                print(f"    [{utc_now()}] FAILED: {str(exc)[:3000]}", flush=True)
                errors.append({"round": r, "at": utc_now(), "error": str(exc)[:5000]})
                break  # a broken hub stays broken: skip the rest of this part
            print_run(res)
            runs.append(res)
        out = summary(runs) if runs else {"runs": []}
        out["errors"] = errors
        return out

    with tempdir("ekbench-drain-", args.tmp_dir, args.keep) as work:
        if "product" in parts:
            print(
                f"[{utc_now()}] product: edge -> Mosquitto -> edgekite hub (chDB), {args.events:,} events",
                flush=True,
            )
            results["product"] = timed("product", args.events, "mqtt")
        if "http" in parts:
            print(
                f"[{utc_now()}] http: edge -> edgekite hub POST /api/ingest/batch, {http_events:,} events",
                flush=True,
            )
            results["http"] = timed("http", http_events, "http")
        if "acker" in parts:
            print(
                f"[{utc_now()}] acker (component): edge -> Mosquitto -> trivial acker, {args.events:,} events"
            )
            results["acker"] = timed("acker", args.events, "acker")
        if "sweep" in parts:
            print(
                f"[{utc_now()}] sweep on the acker path, {args.sweep_events:,} events, interleaved",
                flush=True,
            )
            sweep_runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SWEEP}
            for r in range(args.rounds):
                for i, (name, extra) in enumerate(SWEEP):
                    print(f"  sweep round {r + 1}/{args.rounds}: {name}", flush=True)
                    try:
                        res = drain(
                            work,
                            stores[args.sweep_events],
                            args.sweep_events,
                            "acker",
                            f"sweep{i}-{r}",
                            args,
                            extra,
                        )
                    except failures as exc:
                        print(f"    [{utc_now()}] FAILED: {str(exc)[:3000]}", flush=True)
                        continue
                    res["round"] = r
                    print_run(res)
                    sweep_runs[name].append(res)
            base = sweep_runs[SWEEP[0][0]]
            results["sweep"] = {}
            base_by_round = {b["round"]: b["events_per_s"] for b in base}
            base_wm = {b["round"]: b["events_per_s_watermark"] for b in base}
            for name, extra in SWEEP:
                if not sweep_runs[name]:
                    continue
                s = summary(sweep_runs[name])
                s["env"] = extra
                s["ratio_to_default"] = [
                    x["events_per_s"] / base_by_round[x["round"]]
                    for x in sweep_runs[name]
                    if x["round"] in base_by_round
                ]
                s["ratio_to_default_median"] = median(s["ratio_to_default"])
                # to the watermark: without health's <= 1 s gauge lag, which matters on short runs
                s["ratio_to_default_watermark"] = [
                    x["events_per_s_watermark"] / base_wm[x["round"]]
                    for x in sweep_runs[name]
                    if base_wm.get(x["round"]) and x.get("events_per_s_watermark")
                ]
                s["ratio_to_default_watermark_median"] = median(s["ratio_to_default_watermark"])
                results["sweep"][name] = s
        if "profile" in parts:
            print(f"[{utc_now()}] profile (py-spy {args.py_spy}, not in the medians)", flush=True)
            results["profile"] = {}
            for transport in [t.strip() for t in args.profile_paths.split(",") if t.strip()]:
                try:
                    res = drain(
                        work,
                        stores[args.events],
                        args.events,
                        transport,
                        f"profile-{transport}",
                        args,
                        None,
                        args.py_spy,
                    )
                except failures as exc:
                    print(f"    [{utc_now()}] FAILED: {str(exc)[:3000]}", flush=True)
                    results["profile"][transport] = {"error": str(exc)[:5000]}
                    continue
                print_run(res)
                results["profile"][transport] = res

    # -- report --------------------------------------------------------------------------------
    print()
    rows = []
    labels = [
        ("product", "edge -> Mosquitto -> hub (chDB): PRODUCT FIGURE"),
        ("http", "edge -> hub over HTTP"),
        ("acker", "edge -> Mosquitto -> trivial acker (component)"),
    ]
    for key, label in labels:
        if key not in results:
            continue
        s = results[key]
        runs = s["runs"]
        if not runs:
            rows.append([label, "-", "FAILED", "; ".join(e["error"][:80] for e in s.get("errors", []))])
            rows[-1] += ["-"] * 5
            continue
        rows.append(
            [
                label,
                f"{runs[0]['events']:,}",
                fmt(s["events_per_s_median"]),
                per_run(runs, "events_per_s"),
                fmt(s["events_per_s_watermark_median"]),
                f"{fmt(s['rss_peak_mb_median'], '.1f')} / {fmt(s['rss_median_mb_median'], '.1f')}",
                fmt(s["edge_cores_median"], ".2f"),
                fmt(s["hub_cores_median"], ".2f"),
                fmt(s["events_per_batch_median"]),
            ]
        )
    if rows:
        print(
            f"sync_drain: medians of {args.rounds} (targets: >= {TARGET_EPS:,} ev/s, edge RSS < {TARGET_RSS_MB:.0f} MB)"
        )
        print_table(
            [
                "path",
                "events",
                "ev/s (median)",
                "per run",
                "ev/s to watermark",
                "edge RSS peak / median MB",
                "edge cores",
                "hub cores",
                "ev/batch",
            ],
            rows,
        )
    if "sweep" in results:
        print(
            f"\nsweep (acker path, component), {args.sweep_events:,} events, medians of {args.rounds}, interleaved"
        )
        print_table(
            [
                "settings",
                "ev/s (median)",
                "per run",
                "x default (same round)",
                "ev/s to watermark",
                "x default to watermark",
                "edge RSS peak MB",
                "edge cores",
                "ev/batch",
            ],
            [
                [
                    name,
                    fmt(s["events_per_s_median"]),
                    per_run(s["runs"], "events_per_s"),
                    fmt(s["ratio_to_default_median"], ".2f"),
                    fmt(s["events_per_s_watermark_median"]),
                    fmt(s["ratio_to_default_watermark_median"], ".2f"),
                    fmt(s["rss_peak_mb_median"], ".1f"),
                    fmt(s["edge_cores_median"], ".2f"),
                    fmt(s["events_per_batch_median"]),
                ]
                for name, s in results["sweep"].items()
            ],
        )
    for transport, res in results.get("profile", {}).items():
        if "profile" in res:
            print_profile(
                f"{transport} drain ({res['events_per_s']:,.0f} ev/s with py-spy attached)", res["profile"]
            )
    results["wall_seconds"] = time.monotonic() - t_all
    results["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
    path = write_results("sync_drain", results)
    print(f"\nwrote {path.relative_to(BENCH_DIR.parent)} (total {results['wall_seconds']:.0f} s)")
    return 0


def hub_fingerprint() -> dict[str, Any]:
    """The hub side changes under this bench (other work in progress): hash its sources too."""
    import hashlib

    h = hashlib.sha256()
    newest = 0.0
    for top in ("hub_ingest", "hub_api", "edgekite"):
        for p in sorted((REPO / top).rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
            newest = max(newest, p.stat().st_mtime)
    return {
        "sha256": h.hexdigest()[:16],
        "newest_mtime": datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds"),
        "edge": code_fingerprint()["sha256"],
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_acker":
        aa = argparse.ArgumentParser()
        aa.add_argument("_acker")
        aa.add_argument("--port", type=int, required=True)
        aa.add_argument("--out", type=Path, required=True)
        a = aa.parse_args()
        sys.exit(acker_main(a.port, a.out))
    sys.exit(main())

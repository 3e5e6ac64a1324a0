"""Dashboard panel latency and edge memory on a big store (issue #4).

Two steps, both by default:

* ``fill``: build a data dir holding N events (default 10,000,000) spread evenly over the last
  30 days, written through the store's own write path: ``TrafficGenerator`` (the simulator's
  realistic mix) -> arrays of envelopes per source -> ``decode_message`` -> ``EdgeStore.submit``.
  A fake clock drives both the generator and the store, advancing from now-30d to now, so
  rollups, HLL sketches, incidents, the zstd dictionary and compression are all real. The data
  dir is kept and reused: the step is skipped when it already holds >= N events.
* ``query``: start ``edgekite edge`` on that data dir (retention widened to 400 days so nothing
  of the fill is deleted) and time every API call the dashboard's panels make: p50/p95 over
  ``--requests`` sequential keep-alive requests after ``--warmup`` warm-up requests, while the
  edge's RSS/USS is sampled with psutil. Also records EXPLAIN QUERY PLAN of the raw-table
  queries and times them directly in SQLite, so a slow call can be traced to its plan.

Run from the repository root::

    .venv/bin/python bench/edge_panels.py                       # fill (once, ~10+ min) + query
    .venv/bin/python bench/edge_panels.py fill --events 1000000 --data-dir /tmp/ek-1m
    .venv/bin/python bench/edge_panels.py query --data-dir /tmp/ek-1m

Targets: p95 < 50 ms per call, edge RSS < 100 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
EDGEKITE = REPO / ".venv" / "bin" / "edgekite"
DEFAULT_DATA_DIR = Path("/tmp/edgekite-bench-10m")
DAY_MS = 86_400_000
FILL_INFO = "bench-fill.json"  # written next to edge.db: how and how fast the store was filled

if str(REPO) not in sys.path:  # so `python bench/edge_panels.py` imports edgekite from the checkout
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _common import free_port, print_table, stop_group, write_results  # noqa: E402 - after the path set-up

# Retention must not delete what the fill wrote 30 days "ago" (the short class keeps 7 days).
RETENTION_ENV = {
    "EDGEKITE_RETENTION__SHORT_DAYS": "400",
    "EDGEKITE_RETENTION__STANDARD_DAYS": "400",
    "EDGEKITE_RETENTION__LONG_DAYS": "400",
}


# -- small helpers ------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation (statistics.quantiles' 'inclusive' method)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine_info() -> dict[str, Any]:
    import hashlib

    h = hashlib.sha256()
    for top in ("edgekite", "edge_api", "edge_bridge", "broker"):
        for p in sorted((REPO / top).rglob("*.py")):
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "code_sha256": h.hexdigest()[:16],
    }


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def db_files_bytes(data_dir: Path) -> dict[str, int]:
    out = {}
    for suffix in ("", "-wal", "-shm"):
        p = data_dir / f"edge.db{suffix}"
        out[f"edge.db{suffix}"] = p.stat().st_size if p.exists() else 0
    return out


def stored_events(db: Path) -> int:
    """Events in an existing edge.db (the writer's counter; 0 when there is no usable store)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM counters WHERE name = 'events_stored'").fetchone()
            return int(row[0]) if row else 0
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


# -- the edge as a child process ----------------------------------------------------------
@dataclass
class EdgeChild:
    """``edgekite edge`` in its own process group, stopped (group-wide) on exit."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    http_port: int = 0
    mqtt_port: int = 0
    proc: subprocess.Popen[str] | None = None
    ready_line: str = ""
    ready_secs: float = 0.0
    log_path: Path | None = None

    def start(self, timeout: float = 60.0) -> EdgeChild:
        self.http_port = self.http_port or free_port()
        self.mqtt_port = self.mqtt_port or free_port()
        log_dir = self.log_dir or self.data_dir.parent
        self.log_path = log_dir / f"edge-{self.http_port}.log"
        log = self.log_path.open("a")
        env = {**os.environ, **self.env}
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(EDGEKITE),
                "edge",
                "--data-dir",
                str(self.data_dir),
                "--mqtt-port",
                str(self.mqtt_port),
                "--http-port",
                str(self.http_port),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
        )
        log.close()
        assert self.proc.stdout is not None
        ready: list[str] = []

        def read_stdout() -> None:  # keep draining stdout so the child can never block on it
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if not ready and "ready" in line:
                    ready.append(line.strip())

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready and self.proc.poll() is None:
            time.sleep(0.02)
        if not ready:
            self.stop()
            tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"the edge did not become ready; log tail:\n{tail}")
        self.ready_line = ready[0]
        self.ready_secs = time.monotonic() - t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        return stop_group(self.proc, signal.SIGTERM, timeout)


class MemorySampler:
    """RSS every ``interval`` s and USS every ``uss_every`` samples of a process (and children)."""

    def __init__(self, pid: int, interval: float = 0.1, uss_every: int = 10) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.uss_every = uss_every
        self.rss: list[tuple[float, int]] = []
        self.uss: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list[Any]:
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except Exception:  # noqa: BLE001 - the process may be gone
            return [self._proc]

    def sample(self, with_uss: bool) -> None:
        t = time.monotonic()
        rss = uss = 0
        import psutil

        for p in self._procs():
            with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
                if with_uss:
                    info = p.memory_full_info()
                    rss += info.rss
                    uss += info.uss
                else:
                    rss += p.memory_info().rss
        self.rss.append((t, rss))
        if with_uss:
            self.uss.append((t, uss))

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.sample(with_uss=n % self.uss_every == 0)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.sample(with_uss=True)  # the final reading

    def summary(self) -> dict[str, Any]:
        rss = [v for _, v in self.rss]
        uss = [v for _, v in self.uss]
        return {
            "samples": len(rss),
            "rss_max_bytes": max(rss) if rss else None,
            "rss_final_bytes": rss[-1] if rss else None,
            "rss_median_bytes": int(statistics.median(rss)) if rss else None,
            "uss_max_bytes": max(uss) if uss else None,
            "uss_final_bytes": uss[-1] if uss else None,
        }


# -- fill ---------------------------------------------------------------------------------
class FakeClock:
    """Epoch milliseconds that the fill loop advances by hand."""

    def __init__(self, start_ms: int) -> None:
        self.t_ms = start_ms

    def ms(self) -> int:
        return self.t_ms

    def seconds(self) -> float:
        return self.t_ms / 1000


def _chunks(
    n_events: int,
    start_ms: int,
    step: float,
    seed: int,
    sites: int,
    batch: int,
    clock: FakeClock,
    per_chunk: int = 1,
) -> Iterator[list[tuple[int, list[Any], list[Any], int]]]:
    """Decoded write items, ``per_chunk`` at a time: (received_at, events, rejections, payload bytes).

    ``batch`` consecutive simulator events make one write item; each source's envelopes in it are
    one JSON array message (as a device publishing arrays on ek/v1/<source>/events), decoded with
    ``decode_message(topic_source_id=source)``; the item is stamped received_at = the fake clock
    at its last event.
    """
    import orjson

    from edgekite.config import LimitsSection
    from edgekite.ingest import decode_message
    from edgekite.simulate import TrafficGenerator

    limits = LimitsSection()
    gen = TrafficGenerator(seed=seed, sites=sites, now_ms=clock.ms)
    produced = 0
    out: list[tuple[int, list[Any], list[Any], int]] = []
    while produced < n_events:
        n = min(batch, n_events - produced)
        groups: dict[str, list[Any]] = {}
        for i in range(n):
            clock.t_ms = start_ms + int((produced + i + 1) * step)
            sid, env = gen.next_event()
            groups.setdefault(sid, []).append(env)
        received_at = clock.t_ms
        events: list[Any] = []
        rejections: list[Any] = []
        size = 0
        for sid, envs in groups.items():
            payload = orjson.dumps(envs)
            size += len(payload)
            d = decode_message(payload, topic_source_id=sid, received_at=received_at, limits=limits)
            events.extend(d.events)
            rejections.extend(d.rejections)
        produced += n
        out.append((received_at, events, rejections, size))
        if len(out) >= per_chunk or produced >= n_events:
            yield out
            out = []


def _producer_main(q: Any, args: tuple[Any, ...]) -> None:
    """Producer process: generate + decode, hand decoded rows to the writer process (pickled)."""
    n_events, start_ms, step, seed, sites, batch = args
    clock = FakeClock(start_ms)
    for chunk in _chunks(n_events, start_ms, step, seed, sites, batch, clock, per_chunk=10):
        q.put(chunk)
    q.put(None)


def fill(
    data_dir: Path,
    n_events: int,
    *,
    days: float,
    seed: int,
    sites: int,
    batch: int,
    producer_process: bool = True,
) -> dict[str, Any]:
    """Write ``n_events`` simulator events through EdgeStore, observed_at spread over ``days``.

    With ``producer_process`` the simulator and ``decode_message`` run in a forked child and this
    process only runs EdgeStore (its writer thread then has the GIL to itself); the rows written
    are identical either way (same seed, same fake clock).
    """
    import multiprocessing

    from edgekite.config import load_edge_config
    from edgekite.ingest import Decoded
    from edgekite.metrics import EdgeMetrics
    from edgekite.store import EdgeStore, WriteItem

    cfg = load_edge_config(
        environ={},
        overrides={
            "edge": {"data_dir": str(data_dir)},
            "retention": {"short_days": 400, "standard_days": 400, "long_days": 400, "max_db_bytes": 1024**4},
            # A bulk load: fsync per commit buys nothing here and would only slow the fill.
            # Page layout, rollups and compression are the same as with FULL.
            "store": {"synchronous": "NORMAL"},
        },
    )
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - int(days * DAY_MS)
    step = (end_ms - start_ms) / n_events
    clock = FakeClock(start_ms)  # the store's clock: set to each item's received_at as it is submitted
    print(
        f"filling {data_dir} with {n_events:,} events over {days:g} days "
        f"({step:.0f} ms of simulated time per event), arrays of {batch} per write item, "
        f"producer {'process' if producer_process else 'in-process'}",
        flush=True,
    )
    proc = None
    if producer_process:
        ctx = multiprocessing.get_context("fork")  # forked before the store starts any thread
        q = ctx.Queue(maxsize=32)
        proc = ctx.Process(
            target=_producer_main, args=(q, (n_events, start_ms, step, seed, sites, batch)), daemon=True
        )
        proc.start()

        def chunks() -> Iterator[list[tuple[int, list[Any], list[Any], int]]]:
            while (chunk := q.get()) is not None:
                yield chunk
    else:

        def chunks() -> Iterator[list[tuple[int, list[Any], list[Any], int]]]:
            yield from _chunks(n_events, start_ms, step, seed, sites, batch, FakeClock(start_ms))

    store = EdgeStore(cfg, EdgeMetrics(), clock=clock.seconds).open()
    t0 = time.monotonic()
    last_print = t0
    submitted = rejected = payload_bytes = 0
    try:
        for chunk in chunks():
            for received_at, events, rejections, size in chunk:
                clock.t_ms = received_at
                store.submit(WriteItem(Decoded(events, rejections, False), "mqtt", topic=None, size=size))
                submitted += len(events) + len(rejections)
                rejected += len(rejections)
                payload_bytes += size
            now = time.monotonic()
            if now - last_print >= 10 or submitted >= n_events:
                last_print = now
                rate = submitted / (now - t0)
                eta = (n_events - submitted) / rate if rate else 0
                size_now = sum(db_files_bytes(data_dir).values())
                print(
                    f"  {submitted:>12,} submitted  {rate:>8,.0f} ev/s  queue {store.queue_depth:>5}  "
                    f"db+wal {size_now / 1e9:6.2f} GB  ETA {eta / 60:5.1f} min",
                    flush=True,
                )
    finally:
        t_submit = time.monotonic() - t0
        store.close(timeout=600)  # commits what is queued, checkpoints (TRUNCATE) and closes
        if proc is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    elapsed = time.monotonic() - t0
    stored = stored_events(data_dir / "edge.db")
    files = db_files_bytes(data_dir)
    info = {
        "events_requested": n_events,
        "events_stored": stored,
        "rejected": rejected,
        "days": days,
        "seed": seed,
        "sites": sites,
        "batch": batch,
        "producer_process": producer_process,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "filled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_sha256": machine_info()["code_sha256"],
        "loadavg_after": os.getloadavg(),
        "elapsed_secs": round(elapsed, 1),
        "submit_secs": round(t_submit, 1),
        "events_per_sec": round(stored / elapsed) if elapsed else None,
        "envelope_json_bytes_per_event": round(payload_bytes / max(1, submitted), 1),
        "files_bytes": files,
        "bytes_per_event": round(files["edge.db"] / max(1, stored), 1),
        "config": {
            "synchronous": "NORMAL",
            "batch_max_events": cfg.store.batch_max_events,
            "cache_mb": cfg.store.cache_mb,
        },
    }
    (data_dir / FILL_INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"filled {stored:,} events in {elapsed:.0f} s = {info['events_per_sec']:,} events/s; "
        f"edge.db {files['edge.db'] / 1e9:.2f} GB = {info['bytes_per_event']} B/event",
        flush=True,
    )
    return info


def schema_drift(db: Path) -> list[str]:
    """Tables/indexes whose definition in ``db`` differs from what today's migrations create.

    A store filled by an older checkout keeps its old definitions when a migration was edited
    in place (user_version unchanged), and then today's queries can run against the wrong index.
    """
    from edgekite.store.schema import migrate

    def defs(conn: sqlite3.Connection) -> dict[str, str]:
        return {
            n: " ".join(sql.split())
            for n, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
            )
        }

    mem = sqlite3.connect(":memory:", isolation_level=None)
    migrate(mem)
    want = defs(mem)
    mem.close()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    have = defs(conn)
    conn.close()
    out = []
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            out.append(f"{name}: store has {have.get(name)!r}, code creates {want.get(name)!r}")
    return out


def table_sizes(db: Path) -> list[dict[str, Any]]:
    """Bytes per table/index via dbstat (if compiled in); a full scan of the file, so slow-ish."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [{"name": n, "bytes": int(b)} for n, b in rows]


# -- query --------------------------------------------------------------------------------
@dataclass
class Call:
    panel: str
    name: str
    paths: Callable[[int], str]  # request i -> path (most calls ignore i)


def _q(path: str, **params: Any) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def pick_words(db: Path, sample: int = 20_000) -> tuple[str, float, str, list[dict[str, Any]]]:
    """A word present in ~1 % of recent events (as `q` matches: type, source, payload) and an absent one."""
    from edgekite.codec import PayloadCodec
    from edgekite.simulate import APP_ERRORS, BRUTE_FORCE_USERS, LOGIN_USERS, OPS_ERRORS, PAGES

    candidates: set[str] = set()
    for _, code, _ in (*OPS_ERRORS, *APP_ERRORS):
        candidates.add(code)
    candidates.update(u for u in (*LOGIN_USERS, *BRUTE_FORCE_USERS) if len(u) >= 4)
    candidates.update(p.rsplit("/", 1)[-1] for p, _ in PAGES if len(p) > 8)
    candidates.update(["expired_token", "mfa_failed", "vehicle", "animal", "unknown_user", "sso"])
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    codec = PayloadCodec()
    codec.register(conn)
    try:
        texts = [
            f"{t}\n{s}\n{codec.decode(p) or ''}".casefold()
            for t, s, p in conn.execute(
                "SELECT type, source_id, payload_json FROM events ORDER BY observed_at DESC LIMIT ?",
                (sample,),
            )
        ]
    finally:
        conn.close()
    freq = []
    for word in sorted(candidates):
        w = word.casefold()
        hits = sum(1 for t in texts if w in t)
        freq.append({"word": word, "share": hits / max(1, len(texts))})
    present = [f for f in freq if f["share"] > 0]
    best = min(present, key=lambda f: abs(f["share"] - 0.01))
    absent = "zqxjvwk"
    assert not any(absent in t for t in texts)
    freq.sort(key=lambda f: abs(f["share"] - 0.01))
    return best["word"], best["share"], absent, freq[:8]


def sample_ids(db: Path, n: int, seed: int = 7) -> list[str]:
    """Event ids at random rowids over the whole store (not just the hot tail)."""
    from uuid import UUID

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (hi,) = conn.execute("SELECT max(rowid) FROM events").fetchone()
        rng = random.Random(seed)
        out: list[str] = []
        while len(out) < n:
            row = conn.execute(
                "SELECT event_id FROM events WHERE rowid >= ? ORDER BY rowid LIMIT 1", (rng.randint(1, hi),)
            ).fetchone()
            if row:
                out.append(str(UUID(bytes=bytes(row[0]))))
        return out
    finally:
        conn.close()


def pick_source(db: Path) -> tuple[str, int]:
    """The source with the median number of events (a typical one to filter the timeline by)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT source_id, events FROM sources ORDER BY events").fetchall()
    finally:
        conn.close()
    sid, n = rows[len(rows) // 2]
    return sid, int(n)


class Client:
    """One keep-alive HTTP/1.1 connection; times the request through the last body byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[float, int, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return dt, resp.status, body

    def get_json(self, path: str) -> Any:
        _, status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def query_plans(
    db: Path, source: str, etype: str, word: str, absent: str, now_ms: int
) -> list[dict[str, Any]]:
    """Run the API's own query functions (edge_api/queries.py) in-process on a Reader like the
    edge's, capture the SQL they issue (trace callback, parameters expanded), and report each
    function's time (median of 5, warm) with the EXPLAIN QUERY PLAN and time of each statement.

    Taken from the code at run time, so it stays true when queries.py changes.
    """
    from uuid import UUID

    from edge_api import queries as qm
    from edgekite.config import load_edge_config
    from edgekite.store.reads import Reader

    cfg = load_edge_config(environ={}, overrides={})
    r = Reader(db, cfg.store)
    conn = r.conn
    (some_id,) = conn.execute(
        "SELECT event_id FROM events WHERE rowid = (SELECT max(rowid) / 2 FROM events)"
    ).fetchone()
    end = now_ms + DAY_MS
    tf = qm.TimelineFilter
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("stats", lambda: qm.stats(r, now_ms)),
        ("counts hour×type 24h", lambda: qm.counts(r, "hour", "type", now_ms - DAY_MS, now_ms)),
        ("counts day×category 30d", lambda: qm.counts(r, "day", "category", now_ms - 30 * DAY_MS, now_ms)),
        ("top page 30d", lambda: qm.top(r, "page", 30 * DAY_MS, 10, now_ms)),
        ("top source 24h", lambda: qm.top(r, "source", DAY_MS, 10, now_ms)),
        ("uniques 30d", lambda: qm.uniques(r, 30 * DAY_MS, now_ms, cfg.rollups.hll_lg_k)),
        ("timeline", lambda: qm.timeline(r, tf(0, end), 50, None)),
        ("timeline type=", lambda: qm.timeline(r, tf(0, end, type=etype), 50, None)),
        ("timeline source=", lambda: qm.timeline(r, tf(0, end, source=source), 50, None)),
        ("timeline category=security", lambda: qm.timeline(r, tf(0, end, category="security"), 50, None)),
        (
            "timeline severity=error,critical",
            lambda: qm.timeline(r, tf(0, end, severities=("error", "critical")), 50, None),
        ),
        (f"timeline q={word}", lambda: qm.timeline(r, tf(0, end, q=word), 50, None)),
        (f"timeline q={absent}", lambda: qm.timeline(r, tf(0, end, q=absent), 50, None)),
        ("event by id", lambda: qm.event_by_id(r, UUID(bytes=bytes(some_id)))),
        ("alerts", lambda: qm.alerts(r, 50, None)),
        ("incidents", lambda: qm.incidents(r, 0, end, None, 50, None)),
        ("health sources", lambda: qm.sources(r, now_ms, 300_000)),
    ]
    out = []
    for name, fn in cases:
        stmts: list[str] = []
        entry: dict[str, Any] = {"name": name}
        try:
            fn()  # warm
            conn.set_trace_callback(stmts.append)
            fn()
            conn.set_trace_callback(None)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
            entry["function_ms"] = round(statistics.median(times), 2)
        except Exception as exc:  # noqa: BLE001 - queries.py may have changed its signatures
            conn.set_trace_callback(None)
            entry["error"] = f"{type(exc).__name__}: {exc}"
            out.append(entry)
            continue
        entry["statements"] = []
        for sql in dict.fromkeys(stmts):  # distinct, in order
            st: dict[str, Any] = {"sql": sql}
            try:
                st["plan"] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            except sqlite3.Error as exc:
                st["plan"] = [f"(not explainable: {exc})"]
            bounded = (
                "FROM events" not in sql
                or " LIMIT " in sql.upper()
                or any(a in sql for a in ("count(", "min(", "max(", "event_id = "))
            )
            if bounded:
                conn.execute(sql).fetchall()
                t0 = time.perf_counter()
                conn.execute(sql).fetchall()
                st["ms"] = round((time.perf_counter() - t0) * 1000, 2)
            else:
                st["ms"] = None  # an unbounded cursor the function stops reading itself (q search)
            entry["statements"].append(st)
        out.append(entry)
    conn.close()
    return out


def build_calls(c: Client, ids: list[str], source: str, etype: str, word: str, absent: str) -> list[Call]:
    calls = [
        Call("overview", "/api/stats", lambda i: "/api/stats"),
        Call("overview", "counts hour×type 24h", lambda i: _q("/api/counts", bucket="hour", group_by="type")),
        Call(
            "overview",
            "counts day×category 30d",
            lambda i: _q("/api/counts", bucket="day", group_by="category"),
        ),
    ]
    for dim in ("page", "referrer", "type", "source", "error"):
        for window in ("24h", "7d", "30d"):
            path = _q("/api/top", dim=dim, window=window)
            calls.append(Call("overview", f"top {dim} {window}", lambda i, p=path: p))
    for window in ("24h", "7d", "30d"):
        path = _q("/api/uniques", window=window)
        calls.append(Call("overview", f"uniques {window}", lambda i, p=path: p))
    first = c.get_json(_q("/api/timeline", limit=50))
    cursor = first["next_cursor"]
    assert cursor, "the timeline's first page has no next_cursor"
    tl = [
        ("timeline", {}),
        (f"timeline type={etype}", {"type": etype}),
        (f"timeline source={source}", {"source": source}),
        ("timeline category=security", {"category": "security"}),
        ("timeline severity=error,critical", {"severity": "error,critical"}),
        ("timeline page 2 (cursor)", {"cursor": cursor}),
        (f"timeline q={word} (~1%)", {"q": word}),
        (f"timeline q={absent} (absent)", {"q": absent}),
    ]
    for name, params in tl:
        path = _q("/api/timeline", limit=50, **params)
        calls.append(Call("timeline", name, lambda i, p=path: p))
    calls.append(Call("timeline", "/api/events/{id}", lambda i: f"/api/events/{ids[i % len(ids)]}"))
    calls.append(Call("alerts", "/api/alerts", lambda i: _q("/api/alerts", limit=50)))
    calls.append(Call("incidents", "/api/incidents", lambda i: _q("/api/incidents", limit=50)))
    calls.append(Call("health", "/api/health", lambda i: "/api/health"))
    calls.append(Call("health", "/api/resources", lambda i: "/api/resources"))
    return calls


def describe(body: bytes) -> str:
    """A few words on what a response held, to show the call did real work."""
    try:
        d = json.loads(body)
    except ValueError:
        return f"{len(body)} B"
    for key in ("events", "alerts", "incidents", "items", "buckets", "sources"):
        if isinstance(d.get(key), list):
            extra = f" scanned={d['scanned']}" if "scanned" in d else ""
            return f"{len(d[key])} {key}{extra}"
    if "events_stored" in d:
        return f"{d['events_stored']:,} stored"
    if "visitors" in d:
        return f"visitors≈{d['visitors']['value']:,}"
    if "event_id" in d:
        return "1 event"
    return f"{len(body)} B"


def run_queries(
    data_dir: Path, *, requests: int, warmup: int, log_dir: Path, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    db = data_dir / "edge.db"
    n_stored = stored_events(db)
    if n_stored == 0:
        raise SystemExit(f"{db} holds no events; run the fill step first")
    fill_info = json.loads((data_dir / FILL_INFO).read_text()) if (data_dir / FILL_INFO).exists() else None
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (newest,) = conn.execute("SELECT max(observed_at) FROM events").fetchone()
    conn.close()
    age_h = (now_ms - newest) / 3_600_000
    if age_h > 2:
        print(
            f"WARNING: the newest event is {age_h:.1f} h old: the 24h windows are (partly) empty. "
            "Refill (--refill) for figures comparable with a live edge.",
            flush=True,
        )
    drift = schema_drift(db)
    for d in drift:
        print(f"WARNING: schema drift: {d}", flush=True)
    if drift:
        print(
            "WARNING: the store was filled by other code than this checkout's; refill (--refill) "
            "to measure today's schema",
            flush=True,
        )
    files = db_files_bytes(data_dir)
    print(
        f"store: {n_stored:,} events, edge.db {files['edge.db'] / 1e9:.2f} GB "
        f"({files['edge.db'] / n_stored:.0f} B/event), newest event {age_h * 60:.0f} min old",
        flush=True,
    )

    word, share, absent, word_freq = pick_words(db)
    ids = sample_ids(db, requests + warmup)
    source, source_events = pick_source(db)
    etype = "person_detected"
    print(
        f"q word {word!r} in {share:.2%} of recent events; source filter {source!r} "
        f"({source_events:,} events); type filter {etype!r}",
        flush=True,
    )

    env = dict(RETENTION_ENV)
    if files["edge.db"] > 6 * 1024**3:  # keep the default 8 GiB size cap from deleting the fill
        env["EDGEKITE_RETENTION__MAX_DB_BYTES"] = str(4 * files["edge.db"])
    env.update(extra_env or {})
    edge = EdgeChild(data_dir, env=env, log_dir=log_dir)
    results: list[dict[str, Any]] = []
    edge.start()
    print(f"edge ready in {edge.ready_secs:.2f} s (pid {edge.pid}, http :{edge.http_port})", flush=True)
    try:
        import psutil

        rss_at_ready = psutil.Process(edge.pid).memory_full_info()
        client = Client(edge.http_port)
        with MemorySampler(edge.pid) as mem:
            calls = build_calls(client, ids, source, etype, word, absent)
            for call in calls:
                for i in range(warmup):
                    _, status, _ = client.get(call.paths(requests + i))
                times = []
                statuses: dict[int, int] = {}
                last_body = b""
                for i in range(requests):
                    dt, status, last_body = client.get(call.paths(i))
                    times.append(dt * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
                r = {
                    "panel": call.panel,
                    "call": call.name,
                    "path": call.paths(0),
                    "n": len(times),
                    "p50_ms": round(pct(times, 50), 2),
                    "p95_ms": round(pct(times, 95), 2),
                    "max_ms": round(max(times), 2),
                    "mean_ms": round(statistics.fmean(times), 2),
                    "statuses": statuses,
                    "response": describe(last_body),
                    "response_bytes": len(last_body),
                    "rss_after_bytes": mem.rss[-1][1] if mem.rss else None,
                }
                r["ok"] = r["p95_ms"] < 50 and set(statuses) == {200}
                results.append(r)
                print(
                    f"  {call.panel:<9} {call.name:<40} p50 {r['p50_ms']:8.2f}  p95 {r['p95_ms']:8.2f} ms  "
                    f"{r['response']}",
                    flush=True,
                )
            client.close()
        memory = mem.summary()
        memory["rss_at_ready_bytes"] = rss_at_ready.rss
        memory["uss_at_ready_bytes"] = rss_at_ready.uss
    finally:
        rc = edge.stop()
    print(f"edge stopped (exit {rc}); explaining the raw-table queries ...", flush=True)
    plans = query_plans(db, source, etype, word, absent, now_ms)

    print()
    print_table(
        ["panel / call", "p50 ms", "p95 ms", "max ms", "response", "p95<50"],
        [
            [
                f"{r['panel']}: {r['call']}",
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['max_ms']:.1f}",
                r["response"],
                "ok" if r["ok"] else "MISS",
            ]
            for r in results
        ],
    )
    print()
    print(
        f"edge RSS: at ready {mb(memory['rss_at_ready_bytes'])} MB, max {mb(memory['rss_max_bytes'])} MB, "
        f"final {mb(memory['rss_final_bytes'])} MB; USS at ready {mb(memory['uss_at_ready_bytes'])} MB, "
        f"max {mb(memory['uss_max_bytes'])} MB, final {mb(memory['uss_final_bytes'])} MB "
        f"({memory['samples']} samples)  target RSS < 100 MB: "
        f"{'ok' if (memory['rss_max_bytes'] or 0) < 100e6 else 'MISS'}"
    )
    print()
    print("the API's query functions in-process (Reader like the edge's, warm, median of 5) and their SQL:")
    for p in plans:
        if "error" in p:
            print(f"  {p['name']:<36} ERROR {p['error']}")
            continue
        print(f"  {p['name']:<36} {p['function_ms']:9.2f} ms")
        for st in p["statements"]:
            if (
                st["ms"] is not None
                and st["ms"] < 2
                and not any("TEMP B-TREE" in x or x.startswith("SCAN events") for x in st["plan"])
            ):
                continue  # only the interesting statements on the console; all are in the JSON
            ms = "unbounded" if st["ms"] is None else f"{st['ms']:.2f} ms"
            print(f"      {ms:>12}  {' | '.join(st['plan'])}")
            print(f"                    {st['sql'][:160]}")
    misses = [r for r in results if not r["ok"]]
    return {
        "store": {
            "events": n_stored,
            "schema_drift": drift,
            "files_bytes": files,
            "bytes_per_event": round(files["edge.db"] / n_stored, 1),
            "newest_event_age_hours": round(age_h, 2),
            "fill": fill_info,
        },
        "edge": {"ready_secs": round(edge.ready_secs, 2), "ready_line": edge.ready_line, "env": env},
        "params": {
            "requests": requests,
            "warmup": warmup,
            "q_word": word,
            "q_word_share": share,
            "q_word_candidates": word_freq,
            "q_absent": absent,
            "source": source,
            "source_events": source_events,
            "type": etype,
        },
        "calls": results,
        "memory": memory,
        "plans": plans,
        "misses": [f"{r['panel']}: {r['call']} p95 {r['p95_ms']} ms" for r in misses],
    }


# -- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", choices=("all", "fill", "query"), default="all")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the store to fill/query (default {DEFAULT_DATA_DIR}, kept for reuse)",
    )
    ap.add_argument("--events", type=int, default=10_000_000, help="events to fill (default 10,000,000)")
    ap.add_argument("--days", type=float, default=30, help="span of observed_at, ending now (default 30)")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--sites", type=int, default=2, help="simulated sites (each 9 sources; default 2)")
    ap.add_argument("--batch", type=int, default=100, help="envelopes per write item (default 100)")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="fill: run the simulator and decoding in the writer's process (slower)",
    )
    ap.add_argument("--refill", action="store_true", help="delete the data dir's store and fill again")
    ap.add_argument("--requests", type=int, default=50, help="timed requests per call (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per call first (default 3)")
    ap.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="query: extra environment for the edge (experiments), e.g. EDGEKITE_STORE__CACHE_MB=16",
    )
    ap.add_argument("--dbstat", action="store_true", help="also report bytes per table/index (slow scan)")
    args = ap.parse_args(argv)

    data_dir: Path = (args.data_dir or DEFAULT_DATA_DIR).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="edgekite-panels-"))
    out: dict[str, Any] = {
        "bench": "edge_panels",
        "machine": machine_info(),
        "data_dir": str(data_dir),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    try:
        if args.step in ("all", "fill"):
            have = stored_events(data_dir / "edge.db")
            if have >= args.events and not args.refill:
                print(
                    f"{data_dir} already holds {have:,} events (>= {args.events:,}): fill skipped", flush=True
                )
            else:
                if (data_dir / "edge.db").exists():
                    if not args.refill:
                        raise SystemExit(
                            f"{data_dir} holds only {have:,} events; pass --refill to start over"
                        )
                    for name in ("edge.db", "edge.db-wal", "edge.db-shm", FILL_INFO):
                        with contextlib.suppress(FileNotFoundError):
                            (data_dir / name).unlink()
                data_dir.mkdir(parents=True, exist_ok=True)
                out["fill"] = fill(
                    data_dir,
                    args.events,
                    days=args.days,
                    seed=args.seed,
                    sites=args.sites,
                    batch=args.batch,
                    producer_process=not args.in_process,
                )
            if args.dbstat:
                out["table_bytes"] = table_sizes(data_dir / "edge.db")
                for t in out["table_bytes"][:12]:
                    print(f"  {t['name']:<32} {t['bytes'] / 1e6:10.1f} MB")
        if args.step in ("all", "query"):
            out["query"] = run_queries(
                data_dir,
                requests=args.requests,
                warmup=args.warmup,
                log_dir=tmp,
                extra_env=dict(kv.split("=", 1) for kv in args.edge_env),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_results("edge_panels", out)
    print(f"\nresults: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

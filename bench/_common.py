"""Shared plumbing for the bench/ scripts: Mosquitto, the edge process, the load, results.

Not a benchmark itself. Every process started here gets its own process group
(``start_new_session=True``) and is stopped through that group, so a bench never leaves
brokers, edges or publishers behind, even when it is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = REPO / ".venv" / "bin"
EDGEKITE = VENV_BIN / "edgekite"
PYTHON = VENV_BIN / "python"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"

if str(REPO) not in sys.path:  # so `python bench/x.py` can import edgekite from the checkout
    sys.path.insert(0, str(REPO))


# -- small helpers --------------------------------------------------------------------------
def exit_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit so every finally block cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop_group(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Signal a child's process group, wait, then SIGKILL the group if it lingers."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    else:  # the leader is gone; make sure nothing else of its group survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def start_py_spy(pid: int, out: Path, gil: bool) -> subprocess.Popen[bytes] | None:
    exe = PYTHON.parent / "py-spy"
    if not exe.exists():
        print("(py-spy not installed: .venv/bin/pip install py-spy; profiling skipped)", flush=True)
        return None
    cmd = [
        str(exe),
        "record",
        "-p",
        str(pid),
        "-o",
        str(out),
        "--format",
        "raw",
        "--rate",
        "100",
        "--threads",
        "--nonblocking",
        "--subprocesses",  # the bridge's child process (mqtt.bridge_process) too
    ] + (["--gil"] if gil else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)  # let it attach before the clock starts
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        stop_group(proc, signal.SIGINT, 30)  # SIGINT makes py-spy write its output


def process_tree(pid: int) -> list[Any]:
    """The edge and its children (the bridge's child process with ``mqtt.bridge_process``)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds per process of the edge's tree (pid → seconds), to see which one is busy."""
    import psutil

    out: dict[int, float] = {}
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def tree_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of the edge and its live children."""
    return sum(tree_cpu_by_process(pid).values())


def tree_rss(pid: int) -> int:
    """Sum of RSS over the edge and its children, in bytes (shared pages counted per process)."""
    import psutil

    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


_PFN_MASK = (1 << 55) - 1


def _resident_frames(pid: int) -> set[int]:
    """Physical page frames mapped by ``pid`` (``/proc/PID/pagemap``: bit 63 present, bits
    0-54 the frame number, which the kernel shows only to CAP_SYS_ADMIN; 0 otherwise)."""
    page = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            if line.rstrip().endswith("[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            pagemap.seek(start // page * 8)
            data = pagemap.read((end - start) // page * 8)
            frames.update(v & _PFN_MASK for v in memoryview(data).cast("Q") if v >> 63)
    frames.discard(0)
    return frames


def tree_distinct_rss(pid: int) -> int | None:
    """Resident bytes of the edge's process tree with every physical page counted once.

    Summing RSS counts a page once per process that maps it: the bridge child's copy of
    libpython, libcrypto and libc is the same RAM as the edge's, yet adds ~11 MB to the sum.
    This counts what the tree holds in RAM: the union of its resident page frames (pages it
    shares with processes outside the tree, such as libc's, counted in full, unlike PSS).
    None when the kernel hides frame numbers (not root)."""
    import psutil

    frames: set[int] = set()
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error, OSError):
            mine = _resident_frames(p.pid)
            if not mine:
                return None
            frames |= mine
    return len(frames) * os.sysconf("SC_PAGE_SIZE") if frames else None


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def machine_info() -> dict[str, Any]:
    import paho.mqtt

    info: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho_mqtt": paho.mqtt.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "code": code_fingerprint(),
    }
    with contextlib.suppress(Exception):
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
        m = re.search(r"version (\S+)", out.stdout + out.stderr)
        info["mosquitto"] = m.group(1) if m else None
    return info


def code_fingerprint() -> dict[str, Any]:
    """Which product code was measured: a hash of its sources (the tree may change between runs)."""
    import hashlib

    h = hashlib.sha256()
    newest = 0.0
    files = 0
    for top in ("edgekite", "edge_bridge", "edge_api", "broker"):
        for path in sorted((REPO / top).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
            newest = max(newest, path.stat().st_mtime)
            files += 1
    return {
        "sha256": h.hexdigest()[:16],
        "files": files,
        "newest_mtime": datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds"),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# -- Mosquitto ------------------------------------------------------------------------------
MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# 0 = no limit. The default (1000) silently DROPS QoS 1 messages queued for a persistent
# session above 1000 + in-flight, which would lose most of a burst aimed at a slower edge.
max_queued_messages 0
max_queued_bytes 0
# 0 = no limit for MQTT 3.1.1 clients; MQTT 5 clients' Receive Maximum still applies.
max_inflight_messages 0
log_dest none
"""


class Mosquitto:
    """A throwaway Mosquitto on a free loopback port; no persistence, so sessions die with it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(MOSQUITTO_CONF.format(port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_port(self.port)
        except BaseException:
            stop_group(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_group(self.proc)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# -- the edge -------------------------------------------------------------------------------
_READY = re.compile(r" ready in (?P<own>[0-9.]+)s: MQTT (?P<mqtt>\S+)\s+HTTP (?P<http>\S+)")


@dataclass
class Edge:
    """``edgekite edge`` as a child process; ``start()`` returns once it printed its ready line."""

    data_dir: Path
    mqtt_url: str | None = None  # None: embedded amqtt broker on mqtt_port
    mqtt_port: int | None = None
    edge_id: str = "bench"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    cpus: str | None = None  # taskset -c list: the CPUs the edge (and its children) may use
    proc: subprocess.Popen[str] | None = None
    ready_wall_s: float | None = None  # spawn -> ready line, measured here
    ready_own_s: float | None = None  # what the edge prints (from its cli import, not from exec)
    http_url: str | None = None
    lines: list[str] = field(default_factory=list)
    _stopped: bool = False

    def start(self, timeout: float = 60.0) -> Edge:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(EDGEKITE),
            "edge",
            "--data-dir",
            str(self.data_dir),
            "--http-port",
            "0",
            "--edge-id",
            self.edge_id,
        ]
        if self.mqtt_url:
            cmd += ["--mqtt-url", self.mqtt_url]
        else:
            cmd += ["--mqtt-port", str(self.mqtt_port or free_port())]
        cmd += self.extra_args
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}.stderr.log"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in stop()
        ready = threading.Event()
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if self.env:
            env.update(self.env)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=env,
            cwd=str(self.data_dir.parent),
        )

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.ready_wall_s = time.monotonic() - t0
                    self.ready_own_s = float(m.group("own"))
                    self.http_url = m.group("http")
                    ready.set()

        threading.Thread(target=reader, daemon=True, name="edge-stdout").start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"edge did not get ready (rc={self.proc.returncode}); stderr tail:\n{self.stderr_tail()}"
                )
        return self

    def stderr_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.stderr_path).read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edge.db"

    def metrics(self) -> dict[str, float]:
        """Prometheus text from /metrics, flattened to {'name{labels}': value}."""
        assert self.http_url
        with urllib.request.urlopen(self.http_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.proc is None or self._stopped:
            return None if self.proc is None else self.proc.returncode
        self._stopped = True
        rc = stop_group(self.proc, signal.SIGTERM, timeout)
        with contextlib.suppress(Exception):
            self._stderr.close()
        return rc


class RowCounter:
    """Cheap progress probe of the edge's events table from a separate read connection.

    ``events`` is a rowid table that is only appended to during a bench (no deletes, no
    duplicates), so max(rowid) equals count(*) at O(log n) instead of a full index scan that
    would steal CPU from the edge on a 2-core box. ``exact()`` runs the real count(*) once.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._conn: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"file:{self.db_path}?mode=ro", uri=True, isolation_level=None, timeout=5
            )
        return self._conn

    def fast(self) -> int:
        try:
            (n,) = self._c().execute("SELECT max(rowid) FROM events").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(n or 0)

    def exact(self) -> int:
        (n,) = self._c().execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- load -----------------------------------------------------------------------------------
@dataclass
class Load:
    """Pre-generated messages: one file per topic, one JSON message per line."""

    files: list[tuple[str, Path, int]]  # (topic, file, messages)
    events: int
    batch: int
    payload_bytes: int

    @property
    def messages(self) -> int:
        return sum(m for _, _, m in self.files)


def source_ids(n: int) -> list[str]:
    return [f"bench-src-{k + 1:02d}" for k in range(n)]


def generate_envelopes(events: int, topics: int, seed: int) -> list[list[dict[str, Any]]]:
    """The simulator's realistic mix, dealt round-robin onto ``topics`` fixed sources.

    Each envelope keeps its event_id, type, payload and metadata; ``source.id`` is rewritten to
    its topic's source (the edge refuses a source.id that differs from the topic's) and
    ``sync.source_seq`` renumbered per source so every source's sequence stays monotonic.
    """
    from edgekite.simulate import TrafficGenerator

    gen = TrafficGenerator(seed)
    sids = source_ids(topics)
    per: list[list[dict[str, Any]]] = [[] for _ in sids]
    for i in range(events):
        _, env = gen.next_event()
        k = i % topics
        env["source"]["id"] = sids[k]
        env["sync"] = {"source_seq": len(per[k]) + 1}
        per[k].append(env)
    return per


def write_load(workdir: Path, per_source: list[list[dict[str, Any]]], batch: int) -> Load:
    """One file per source topic; ``batch`` > 1 packs that many consecutive envelopes of one
    source into one JSON-array message (the last message of a file may hold fewer)."""
    from edgekite.simulate import encode_events

    sids = source_ids(len(per_source))
    files = []
    total_bytes = 0
    events = 0
    for sid, envs in zip(sids, per_source, strict=True):
        path = workdir / f"load-{sid}-b{batch}.jsonl"
        n = 0
        with open(path, "wb") as f:
            for start in range(0, len(envs), batch):
                line = encode_events(envs[start : start + batch])
                assert b"\n" not in line
                f.write(line + b"\n")
                total_bytes += len(line)
                n += 1
        events += len(envs)
        files.append((f"ek/v1/{sid}/events", path, n))
    return Load(files, events, batch, total_bytes)


def generate_load(workdir: Path, events: int, batch: int, topics: int, seed: int) -> Load:
    return write_load(workdir, generate_envelopes(events, topics, seed), batch)


def probe_payload(seed: int = 12345) -> tuple[str, bytes]:
    """One valid envelope on its own source topic, to prove the edge is subscribed."""
    from edgekite.simulate import TrafficGenerator, encode_events

    _, env = TrafficGenerator(seed).next_event()
    env["source"]["id"] = "bench-probe"
    return "ek/v1/bench-probe/events", encode_events([env])


@dataclass
class PublishRun:
    started: float  # monotonic, just before the first publisher was spawned
    procs: list[subprocess.Popen[bytes]]
    finished: list[float | None]

    def wait(self, timeout: float) -> float:
        """Wait for every publisher; returns seconds from start to the last exit."""
        deadline = time.monotonic() + timeout
        for i, p in enumerate(self.procs):
            while self.finished[i] is None:
                rc = p.poll()
                if rc is not None:
                    self.finished[i] = time.monotonic()
                    if rc != 0:
                        raise RuntimeError(f"mosquitto_pub #{i} exited with {rc}")
                elif time.monotonic() > deadline:
                    raise TimeoutError("publishers did not finish")
                else:
                    time.sleep(0.01)
        return max(f for f in self.finished if f is not None) - self.started

    def poll_done(self) -> bool:
        now = time.monotonic()
        for i, p in enumerate(self.procs):
            if self.finished[i] is None and p.poll() is not None:
                self.finished[i] = now
        return all(f is not None for f in self.finished)

    def kill(self) -> None:
        for p in self.procs:
            stop_group(p, signal.SIGKILL, 5)


def publish(port: int, load: Load, max_inflight: int, tag: str) -> PublishRun:
    """Start one ``mosquitto_pub -l -q 1`` per topic file; returns at once."""
    procs = []
    started = time.monotonic()
    try:
        for n, (topic, path, _) in enumerate(load.files):
            with open(path, "rb") as stdin:
                procs.append(
                    subprocess.Popen(
                        [
                            MOSQUITTO_PUB,
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(port),
                            "-q",
                            "1",
                            "-l",
                            "-t",
                            topic,
                            "-M",
                            str(max_inflight),
                            "-i",
                            f"bench-pub-{tag}-{n}-{os.getpid()}",
                        ],
                        stdin=stdin,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
    except BaseException:
        for p in procs:
            stop_group(p, signal.SIGKILL, 5)
        raise
    return PublishRun(started, procs, [None] * len(procs))


def probe_until_stored(port: int, counter: RowCounter, edge: Edge, timeout: float = 30.0) -> int:
    """Publish the probe event until it is in edge.db; returns how many probes were sent.

    Needed because the edge prints "ready" before its bridge has connected and subscribed
    (paho's connect is asynchronous), and on a brand-new session the broker drops what is
    published before SUBACK. Every probe has the same event_id, so repeats are deduplicated.
    """
    topic, payload = probe_payload()
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        publish_one(port, topic, payload)
        sent += 1
        retry = time.monotonic() + 2.0
        while time.monotonic() < retry:
            if counter.fast() >= 1:
                return sent
            if time.monotonic() > deadline:
                raise TimeoutError(f"the probe event never reached edge.db; stderr:\n{edge.stderr_tail()}")
            time.sleep(0.02)


def publish_one(port: int, topic: str, payload: bytes) -> None:
    subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s"],
        input=payload,
        check=True,
        timeout=30,
        stdout=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def tempdir(prefix: str, base: str | None = None, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if keep:
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)

"""Raw SQLite, no EdgeKite code: random UUIDv4 ids inserted into a store that already holds
N rows, with the id as a unique index of ``events`` (A, the layout before schema 4) or in two
tiers, a small recent table plus one key range merged into the big one per transaction (B,
what ``edgekite/store/id_index.py`` does). The prototype behind that design. C (not shipped,
``KINDS=B,C``) keeps the recent tier in an attached in-memory database with an append-only
log for durability, to see what the recent tier's page writes cost.

    .venv/bin/python bench/sqlite_id_tiers.py [N]      # N = 1,200,000 by default; ~1 min after a
                                                       # one-time fill into /tmp/edgekite-bench-idtiers
    CHUNKS=32 N_RUN=300000 .venv/bin/python bench/sqlite_id_tiers.py
    KINDS=B,C N_RUN=300000 .venv/bin/python bench/sqlite_id_tiers.py

Same columns, secondary indexes and pragmas as the edge (WAL, synchronous=FULL, 4 MB cache);
payloads are random bytes. Prints events/s per round and the medians.
"""

import os
import shutil
import sqlite3
import statistics
import sys
import time

N_PRE = int(sys.argv[1]) if len(sys.argv) > 1 else 1_200_000
N_RUN = int(os.environ.get("N_RUN", "100000"))
B = 1000
CHUNKS = int(os.environ.get("CHUNKS", "64"))
CACHE = int(os.environ.get("CACHE_MB", "4"))
D = os.environ.get("DATA_DIR", "/tmp/edgekite-bench-idtiers")
os.makedirs(D, exist_ok=True)

COLS = "observed_at INTEGER NOT NULL, received_at INTEGER NOT NULL, source_type TEXT NOT NULL, source_id TEXT NOT NULL, source_seq INTEGER, category TEXT NOT NULL, type TEXT NOT NULL, severity TEXT NOT NULL DEFAULT 'info', payload_json BLOB, meta_json BLOB, synced INTEGER NOT NULL DEFAULT 0"
IDX = """
CREATE INDEX idx_events_observed ON events(observed_at);
CREATE INDEX idx_events_source_observed ON events(source_id, observed_at);
CREATE INDEX idx_events_type_observed ON events(type, observed_at);
CREATE INDEX idx_events_alerts ON events(received_at) WHERE severity IN ('error', 'critical');
"""
SCHEMA_A = f"CREATE TABLE events (event_id BLOB PRIMARY KEY, {COLS});" + IDX
SCHEMA_B = (
    f"CREATE TABLE events (event_id BLOB NOT NULL, {COLS});"
    + IDX
    + """
CREATE TABLE event_ids (event_id BLOB PRIMARY KEY, rid INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE recent_ids (event_id BLOB PRIMARY KEY, rid INTEGER NOT NULL) WITHOUT ROWID;
"""
)
TYPES = ["page_view", "person", "vehicle", "reading", "heartbeat", "error", "login"]
T0 = 1_700_000_000_000


def rows(start, n):
    out = []
    for i in range(start, start + n):
        t = T0 + i * 10
        out.append(
            (
                os.urandom(16),
                t,
                t,
                "sensor",
                f"dev-{i % 50}",
                i,
                "iot",
                TYPES[i % 7],
                "error" if i % 97 == 0 else "info",
                os.urandom(120),
                os.urandom(60),
            )
        )
    return out


def conn(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA cache_size=-{CACHE * 1024}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("PRAGMA wal_autocheckpoint=4096")
    return c


INS_A = "INSERT OR IGNORE INTO events (event_id, observed_at, received_at, source_type, source_id, source_seq, category, type, severity, payload_json, meta_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
INS_B = "INSERT INTO events (rowid, event_id, observed_at, received_at, source_type, source_id, source_seq, category, type, severity, payload_json, meta_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"


def prefill(kind):
    path = f"{D}/{kind}.db"
    if os.path.exists(path):
        return path
    c = conn(path)
    c.executescript(SCHEMA_A if kind == "A" else SCHEMA_B)
    for s in range(0, N_PRE, 50_000):
        rs = rows(s, 50_000)
        c.execute("BEGIN")
        if kind == "A":
            c.executemany(INS_A, rs)
        else:
            c.executemany(INS_B, [(s + j + 1, *r) for j, r in enumerate(rs)])
            c.executemany(
                "INSERT INTO event_ids VALUES (?,?)", sorted((r[0], s + j + 1) for j, r in enumerate(rs))
            )
        c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return path


def run_a(c, batches):
    for b in batches:
        c.execute("BEGIN IMMEDIATE")
        before = c.total_changes
        c.executemany(INS_A, b)
        assert c.total_changes - before == len(b)
        c.execute("COMMIT")


def bounds(k):
    lo = bytes([k * 256 // CHUNKS]) if k else b""
    hi = bytes([(k + 1) * 256 // CHUNKS]) if k + 1 < CHUNKS else None
    return lo, hi


def run_b(c, batches, mem=False):
    """mem (C): the recent tier lives in an attached in-memory database, made durable by an
    append-only log keyed by the event's rowid, cut after each full merge cycle."""
    recent = "recent_ids"
    if mem:
        c.execute("CREATE TABLE IF NOT EXISTS recent_log (rid INTEGER PRIMARY KEY, event_id BLOB NOT NULL)")
        c.execute("ATTACH DATABASE ':memory:' AS mem")
        c.execute(
            "CREATE TABLE mem.recent_ids (event_id BLOB PRIMARY KEY, rid INTEGER NOT NULL) WITHOUT ROWID"
        )
        recent = "mem.recent_ids"
    mark = 0
    (nxt,) = c.execute("SELECT coalesce(max(rowid),0)+1 FROM events").fetchone()
    k = 0
    for b in batches:
        c.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in b]
        dup = 0
        for s in range(0, len(ids), 500):
            ch = ids[s : s + 500]
            m = ",".join("?" * len(ch))
            dup += c.execute(f"SELECT count(*) FROM event_ids WHERE event_id IN ({m})", ch).fetchone()[0]
        assert dup == 0
        before = c.total_changes
        pairs = sorted((r[0], nxt + j) for j, r in enumerate(b))
        c.executemany(f"INSERT OR IGNORE INTO {recent} VALUES (?,?)", pairs)
        assert c.total_changes - before == len(b)
        if mem:
            c.executemany(
                "INSERT INTO recent_log (rid, event_id) VALUES (?,?)",
                [(nxt + j, r[0]) for j, r in enumerate(b)],
            )
        c.executemany(INS_B, [(nxt + j, *r) for j, r in enumerate(b)])
        nxt += len(b)
        lo, hi = bounds(k)
        if mem and k == 0:
            (mark,) = c.execute("SELECT coalesce(max(rid), 0) FROM recent_log").fetchone()
        k = (k + 1) % CHUNKS
        if hi is None:
            c.execute(
                f"INSERT INTO event_ids SELECT event_id, rid FROM {recent} WHERE event_id >= ? ORDER BY event_id",
                (lo,),
            )
            c.execute(f"DELETE FROM {recent} WHERE event_id >= ?", (lo,))
            if mem:  # a full cycle: every id logged before it began is in the big tier now
                c.execute("DELETE FROM recent_log WHERE rid <= ?", (mark,))
        else:
            c.execute(
                f"INSERT INTO event_ids SELECT event_id, rid FROM {recent} WHERE event_id >= ? AND event_id < ? ORDER BY event_id",
                (lo, hi),
            )
            c.execute(f"DELETE FROM {recent} WHERE event_id >= ? AND event_id < ?", (lo, hi))
        c.execute("COMMIT")


KINDS = os.environ.get("KINDS", "A,B").split(",")
res: dict[str, list[float]] = {k: [] for k in KINDS}
for rnd in range(3):
    for kind in KINDS:
        src = prefill("A" if kind == "A" else "B")
        dst = f"{D}/{kind}-run.db"
        for ext in ("", "-wal", "-shm"):
            if os.path.exists(dst + ext):
                os.remove(dst + ext)
        shutil.copy(src, dst)
        c = conn(dst)
        rs = rows(N_PRE + 10, N_RUN)
        batches = [rs[i : i + B] for i in range(0, N_RUN, B)]
        t = time.perf_counter()
        if kind == "A":
            run_a(c, batches)
        else:
            run_b(c, batches, mem=kind == "C")
        el = time.perf_counter() - t
        c.close()
        res[kind].append(N_RUN / el)
        print(rnd, kind, round(N_RUN / el), flush=True)
print({k: round(statistics.median(v)) for k, v in res.items()})

"""WAL checkpoints on their own thread, so the writer only appends.

A checkpoint copies the WAL's pages back into edge.db and, with ``synchronous = FULL``, fsyncs
the file. When producers send random (UUIDv4) ids, every insert dirties a different page of
the ``event_id`` index, and SQLite's automatic checkpoint, which runs inside the writer's
commit, copies ~4 KiB per event back on the ingest path. SQLite lets a PASSIVE checkpoint on
another connection run while the writer goes on appending, so on a two-core box that copying
moves off the writer's thread (measured in ``bench/README-issue4.md``: the writer alone x1.11
with random ids on a 1.2M-event store, no change with time-ordered ones).

Left alone, such a checkpointer never catches up with a writer that commits continuously, and
the WAL could only grow: SQLite rewinds the WAL only when a write transaction starts with every
frame already copied back. :meth:`WalCheckpointer.should_finish` tells the writer when the
remaining gap is small enough to close inline, between two batches; the writer's size bound
(``store.wal_max_bytes``) stays the backstop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from edgekite.config import StoreSection
from edgekite.metrics import EdgeMetrics
from edgekite.store.schema import checkpoint_frames, connect

log = logging.getLogger(__name__)


class WalCheckpointer:
    """A thread that runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds."""

    def __init__(
        self,
        db_path: Path,
        store: StoreSection,
        metrics: EdgeMetrics,
        *,
        interval: float = 0.05,
        finish_lag_frames: int = 1000,
    ) -> None:
        self._db_path = db_path
        self._seconds = metrics.wal_checkpoint_seconds.labels("background")
        self._store = store
        self._interval = interval
        self._finish_lag = finish_lag_frames
        self.rewind_frames = checkpoint_frames(store)  # as the automatic checkpoint would
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (frames in the WAL, frames copied back) after the last checkpoint; -1 before the first.
        self.state: tuple[int, int] = (-1, -1)

    def start(self) -> WalCheckpointer:
        conn = connect(self._db_path, self._store)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="edgekite-checkpoint", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def should_finish(self) -> bool:
        """True when the writer should checkpoint the rest itself, so the WAL can be rewound."""
        frames, copied = self.state
        return frames >= self.rewind_frames and frames - copied <= self._finish_lag

    def finished(self) -> None:
        """The writer copied the rest: wait for the next run's figures before finishing again."""
        self.state = (0, 0)

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            self._loop(conn)
        except Exception:  # the writer's WAL bound still holds without this thread: say so, go on
            log.exception("background checkpoints stopped; the writer now checkpoints at half the WAL bound")
            self.state = (-1, -1)
        finally:
            conn.close()

    def _loop(self, conn: sqlite3.Connection) -> None:
        while not self._stop.wait(self._interval):
            t0 = time.perf_counter()
            try:
                _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.OperationalError as exc:  # e.g. SQLITE_BUSY against a TRUNCATE: try again later
                log.debug("background checkpoint skipped: %s", exc)
                continue
            state = (int(frames), int(copied))
            if copied > 0 and state != self.state:  # count the runs that copied something
                self._seconds.inc(time.perf_counter() - t0)
            self.state = state

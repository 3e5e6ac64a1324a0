"""The visitor-id salts hub ingest uses: one per UTC day, kept ``salt_keep_days``, then deleted.

Ingest computes each web event's visitor id from the full IP before storing it (the IP is then
truncated), so the salts must be at hand on the ingest path: they are held in memory and
refreshed from the ``salts`` table, which every hub process shares (the first salt written for a
day wins, so several hubs on one ClickHouse server converge on one salt per day).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from edgekite.hubstore import HubStore
from edgekite.hubstore.analytics import load_salts, purge_expired_salts, save_salt
from edgekite.visitor import DailySalts, utc_day

log = logging.getLogger(__name__)


class SaltKeeper:
    def __init__(self, store: HubStore, keep_days: int) -> None:
        self._store = store
        self._salts = DailySalts({}, keep_days)
        self._lock = threading.Lock()
        self._rotating = False
        self._plain: dict[int, bytes] = {}

    def rotate(self, now_ms: int | None = None) -> None:
        """Load, create today's salt if missing, delete expired ones. Blocking: the store thread."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            self._rotate(now)
        finally:
            with self._lock:
                self._rotating = False

    def _rotate(self, now: int) -> None:
        stored = DailySalts(load_salts(self._store), self._salts.keep_days)
        rotated = stored.rotated(now)
        for day, salt in rotated.added(stored).items():
            save_salt(self._store, day, salt, now)
        expired = stored.expired(now)
        if expired:
            purge_expired_salts(self._store, expired)
            log.info("deleted the visitor-id salts of %d expired day(s)", len(expired))
        fresh = DailySalts(load_salts(self._store), self._salts.keep_days)  # the first writer's salt wins
        live = DailySalts({d: s for d, s in fresh.salts.items() if d not in expired}, fresh.keep_days)
        with self._lock:
            self._salts = live
            self._plain = dict(live.salts)  # picklable: it travels to the decode workers

    def current(self, now_ms: int) -> Mapping[int, bytes]:
        """The live salts for a batch received at ``now_ms``; asks for a rotation after midnight.

        Never blocks the ingest path: until the new day's salt exists (a store round trip), events
        observed that day get visitor id 0 (unknown) rather than wait.
        """
        with self._lock:
            salts = self._plain
            due = utc_day(now_ms) not in salts and not self._rotating
            if due:
                self._rotating = True
        if due:
            self._store.submit(lambda: self.rotate(now_ms))
        return salts

"""The salt keeper hub ingest hashes visitors with: one salt per day, shared, expiring."""

from __future__ import annotations

from pathlib import Path

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore
from edgekite.hubstore.analytics import ensure_analytics, load_salts
from edgekite.visitor import utc_day
from hub_ingest.salts import SaltKeeper

DAY = 86_400_000
T0 = 1_800_000_000_000


def test_todays_salt_is_created_kept_shared_and_expired(tmp_path: Path) -> None:
    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(tmp_path / "hub")}}))
    store.open()
    try:
        ensure_analytics(store)
        keeper = SaltKeeper(store, keep_days=2)
        keeper.rotate(T0)
        today = utc_day(T0)
        salts = keeper.current(T0)
        assert list(salts) == [today] and len(salts[today]) == 32
        assert load_salts(store) == dict(salts), "stored, so every hub process uses the same salt"
        other = SaltKeeper(store, keep_days=2)
        other.rotate(T0)
        assert other.current(T0) == salts, "a second keeper adopts the stored salt"
        keeper.rotate(T0 + DAY)
        assert set(keeper.current(T0 + DAY)) == {today, today + 1}
        keeper.rotate(T0 + 2 * DAY)
        assert set(keeper.current(T0 + 2 * DAY)) == {today + 1, today + 2}
        assert today not in load_salts(store), "an expired salt is deleted from storage"
    finally:
        store.close()

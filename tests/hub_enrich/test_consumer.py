"""The enrichment consumer and the rerun on real chDB: watermark, lag margin, restart, sweep,
re-enrichment after a bot-list change (numbers move, no rows added), no raw IP anywhere."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.hubstore import HubStore
from edgekite.hubstore.analytics import (
    ENRICHED_TABLE,
    SALTS_TABLE,
    STATE_TABLE,
    load_salts,
    purge_expired_salts,
    save_salt,
    table_columns,
)
from edgekite.visitor import DAY_MS, utc_day
from hub_enrich.bots import BotDetector
from hub_enrich.consumer import EnrichmentConsumer, load_state
from hub_enrich.enrich import Enricher
from hub_enrich.rerun import Progress, parse_since, rerun
from hub_enrich.ua import UaParser
from tests.hub_enrich.rawrows import (
    FARMWATCH,
    MIN,
    SAFARI_IOS,
    T0,
    VISITOR_ID_MIGRATION,
    insert_raw,
    open_store,
    page_view,
    reset,
    rows,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStore]:
    with open_store(Path(tmp_path_factory.mktemp("hub-consumer"))) as s:
        yield s


@pytest.fixture
def clean(store: HubStore) -> Iterator[HubStore]:
    reset(store)
    store.command(VISITOR_ID_MIGRATION.replace("{db}", store.database))
    yield store
    store.command(VISITOR_ID_MIGRATION.replace("{db}", store.database))


def count(store: HubStore, sql: str) -> int:
    return int(rows(store, sql)[0][0])


def test_lag_margin_picks_up_a_batch_committed_late_with_an_earlier_stamp(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    store = clean
    now = [T0 + 60 * MIN]
    c = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), lag_ms=30_000, clock=lambda: now[0])
    # Batch 2, stamped at now-10 s, commits first; batch 1, stamped at now-20 s, is still queued.
    insert_raw(store, [page_view("s1", "/two", T0, visitor=1, hub_at=now[0] - 10_000)])
    assert c.step() == 0  # both stamps are inside the 30 s margin: nothing read yet
    insert_raw(store, [page_view("s1", "/one", T0, visitor=1, hub_at=now[0] - 20_000)])
    now[0] += 25_000
    assert c.catch_up() == 2
    assert count(store, "SELECT count() FROM {db}.web_events") == 2
    state = load_state(store, "default")
    assert state.rows_total == 2 and state.seq == 1


def test_sweep_catches_a_commit_later_than_the_margin(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    store = clean
    now = T0 + 60 * MIN
    c = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), lag_ms=1_000, clock=lambda: now)
    insert_raw(store, [page_view("s1", "/a", T0, visitor=1, hub_at=now - 5_000)])
    assert c.catch_up() == 1
    # A batch stamped before the watermark commits only now (a storage outage longer than lag_ms).
    insert_raw(store, [page_view("s1", "/b", T0, visitor=1, hub_at=now - 9_000)])
    assert c.step() == 0
    assert c.sweep() == 1
    assert c.sweep() == 0
    assert count(store, "SELECT count() FROM {db}.web_events") == 2


def test_restart_does_not_enrich_twice_and_flags_a_fingerprint_change(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector, caplog: pytest.LogCaptureFixture
) -> None:
    store = clean
    now = T0 + 60 * MIN
    insert_raw(store, [page_view("s1", f"/{i}", T0 + i * MIN, visitor=7) for i in range(5)])
    first = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), batch_rows=2, clock=lambda: now)
    assert first.step() == 2
    second = EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), batch_rows=2, clock=lambda: now)
    assert second.catch_up() == 3
    assert not second.fingerprint_changed
    assert count(store, f"SELECT count() FROM {{db}}.{ENRICHED_TABLE}") == 5  # raw rows, before any merge
    assert load_state(store, "default").rows_total == 5
    changed = Enricher(ua_parser, BotDetector(["FarmWatch"]))
    third = EnrichmentConsumer(store, changed, clock=lambda: now)
    assert third.step() == 0
    assert third.fingerprint_changed
    assert "--rerun" in caplog.text


def test_rerun_after_a_bot_list_change_moves_the_numbers_and_adds_no_rows(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    store = clean
    m = MIN
    traffic = [
        page_view("s1", "/", T0, visitor=1),
        page_view("s1", "/p", T0 + 2 * m, visitor=1),
        page_view("s1", "/", T0 + 3 * m, visitor=2, ua=SAFARI_IOS),
        # An unknown crawler, human to crawlerdetect: 3 views, one visit of 240 s.
        page_view("s1", "/", T0 + 1 * m, visitor=3, ua=FARMWATCH),
        page_view("s1", "/a", T0 + 3 * m, visitor=3, ua=FARMWATCH),
        page_view("s1", "/b", T0 + 5 * m, visitor=3, ua=FARMWATCH),
    ]
    insert_raw(store, traffic)
    insert_raw(store, traffic[:2])  # a batch stored twice: 6 distinct events, 8 raw rows
    now = T0 + 60 * m
    EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), clock=lambda: now).catch_up()
    overview = "SELECT pageviews, visitors, visits, bounces, total_duration FROM {db}.web_daily"
    assert rows(store, overview) == [(6, 3, 3, 1, 360)]

    progress_out = io.StringIO()
    new_list = Enricher(ua_parser, BotDetector([r"FarmWatch/\d"]))
    result = rerun(store, new_list, progress=Progress(0, progress_out), clock=lambda: now)
    assert (result.rows, result.total) == (6, 6)

    assert rows(store, overview) == [(3, 2, 2, 1, 120)]  # FarmWatch's 3 views and 240 s left
    assert rows(store, "SELECT pageviews, visitors, visits FROM {db}.web_daily_all") == [(6, 3, 3)]
    assert rows(store, "SELECT bot_name FROM {db}.web_events WHERE visitor_id = 3 LIMIT 1") == [
        ("FarmWatch/2",)
    ]
    distinct_raw = count(store, "SELECT uniqExact(event_id) FROM {db}.events")
    assert distinct_raw == 6
    assert count(store, f"SELECT count() FROM {{db}}.{ENRICHED_TABLE} FINAL") == distinct_raw
    store.command(f"OPTIMIZE TABLE {store.table(ENRICHED_TABLE)} FINAL")
    assert count(store, f"SELECT count() FROM {{db}}.{ENRICHED_TABLE}") == distinct_raw
    assert rows(store, overview) == [(3, 2, 2, 1, 120)]
    assert load_state(store, "rerun").fingerprint == new_list.fingerprint

    # --since (observed time) re-enriches only the later events.
    since = rerun(store, new_list, since_ms=T0 + 3 * m, clock=lambda: now)
    assert (since.rows, since.total) == (3, 3)
    assert count(store, f"SELECT count() FROM {{db}}.{ENRICHED_TABLE} FINAL") == distinct_raw


def test_progress_line_format() -> None:
    out = io.StringIO()
    t = [0.0]
    bar = Progress(3_400_000, out, clock=lambda: t[0])
    t[0] = 12.63
    bar.update(1_200_000)
    bar.finish()
    assert out.getvalue().splitlines()[0] == "enrich: 1,200,000 / 3,400,000 (35 %) 95,012 ev/s"
    assert parse_since("2024-06-01") == T0
    assert parse_since(str(T0)) == T0


IP4, IP6 = "203.0.113.77", "2001:db8:5:6::77"


def test_without_a_stored_visitor_id_ids_come_from_the_salts_and_no_ip_is_stored(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    """Before the ingest migration: no visitor_id column; the consumer hashes data.ip with the
    stored salt of the day. Afterwards no table of the analytics layer holds an IP, and a rerun
    after the salt is gone keeps the ids."""
    store = clean
    store.command(f"ALTER TABLE {store.table('events')} DROP COLUMN IF EXISTS visitor_id")
    # Today, not 2024: the salts table's TTL drops salts of days long gone at insert time.
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    day = utc_day(today)
    save_salt(store, day, b"\x01" * 32, now_ms=today)
    save_salt(store, day, b"\x02" * 32, now_ms=today + 1)  # a racing writer's later salt loses
    assert load_salts(store) == {day: b"\x01" * 32}
    traffic = [
        page_view("s1", "/", today, ip=IP4),
        page_view("s1", "/x", today + MIN, ip=IP4),
        page_view("s1", "/", today + 2 * MIN, ip=IP6, ua=SAFARI_IOS),
    ]
    insert_raw(store, traffic, with_visitor_id=False)
    now = today + 60 * MIN
    EnrichmentConsumer(store, Enricher(ua_parser, bot_detector), clock=lambda: now).catch_up()
    ids = rows(store, "SELECT visitor_id FROM {db}.web_events ORDER BY observed_at")
    assert ids[0] == ids[1] != ids[2] and all(i[0] != 0 for i in ids)
    assert rows(store, "SELECT visitors, visits FROM {db}.web_daily") == [(2, 2)]

    purge_expired_salts(store, [day])
    assert load_salts(store) == {}
    rerun(store, Enricher(ua_parser, bot_detector), clock=lambda: now)
    assert rows(store, "SELECT visitor_id FROM {db}.web_events ORDER BY observed_at") == ids

    for table in (ENRICHED_TABLE, STATE_TABLE, SALTS_TABLE):
        for column, ctype in table_columns(store, table).items():
            if "String" not in ctype and "UUID" not in ctype:
                continue
            for needle in (IP4, IP6, "203.0.113.", "2001:db8:5"):
                hits = store.query_rows(
                    f"SELECT count() FROM {store.table(table)} "
                    f"WHERE position(toString({column}), {{needle:String}}) > 0",
                    {"needle": needle},
                )[0][0]
                assert hits == 0, (table, column, needle)


def test_enrichment_yields_to_ingest_while_edges_are_sending(
    clean: HubStore, ua_parser: UaParser, bot_detector: BotDetector
) -> None:
    """After a full step, while batches are being committed, the consumer pauses so that it
    takes at most ``busy_share`` of the time; with ingest quiet it catches up without pausing."""
    busy = [True]
    c = EnrichmentConsumer(
        clean, Enricher(ua_parser, bot_detector), ingest_busy=lambda: busy[0], busy_share=0.25
    )
    assert c.yield_pause(0.2) == pytest.approx(0.6)  # 0.2 s of work, then 0.6 s for ingest
    assert c.yield_pause(60.0) == 10.0, "never parked for long"
    busy[0] = False
    assert c.yield_pause(0.2) == 0.0
    unlimited = EnrichmentConsumer(clean, Enricher(ua_parser, bot_detector), ingest_busy=lambda: True)
    assert unlimited.yield_pause(0.2) == 0.0, "busy_share 1 (the default) never pauses"
    with pytest.raises(ValueError, match="busy_share"):
        EnrichmentConsumer(clean, Enricher(ua_parser, bot_detector), busy_share=0)

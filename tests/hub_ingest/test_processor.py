"""BatchProcessor against a real chDB: exactly once in effect, auth, dead letters, rate limits.

One store per module (chDB start costs ~1 s); each test uses its own edge ids so they do not
see each other's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.config import HubConfig
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore, StorageError
from edgekite.hubstore.arrow import BATCHES_SCHEMA, table_from_rows
from edgekite.sync_protocol import sign
from hub_ingest.processor import BatchProcessor, PreparedBatch
from tests.hub_ingest.helpers import KEY_A, KEY_B, batch, envelopes, hub_config, metric


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStore]:
    s = HubStore(hub_config(tmp_path_factory.mktemp("hub") / "data"))
    s.open()
    yield s
    s.close()


def _processor(store: HubStore, **sections: object) -> BatchProcessor:
    cfg: HubConfig = hub_config(Path(store.config.hub.data_dir), **sections)
    return BatchProcessor(cfg, store, HubMetrics())


def _count(store: HubStore, edge: str, *, final: bool = False) -> int:
    if final:
        store.command(f"OPTIMIZE TABLE {store.table('events')} FINAL")
    rows = store.query_rows(
        f"SELECT count() FROM {store.table('events')} WHERE edge_id = {{e:String}}", {"e": edge}
    )
    return int(rows[0][0])


def _ledger(store: HubStore, edge: str) -> tuple[int, int]:
    rows = store.query_rows(
        f"SELECT sum(events), count() FROM {store.table('batches')} FINAL WHERE edge_id = {{e:String}}",
        {"e": edge},
    )
    return int(rows[0][0]), int(rows[0][1])


def test_resent_batch_changes_no_number(store: HubStore) -> None:
    p = _processor(store)
    payload = batch("resend", "s:1-100", envelopes(100, seed=11))
    first = p.process("resend", payload, None)
    assert first.status == "ok" and first.accepted == 100 and not first.duplicate
    again = p.process("resend", payload, None)
    assert again.status == "ok" and again.duplicate and again.accepted == 100
    assert _ledger(store, "resend") == (100, 1)
    assert _count(store, "resend") == 100
    assert _count(store, "resend", final=True) == 100
    assert metric(p.metrics.render().decode(), "edgekite_hub_batches_duplicate_total") == 1


def test_rebatched_resend_is_not_double_counted_in_storage(store: HubStore) -> None:
    p = _processor(store)
    evs = envelopes(60, seed=12)
    assert p.process("rebatch", batch("rebatch", "s:1-60", evs), None).accepted == 60
    # The same events under other batch ids (the edge re-cut its batches): new to the ledger,
    # so they are inserted again ...
    assert p.process("rebatch", batch("rebatch", "s:1-30", evs[:30]), None).accepted == 30
    assert p.process("rebatch", batch("rebatch", "s:31-60", evs[30:]), None).accepted == 30
    # ... and collapse in the ReplacingMergeTree: storage holds each event once after the merge.
    assert _count(store, "rebatch", final=True) == 60
    # The ledger counts what each batch brought, so /api/fleet says 120 for this edge here:
    # a re-cut batch is the one case the ledger over-counts (the edge keeps batch ids
    # deterministic, store_id:first-last, precisely so that a resend reuses its id).
    assert _ledger(store, "rebatch") == (120, 3)
    rows = store.query_rows(
        f"SELECT count() FROM (SELECT event_id FROM {store.table('events')} "
        "WHERE edge_id = {e:String} LIMIT 1 BY event_id)",
        {"e": "rebatch"},
    )
    assert rows[0][0] == 60


def test_a_batch_whose_ledger_row_was_never_written_is_recovered_not_stored_twice(store: HubStore) -> None:
    """A crash between a batch's events insert and its ledger row: the next process writes the
    ledger row from batches_pending before it commits, and the redelivery is a duplicate."""
    dead = _processor(store)
    payload = batch("halfway", "s:1-40", envelopes(40, seed=13))
    prepared = dead.prepare("halfway", payload, None)
    assert isinstance(prepared, PreparedBatch)
    dead._insert_batch(prepared)  # pending row and events; then the hub died
    assert _count(store, "halfway") == 40 and _ledger(store, "halfway") == (0, 0)
    p = _processor(store)
    assert p.recover() == 1
    ack = p.process("halfway", payload, None)
    assert ack.status == "ok" and ack.duplicate and ack.accepted == 40
    assert _count(store, "halfway") == 40  # before any merge
    assert _ledger(store, "halfway") == (40, 1)


def test_an_insert_token_left_by_a_dead_hub_does_not_drop_the_resend(store: HubStore) -> None:
    """ClickHouse logs an insert's deduplication token before the part it names is committed. A
    hub killed in between leaves the token and no rows (seen in the kill -9 test: a 162-event
    batch acknowledged, its events nowhere). Here the rows are deleted after a full commit,
    which leaves the same state: the next process must store the resend."""
    dead = _processor(store)
    payload = batch("tokenlost", "s:1-30", envelopes(30, seed=17))
    assert dead.process("tokenlost", payload, None).accepted == 30
    for table in ("events", "batches", "batches_pending"):
        store.command(f"DELETE FROM {store.table(table)} WHERE edge_id = 'tokenlost'")
    assert _count(store, "tokenlost") == 0 and _ledger(store, "tokenlost") == (0, 0)
    p = _processor(store)
    assert p.recover() == 0
    ack = p.process("tokenlost", payload, None)
    assert ack.status == "ok" and not ack.duplicate and ack.accepted == 30
    assert _count(store, "tokenlost") == 30
    assert _ledger(store, "tokenlost") == (30, 1)


def test_forged_batches_are_refused_and_counted(store: HubStore) -> None:
    p = _processor(store, edges={"edge-a": {"api_key": KEY_A}, "edge-b": {"api_key": KEY_B}})
    assert not p.dev_mode
    evs = envelopes(5, seed=14)
    good = batch("edge-a", "s:1-5", evs)
    cases = {
        "bad_signature": p.process("edge-a", good, sign(KEY_B, good)),
        "edge_mismatch": p.process("edge-b", good, sign(KEY_A, good)),  # a's batch on b's topic
        "unknown_edge": p.process("edge-z", batch("edge-z", "s:1-5", evs), sign(KEY_A, good)),
        "bad_key": p.process(None, good, None, http_key=KEY_B, transport="http"),
    }
    missing_sig = p.process("edge-a", good, None)
    assert missing_sig.status == "refused" and (missing_sig.reason or "").startswith("bad_signature")
    text = p.metrics.render().decode()
    for reason, ack in cases.items():
        assert ack.status == "refused", reason
        assert (ack.reason or "").startswith(reason)
        want = 2 if reason == "bad_signature" else 1
        assert metric(text, "edgekite_hub_batches_refused_total", f'reason="{reason}"') == want
    assert _count(store, "edge-a") == 0
    assert p.process("edge-a", good, sign(KEY_A, good)).status == "ok"
    http_ok = p.process(None, batch("edge-b", "s:1-5", evs), None, http_key=KEY_B, transport="http")
    assert http_ok.status == "ok"
    garbage = p.process("edge-a", b"not zstd at all", None)
    assert garbage.status == "refused" and (garbage.reason or "").startswith("bad_compression")


def test_invalid_events_go_to_dead_letter_good_ones_are_stored(store: HubStore) -> None:
    p = _processor(store)
    evs = envelopes(10, seed=15)
    bad = {**evs[3], "event": {**evs[3]["event"], "severity": "apocalyptic"}}
    no_id = {k: v for k, v in evs[4].items() if k != "event_id"}
    mixed = [*evs[:3], bad, no_id, *evs[5:]]
    ack = p.process("dl", batch("dl", "s:1-10", mixed), None)
    assert ack.status == "ok" and ack.accepted == 8
    assert {(r.index, r.code) for r in ack.rejected} == {(3, "invalid_envelope"), (4, "missing_event_id")}
    rows = store.query_rows(
        f"SELECT event_index, code, reason, payload FROM {store.table('dead_letter')} "
        "WHERE edge_id = {e:String} ORDER BY event_index",
        {"e": "dl"},
    )
    assert [(r[0], r[1]) for r in rows] == [(3, "invalid_envelope"), (4, "missing_event_id")]
    assert "severity" in rows[0][2] and "apocalyptic" in rows[0][3]
    assert _count(store, "dl") == 8
    assert _ledger(store, "dl") == (8, 1)
    text = p.metrics.render().decode()
    assert metric(text, "edgekite_hub_events_rejected_total", 'code="missing_event_id"') == 1
    assert metric(text, "edgekite_hub_events_accepted_total") == 8


def test_rate_limit_answers_retry(store: HubStore) -> None:
    clock = [100.0]
    cfg = hub_config(
        Path(store.config.hub.data_dir),
        ingest={"rate_limit_events_per_sec": 100, "rate_limit_burst_events": 100},
    )
    p = BatchProcessor(cfg, store, HubMetrics(), monotonic=lambda: clock[0])
    evs = envelopes(160, seed=16)
    assert p.process("rl", batch("rl", "s:1-80", evs[:80]), None).status == "ok"
    ack = p.process("rl", batch("rl", "s:81-160", evs[80:], first_seq=81), None)
    assert ack.status == "retry" and ack.retry_after_ms is not None and 500 <= ack.retry_after_ms <= 700
    assert metric(p.metrics.render().decode(), "edgekite_hub_batches_retry_total", 'reason="rate_limit"') == 1
    clock[0] += ack.retry_after_ms / 1000
    assert p.process("rl", batch("rl", "s:81-160", evs[80:], first_seq=81), None).status == "ok"
    assert _ledger(store, "rl") == (160, 2)


def test_ingest_counts_as_busy_for_a_second_after_each_commit(store: HubStore) -> None:
    """What the enrichment consumer asks before taking the store: are edges sending now?"""
    clock = [500.0]
    p = BatchProcessor(
        hub_config(Path(store.config.hub.data_dir)), store, HubMetrics(), monotonic=lambda: clock[0]
    )
    assert not p.ingest_busy(), "nothing committed yet"
    assert p.process("busy", batch("busy", "b:1-5", envelopes(5, seed=51)), None).status == "ok"
    clock[0] += 0.5
    assert p.ingest_busy()
    clock[0] += 1.0
    assert not p.ingest_busy()


def test_storage_failure_answers_retry_never_raises(tmp_path: Path) -> None:
    cfg = hub_config(tmp_path / "never-opened")
    p = BatchProcessor(cfg, HubStore(cfg), HubMetrics())  # the store is not open: every call fails
    ack = p.process("down", batch("down", "s:1-3", envelopes(3)), None)
    assert ack.status == "retry" and ack.retry_after_ms and (ack.reason or "").startswith("storage")
    assert metric(p.metrics.render().decode(), "edgekite_hub_batches_retry_total", 'reason="storage"') == 1


def test_group_commit_stores_each_batch_once_and_answers_each(store: HubStore) -> None:
    """commit_many: new batches, one already in the ledger, and one batch id twice in the group."""
    p = _processor(store)
    evs = envelopes(90, seed=17)
    payloads = [batch("group", f"s:{i}", evs[i * 30 : (i + 1) * 30]) for i in range(3)]
    assert p.process("group", payloads[0], None).accepted == 30  # already in the ledger
    prepared = [p.prepare("group", pl, None) for pl in (payloads[0], payloads[1], payloads[2], payloads[1])]
    assert all(isinstance(x, PreparedBatch) for x in prepared)
    acks = p.commit_many([x for x in prepared if isinstance(x, PreparedBatch)])
    assert [(a.batch_id, a.status, a.accepted, a.duplicate) for a in acks] == [
        ("s:0", "ok", 30, True),
        ("s:1", "ok", 30, False),
        ("s:2", "ok", 30, False),
        ("s:1", "ok", 30, True),
    ]
    assert _ledger(store, "group") == (90, 3)
    assert _count(store, "group") == 90  # before any merge
    rows = store.query_rows(
        f"SELECT count() FROM {store.table('batches')} WHERE edge_id = {{e:String}}", {"e": "group"}
    )
    assert rows[0][0] == 3  # no ledger row twice, even before a merge


def test_a_group_whose_ledger_rows_were_lost_is_recovered_and_its_resend_regrouped(store: HubStore) -> None:
    """Crash after a group's events insert, before its ledger insert: the next process writes the
    ledger rows before it commits anything, and the resend, cut into other groups, is answered
    as duplicates instead of stored twice."""
    dead = _processor(store)
    payloads = [batch("regroup", f"s:{i}", envelopes(20, seed=180 + i)) for i in range(4)]
    prepared = [dead.prepare("regroup", pl, None) for pl in payloads]
    assert all(isinstance(x, PreparedBatch) for x in prepared)
    dead._insert_group([x for x in prepared[:3] if isinstance(x, PreparedBatch)])  # then the hub died
    assert _count(store, "regroup") == 60 and _ledger(store, "regroup") == (0, 0)

    p = _processor(store)
    assert p.recover() == 3
    assert _ledger(store, "regroup") == (60, 3)
    again = [p.prepare("regroup", pl, None) for pl in payloads]
    acks = p.commit_many([x for x in again[:2] if isinstance(x, PreparedBatch)])
    acks += p.commit_many([x for x in again[2:] if isinstance(x, PreparedBatch)])
    assert [a.duplicate for a in acks] == [True, True, True, False]
    assert all(a.status == "ok" and a.accepted == 20 for a in acks)
    assert _count(store, "regroup") == 80  # before any merge
    assert _ledger(store, "regroup") == (80, 4)
    assert p.recover() == 0, "nothing is left pending once the ledger has every batch"


def test_a_group_whose_ledger_insert_failed_is_not_stored_twice_by_its_resend(
    store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage trouble after a group's events went in: every batch is answered 'retry', and
    the resend (regrouped) finds ledger rows instead of storing the events again."""
    p = _processor(store)
    payloads = [batch("ledgerfail", f"s:{i}", envelopes(10, seed=210 + i)) for i in range(3)]
    real = p._insert_ledger

    def broken(batches: object) -> None:
        monkeypatch.setattr(p, "_insert_ledger", real)
        raise StorageError("the ledger insert timed out")

    monkeypatch.setattr(p, "_insert_ledger", broken)
    first = p.commit_many(
        [x for x in (p.prepare("ledgerfail", pl, None) for pl in payloads) if isinstance(x, PreparedBatch)]
    )
    assert [a.status for a in first] == ["retry"] * 3
    assert _count(store, "ledgerfail") == 30 and _ledger(store, "ledgerfail") == (0, 0)
    again = [
        x for x in (p.prepare("ledgerfail", pl, None) for pl in payloads) if isinstance(x, PreparedBatch)
    ]
    acks = p.commit_many(again[:1]) + p.commit_many(again[1:])
    assert [(a.status, a.duplicate, a.accepted) for a in acks] == [("ok", True, 10)] * 3
    assert _count(store, "ledgerfail") == 30 and _ledger(store, "ledgerfail") == (30, 3)


def test_a_group_that_died_before_its_events_is_stored_once_on_resend(store: HubStore) -> None:
    """Crash after the pending ledger rows, before the events: recovery writes no ledger row, so
    the resend is stored (and only once)."""
    dead = _processor(store)
    payloads = [batch("halfgroup", f"s:{i}", envelopes(10, seed=190 + i)) for i in range(3)]
    prepared = [
        x for x in (dead.prepare("halfgroup", pl, None) for pl in payloads) if isinstance(x, PreparedBatch)
    ]
    dead.store.insert_arrow(
        "batches_pending",
        table_from_rows(
            BATCHES_SCHEMA, [dead._ledger_row(x.header, x.decoded, x.hub_received_at) for x in prepared]
        ),
        "group:halfgroup",
    )  # then the hub died
    p = _processor(store)
    assert p.recover() == 0
    acks = p.commit_many(
        [x for x in (p.prepare("halfgroup", pl, None) for pl in payloads) if isinstance(x, PreparedBatch)]
    )
    assert [(a.status, a.duplicate, a.accepted) for a in acks] == [("ok", False, 10)] * 3
    assert _count(store, "halfgroup") == 30 and _ledger(store, "halfgroup") == (30, 3)


def test_a_group_of_batches_is_one_insert(store: HubStore) -> None:
    """Several waiting batches become one part, not one each: small parts cost the hub most of its
    CPU in ClickHouse's merges."""
    p = _processor(store)
    prepared = [
        p.prepare("onepart", batch("onepart", f"s:{i}", envelopes(30, seed=200 + i)), None) for i in range(5)
    ]
    acks = p.commit_many([x for x in prepared if isinstance(x, PreparedBatch)])
    assert all(a.status == "ok" and a.accepted == 30 for a in acks)
    parts = store.query_rows(
        f"SELECT uniqExact(_part), count() FROM {store.table('events')} WHERE edge_id = {{e:String}}",
        {"e": "onepart"},
    )
    assert parts == [(1, 150)]
    assert _ledger(store, "onepart") == (150, 5)


def test_decode_worker_process_gives_the_same_answers(store: HubStore) -> None:
    from hub_ingest.prepare import DecodePool, PrepareContext

    cfg = hub_config(Path(store.config.hub.data_dir), edges={"edge-w": {"api_key": KEY_A}})
    pool = DecodePool(PrepareContext.from_config(cfg), 1)
    try:
        pool.start()
        p = BatchProcessor(cfg, store, HubMetrics(), decode_pool=pool)
        evs = envelopes(50, seed=19)
        bad = {**evs[7], "event": {**evs[7]["event"], "severity": "apocalyptic"}}
        good = batch("edge-w", "s:1-50", [*evs[:7], bad, *evs[8:]])
        assert (p.process("edge-w", good, sign(KEY_B, good)).reason or "").startswith("bad_signature")
        ack = p.process("edge-w", good, sign(KEY_A, good))
        assert ack.status == "ok" and ack.accepted == 49 and [r.index for r in ack.rejected] == [7]
        assert p.process("edge-w", good, sign(KEY_A, good)).duplicate
        assert _count(store, "edge-w") == 49
    finally:
        pool.shutdown()


def test_each_event_is_stored_with_its_site_by_the_rule_the_sql_default_applies(store: HubStore) -> None:
    """``site`` is written at ingest (``site_of``) and read as its SQL default for older rows:
    both must give every event the same site, so old and new rows filter alike."""
    from edgekite.hubstore.schema import SITE_SQL

    events = envelopes(300, seed=23)
    special = envelopes(3, seed=24)
    special[0]["event"]["data"]["site"] = "barn"  # data.site wins
    special[1]["source"]["metadata"] = {"site_id": "farm"}  # then the source's site_id
    special[2]["source"]["metadata"] = {"site_id": ""}  # else the source itself
    special[2]["event"]["data"].pop("site", None)
    p = _processor(store)
    assert p.process("sites", batch("sites", "s:1-303", events + special), None).status == "ok"
    rows = store.query_rows(
        f"SELECT toString(event_id), site, {SITE_SQL} FROM {store.table('events')} WHERE edge_id = 'sites'"
    )
    assert len(rows) == 303
    assert [r for r in rows if r[1] != r[2]] == []
    by_id = {r[0]: r[1] for r in rows}
    assert by_id[special[0]["event_id"]] == "barn"
    assert by_id[special[1]["event_id"]] == "farm"
    assert by_id[special[2]["event_id"]] == special[2]["source"]["id"]
    assert len({r[1] for r in rows}) > 3  # the simulator's sites and sources

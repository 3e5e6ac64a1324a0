"""The running hub enriches what it ingests, and keeps no raw visitor address anywhere."""

from __future__ import annotations

from pathlib import Path

from edgekite.config import load_hub_config
from edgekite.hubstore import HubStore
from tests.conftest import HubProcess, wait_for
from tests.hub_ingest.helpers import batch, envelopes, http, metric, post_batch


def test_the_hub_enriches_its_ingest_and_stores_no_raw_ip(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub", env={"EDGEKITE_HUB_ENRICH__LAG_SECS": "0"}).start()
    events = envelopes(400, seed=7)
    raw_ips = {e["event"]["data"]["ip"] for e in events if "ip" in e["event"].get("data", {})}
    assert raw_ips, "the simulator's web events carry visitor addresses"
    status, _, ack = post_batch(hub.http_url, batch("farm-3", "st:1-400", events), edge="farm-3")
    assert status == 200 and ack["accepted"] == 400, ack

    def enriched() -> float:
        _, _, text = http("GET", f"{hub.http_url}/metrics")
        return metric(text, "edgekite_hub_events_enriched_total")

    wait_for(lambda: enriched() >= 400, timeout=30)
    assert enriched() == 400, "each event enriched once"
    for ip in list(raw_ips)[:20]:
        _, _, found = http("GET", f"{hub.http_url}/api/events?q={ip}&limit=5")
        assert found["events"] == [], f"raw address {ip} stored"
    hub.terminate()
    web_with_ip = sum(1 for e in events if e["event"]["category"] == "web" and "ip" in e["event"]["data"])
    store = HubStore(load_hub_config(environ={}, overrides={"hub": {"data_dir": str(tmp_path / "hub")}}))
    store.open()
    try:
        ((with_id, distinct),) = store.query_rows(
            f"SELECT countIf(visitor_id != 0), uniqExact(visitor_id) FROM {store.table('events')} "
            "WHERE category = 'web'"
        )
    finally:
        store.close()
    assert with_id == web_with_ip, "every web event with an address got its visitor id at ingest"
    assert distinct > 1

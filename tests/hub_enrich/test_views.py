"""IoT and fleet views over hand-made raw rows (duplicates included), and the CLI's rerun."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekite.hubstore import HubStore
from edgekite.hubstore.analytics import ENRICHED_TABLE, view_statements
from tests.hub_enrich.rawrows import MIN, T0, insert_raw, open_store, page_view, raw_row, reset, rows

REPO = Path(__file__).resolve().parents[2]
S = 1000
H = 3_600_000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("hub-views"))


@pytest.fixture(scope="module")
def store(data_dir: Path) -> Iterator[HubStore]:
    with open_store(data_dir) as s:
        yield s


def detection(
    camera: str,
    at: int,
    conf: float,
    *,
    edge: str = "edge-1",
    incident: str | None = None,
    label: str = "person",
    event_id: str | None = None,
) -> dict[str, object]:
    return raw_row(
        category="iot",
        type=f"{label}_detected",
        source_id=camera,
        observed_at=at,
        edge=edge,
        data={"camera_id": camera, "label": label, "confidence": conf, "zone": "gate"},
        metadata={"site_id": "farm"},
        incident_id=incident,
        event_id=event_id,
    )


def test_iot_views(store: HubStore) -> None:
    reset(store)
    inc = "11111111-1111-4111-8111-111111111111"
    first = detection("cam-1", T0 + 10 * S, 0.5, incident=inc)
    events = [
        first,
        detection("cam-1", T0 + 12 * S, 0.7, incident=inc),
        detection("cam-1", T0 + 14 * S, 0.9, incident=inc),
        detection("cam-2", T0 + 20 * S, 0.6, incident=inc, edge="edge-2"),  # same incident, other edge
        # no incident id: consecutive detections <= 60 s apart are one incident
        detection("cam-3", T0 + 0 * S, 0.8, label="vehicle"),
        detection("cam-3", T0 + 30 * S, 0.6, label="vehicle"),
        detection("cam-3", T0 + 5 * MIN, 0.7, label="vehicle"),
    ]
    readings = [
        raw_row(
            category="iot",
            type="sensor_reading",
            source_id="sensor-t",
            observed_at=T0 + i * MIN,
            data={"metric": "temperature", "value": v, "unit": "C"},
            metadata={"site_id": "farm"},
            severity="warn" if v > 25 else "info",
        )
        for i, v in enumerate((10.0, 20.0, 30.0))
    ]
    errors = [
        raw_row(
            category="ops",
            type="error" if i == 0 else "heartbeat",
            source_id="gw",
            observed_at=T0 + i * S,
            data={"code": "E"},
            severity="error" if i == 0 else "info",
        )
        for i in range(4)
    ]
    insert_raw(store, events + readings + errors)
    insert_raw(store, [first, readings[0], errors[0]])  # a resent batch: every view counts them once

    hourly = rows(
        store,
        "SELECT camera_id, edge_id, label, detections, round(avg_confidence, 3), max_confidence, incidents "
        "FROM {db}.iot_detections_hourly WHERE hour = toDateTime('2024-06-01 00:00:00', 'UTC') "
        "ORDER BY camera_id",
    )
    assert hourly == [
        ("cam-1", "edge-1", "person", 3, 0.7, 0.9, 1),
        ("cam-2", "edge-2", "person", 1, 0.6, 0.6, 1),
        ("cam-3", "edge-1", "vehicle", 3, 0.7, 0.8, 0),
    ]
    incidents = rows(
        store,
        "SELECT incident_key, detections, cameras, edges, duration, max_confidence, correlated "
        "FROM {db}.iot_incidents ORDER BY first_seen",
    )
    assert incidents == [
        ("cam-3#1", 2, ["cam-3"], ["edge-1"], 30, 0.8, 0),
        (inc, 4, ["cam-1", "cam-2"], ["edge-1", "edge-2"], 10, 0.9, 1),
        ("cam-3#2", 1, ["cam-3"], ["edge-1"], 0, 0.7, 0),
    ]
    sensors = rows(
        store,
        "SELECT site, source_id, metric, unit, readings, min_value, avg_value, max_value, out_of_range "
        "FROM {db}.iot_sensors_hourly",
    )
    assert sensors == [("farm", "sensor-t", "temperature", "C", 3, 10.0, 20.0, 30.0, 1)]
    errs = rows(
        store, "SELECT events, errors, error_rate FROM {db}.source_errors_hourly WHERE source_id = 'gw'"
    )
    assert errs == [(4, 1, 0.25)]


def test_fleet_views(store: HubStore) -> None:
    reset(store)
    lags = [1 * S, 2 * S, 3 * S, 4 * S, 100 * S]
    hb = [
        raw_row(
            category="ops",
            type="heartbeat",
            source_id="gw",
            observed_at=T0 + i * H,
            hub_at=T0 + i * H + lag,
            data={
                "uptime_seconds": 100 + i,
                "cpu_percent": 10.0 + i,
                "memory_percent": 50.0,
                "disk_percent": 20.0,
            },
        )
        for i, lag in enumerate(lags)
    ]
    insert_raw(store, [*hb, page_view("s1", "/", T0, edge="edge-2", hub_at=T0 + 2 * S)])
    insert_raw(store, hb[:2])  # duplicates
    daily = rows(store, "SELECT edge_id, day, events, sources FROM {db}.fleet_events_daily ORDER BY edge_id")
    assert daily == [("edge-1", "2024-06-01", 5, 1), ("edge-2", "2024-06-01", 1, 1)]
    lag = rows(
        store,
        "SELECT events, lag_p50_ms, lag_max_ms FROM {db}.fleet_sync_lag_daily WHERE edge_id = 'edge-1'",
    )
    assert lag == [(5, 3000, 100_000)]
    beat = rows(
        store,
        "SELECT source_id, toUnixTimestamp64Milli(last_heartbeat_at), heartbeats, uptime_seconds, "
        "cpu_percent FROM {db}.fleet_heartbeats",
    )
    assert beat == [("gw", T0 + 4 * H, 5, 104, 14.0)]


def test_views_are_replaced_not_duplicated(store: HubStore) -> None:
    """ensure_analytics runs at every start: CREATE OR REPLACE, IF NOT EXISTS, no error."""
    from edgekite.hubstore.analytics import ensure_analytics

    ensure_analytics(store)
    ensure_analytics(store)
    names = {
        str(r[0])
        for r in rows(
            store,
            "SELECT name FROM system.tables WHERE database = '{db}'".replace(
                "'{db}'", "'" + store.database + "'"
            ),
        )
    }
    expected_views = {
        "web_events",
        "web_visits",
        "web_daily",
        "web_daily_all",
        "iot_detections_hourly",
        "iot_incidents",
        "iot_sensors_hourly",
        "source_errors_hourly",
        "fleet_events_daily",
        "fleet_sync_lag_daily",
        "fleet_heartbeats",
    }
    assert expected_views | {"events_enriched", "enrich_state", "salts", "events"} <= names
    assert len(view_statements(store.database)) == len(expected_views)


def test_cli_rerun(store: HubStore, data_dir: Path) -> None:
    """``edgekite hub enrich --rerun`` in its own process (the module's store is closed for it:
    chDB lets one process hold a data directory), progress on stderr, exact counts after."""
    reset(store)
    insert_raw(store, [page_view("s1", f"/{i}", T0 + i * MIN, visitor=1) for i in range(30)])
    store.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "edgekite.cli", "hub", "--data-dir", str(data_dir), "enrich"]
    proc = subprocess.run(
        [*cmd, "--rerun", "--batch-rows", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "enrich: 30 / 30 (100 %)" in proc.stderr
    bad = subprocess.run(
        [*cmd, "--since", "2024-06-01"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert bad.returncode == 2 and "--since needs --rerun" in bad.stderr
    store.open()
    assert rows(store, f"SELECT count() FROM {{db}}.{ENRICHED_TABLE} FINAL") == [(30,)]
    assert rows(store, "SELECT pageviews, visits FROM {db}.web_daily") == [(30, 1)]

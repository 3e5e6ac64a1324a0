"""Sync through a locked-down hub broker: TLS with a client certificate, per-edge passwords,
the production ACL (broker/mosquitto/hub.acl) and the hub checking each batch's HMAC.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.broker.conftest import free_port, start_mosquitto, stop_mosquitto
from tests.broker.test_broker_mosquitto import make_password_file, make_tls_files
from tests.conftest import EdgeProcess, HubProcess, wait_for
from tests.edge_bridge.test_sync_e2e import edge_http, fleet_events, post, sync_status
from tests.hub_ingest.helpers import http, metric
from tests.hub_ingest.test_hub_broker_acl import hub_conf_for_test

KEY = "farm-9-key-0123456789abcdef"
PASSWORDS = {"edgekite-hub": "hub-secret", "farm-9": "farm-9-secret"}


def client_cert(tls: Path, name: str) -> tuple[Path, Path]:
    """A client certificate signed by the test CA (the README's openssl commands)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = {"cwd": tls, "check": True, "capture_output": True, "timeout": 30}
    subprocess.run(
        ["openssl", "req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"],
        **run,
    )  # type: ignore[call-overload]
    (tls / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    sign = ["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"]
    subprocess.run(
        [*sign, "-CAcreateserial", "-days", "30", "-extfile", "client.ext", "-out", f"{name}.crt"], **run
    )  # type: ignore[call-overload]
    return tls / f"{name}.crt", tls / f"{name}.key"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Any:
    tls = make_tls_files(tmp_path / "tls")
    tls_port = free_port()
    conf = hub_conf_for_test(tmp_path, make_password_file(tmp_path / "hub-passwd", PASSWORDS))
    conf += (
        f"\nlistener {tls_port} 127.0.0.1\ncafile {tls / 'ca.crt'}\ncertfile {tls / 'server.crt'}\n"
        f"keyfile {tls / 'server.key'}\ntls_version tlsv1.2\nrequire_certificate true\n"
    )
    proc, plain_port = start_mosquitto(tmp_path, conf)
    yield tls, plain_port, tls_port
    stop_mosquitto(proc)


def test_an_edge_syncs_over_tls_with_its_certificate_and_credentials_and_cannot_pose_as_another(
    tmp_path: Path, secure_broker: tuple[Path, int, int]
) -> None:
    tls, plain_port, tls_port = secure_broker
    cert, key = client_cert(tls, "farm-9")
    hub = HubProcess(
        tmp_path / "hub",
        "--mqtt-url",
        f"mqtt://127.0.0.1:{plain_port}",
        env={
            "EDGEKITE_HUB_MQTT__USERNAME": "edgekite-hub",
            "EDGEKITE_HUB_MQTT__PASSWORD": PASSWORDS["edgekite-hub"],
            "EDGEKITE_HUB_EDGES": orjson.dumps({"farm-9": {"api_key": KEY}}).decode(),
        },
    ).start()
    sync_env = {
        "EDGEKITE_SYNC__USERNAME": "farm-9",
        "EDGEKITE_SYNC__PASSWORD": PASSWORDS["farm-9"],
        "EDGEKITE_SYNC__CA_FILE": str(tls / "ca.crt"),
        "EDGEKITE_SYNC__CERT_FILE": str(cert),
        "EDGEKITE_SYNC__KEY_FILE": str(key),
        "EDGEKITE_SYNC__BATCH_MAX_AGE_MS": "50",
        "EDGEKITE_SYNC__BACKOFF_MAX_SECS": "1",
    }
    hub_url = f"mqtts://127.0.0.1:{tls_port}"
    common = ("--http-port", "0", "--mqtt-port", "0", "--hub-mqtt-url", hub_url, "--hub-api-key", KEY)
    edge = EdgeProcess(tmp_path / "edge", *common, "--edge-id", "farm-9", env=sync_env).start()
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "source": {"type": "edge_device", "id": "sensor-1"},
            "event": {"category": "iot", "type": "sensor_reading", "data": {"t": i}},
        }
        for i in range(300)
    ]
    post(edge, events)
    wait_for(lambda: fleet_events(hub, "farm-9") == 300, timeout=30)
    assert sync_status(edge)["transport"] == "mqtt" and sync_status(edge)["connected"]

    # Same login, another edge id: the ACL lets farm-9 use only ek/v1/hub/farm-9/...
    impostor = EdgeProcess(tmp_path / "impostor", *common, "--edge-id", "farm-10", env=sync_env).start()
    post(impostor, events[:5])
    wait_for(lambda: "Not authorized" in (sync_status(impostor)["last_error"] or ""), timeout=15)
    assert fleet_events(hub, "farm-10") == 0
    impostor.terminate()

    # Without the client certificate the TLS handshake itself fails.
    no_cert = {
        k: v for k, v in sync_env.items() if k not in ("EDGEKITE_SYNC__CERT_FILE", "EDGEKITE_SYNC__KEY_FILE")
    }
    bare = EdgeProcess(tmp_path / "bare", *common, "--edge-id", "farm-9", env=no_cert).start()
    wait_for(lambda: sync_status(bare)["transport_error"] is not None, timeout=15)
    assert not sync_status(bare)["connected"]
    bare.terminate()

    wait_for(
        lambda: (
            metric(http("GET", f"{edge_http(edge)}/metrics")[2], "edgekite_sync_events_synced_total") == 300
        )
    )
    edge.terminate()
    hub.terminate()

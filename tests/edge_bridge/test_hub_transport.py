"""The MQTT hub transport against a real Mosquitto: publishing never blocks on paho's own thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from edge_bridge.hub_transport import MqttHubTransport
from edgekite.config import SyncSection
from tests.conftest import start_mosquitto


def test_a_puback_arriving_during_the_next_publish_never_deadlocks(tmp_path: Path) -> None:
    """paho runs on_publish under its own lock, which publish() needs as well. Publishing batch
    after batch while the broker's PUBACKs stream back on paho's thread must always finish (the
    transport once held its own lock across publish() and froze the edge's event loop)."""
    broker = start_mosquitto(tmp_path)
    try:

        async def main() -> tuple[int, list[str]]:
            failures: list[str] = []
            transport = MqttHubTransport(
                SyncSection(hub_mqtt_url=broker.url),
                "edge-x",
                asyncio.get_running_loop(),
                on_ack=lambda *a: None,
                on_failure=lambda batch_id, reason: failures.append(reason),
                on_hub_online=lambda: None,
            )
            await transport.start()
            for _ in range(100):
                if transport.connected:
                    break
                await asyncio.sleep(0.05)
            assert transport.connected
            sent = 0
            done = threading.Event()

            def publish_many() -> None:
                nonlocal sent
                for i in range(20_000):
                    transport.send(f"edge-x:{i}-{i}", b"x" * 64, None)
                    sent += 1
                done.set()

            worker = threading.Thread(target=publish_many, daemon=True)
            worker.start()
            finished = await asyncio.get_running_loop().run_in_executor(None, done.wait, 60)
            await transport.stop()
            assert finished, f"publishing stalled after {sent} batches: a lock-order deadlock"
            return sent, failures

        sent, failures = asyncio.run(main())
        assert sent == 20_000
        assert failures == []
    finally:
        broker.proc.terminate()
        broker.proc.wait(10)

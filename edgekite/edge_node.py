"""The edge as one process: store, broker (embedded or external), bridge and HTTP.

This is the composition root, the one place that knows every edge service; the services
themselves only know ``edgekite``. Start order is store, ingest, HTTP; stop order is ingest
(stop reading), store (commit what is queued, send the acks), HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgekite.config import EdgeConfig
from edgekite.host import bridge_in_child, host_cpus
from edgekite.metrics import EdgeMetrics
from edgekite.service import serve, wait_for_stop
from edgekite.store import EdgeStore

if TYPE_CHECKING:
    from broker.embedded import EmbeddedBroker
    from edge_bridge.inbound import InboundRouter
    from edge_bridge.subscriber import Subscriber
    from edge_bridge.sync_worker import SyncWorker

log = logging.getLogger(__name__)


class EdgeNode:
    """``async with EdgeNode(config) as node: await node.run()``."""

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.metrics = EdgeMetrics()
        # Decided once: the store's queue bound depends on it (store.queue_max_bytes = auto).
        self.bridge_in_child = bool(config.mqtt.url) and bridge_in_child(
            config.mqtt.bridge_process, host_cpus()
        )
        one_process_bridge = bool(config.mqtt.url) and not self.bridge_in_child
        self.store = EdgeStore(
            config, self.metrics, queue_max_bytes=config.store.ingest_queue_bytes(one_process_bridge)
        )
        self._broker: EmbeddedBroker | None = None
        self._subscriber: Subscriber | None = None
        self._sync: SyncWorker | None = None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self.mqtt_url = ""
        self.http_url = ""
        self.started_at = time.time()

    async def __aenter__(self) -> EdgeNode:
        from edge_bridge.inbound import InboundRouter

        await asyncio.get_running_loop().run_in_executor(None, self.store.open)
        router = InboundRouter(self.config)
        try:
            if self.config.mqtt.url:
                self.mqtt_url = self.config.mqtt.url
                await self._start_subscriber(router)
            else:
                # In-process broker: messages enter through its commit gate, no second hop.
                await self._start_embedded_broker(router)
            if self.config.sync.enabled:
                await self._start_sync()
            await self._start_http()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()

    async def _start_embedded_broker(self, router: InboundRouter) -> None:
        from broker.embedded import EmbeddedBroker
        from edge_bridge.gate import make_ingest_hook

        mc = self.config.mqtt
        broker = EmbeddedBroker(
            mc.embedded_host,
            mc.embedded_port,
            ingest_filters=router.filters,
            ingest=make_ingest_hook(self.store, router, self.metrics),
            max_message_bytes=self.config.limits.max_message_bytes,
            password_file=mc.embedded_password_file,
            max_in_flight=mc.embedded_max_in_flight,
        )
        await broker.__aenter__()
        self._broker = broker
        self.mqtt_url = broker.url
        log.info("embedded MQTT broker on %s; PUBACK is sent only after the SQLite commit", self.mqtt_url)

    async def _start_subscriber(self, router: InboundRouter) -> None:
        from edge_bridge.subscriber import make_subscriber

        sub = make_subscriber(
            self.config, self.store, self.metrics, router, url=self.mqtt_url, in_child=self.bridge_in_child
        )
        sub.start()
        self._subscriber = sub
        # "Ready" means subscribed: on a brand-new broker session, messages published before
        # the SUBACK would be dropped by the broker. An unreachable broker does not block the
        # edge (it keeps retrying and reports itself degraded), so wait only a bounded time.
        wait = self.config.mqtt.connect_wait_secs
        if not await asyncio.get_running_loop().run_in_executor(None, sub.wait_connected, wait):
            log.warning(
                "not yet subscribed at %s (%s); starting anyway, the bridge keeps retrying",
                self.mqtt_url,
                sub.last_connect_error or "no answer",
            )

    async def _start_sync(self) -> None:
        from edge_bridge.sync_worker import SyncWorker

        sync = SyncWorker(self.config, self.store, self.metrics)
        await sync.start()
        self._sync = sync

    def sync_status(self) -> dict[str, Any]:
        if self._sync is None:
            return {"enabled": False, "note": "hub sync is off (--hub-mqtt-url or --hub-url turns it on)"}
        return self._sync.status()

    def _mqtt_connected(self) -> bool:
        if self._subscriber is not None:
            return self._subscriber.connected
        return self._broker is not None

    async def _start_http(self) -> None:
        from edge_api.app import EdgeContext, create_app

        bridge = "child_process" if self.bridge_in_child else "edge_process"
        ctx = EdgeContext(
            self.config,
            self.store,
            self.metrics,
            self._mqtt_connected,
            self.started_at,
            self.sync_status,
            mqtt_bridge=bridge if self.config.mqtt.url else "embedded_broker",
        )
        self._runner, self.http_url = await serve(
            create_app(ctx), self.config.http.host, self.config.http.port
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await wait_for_stop(self._stop)
        log.info("stopping: draining the ingest queue")

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sync is not None:
            sync, self._sync = self._sync, None
            await sync.stop()
        if self._subscriber is not None:
            await loop.run_in_executor(None, self._subscriber.stop)
            self._subscriber = None
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.__aexit__(None, None, None)
        await loop.run_in_executor(None, self.store.close)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

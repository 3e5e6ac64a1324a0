"""The hub as one process: store, batch processor, MQTT consumers, one HTTP app.

The composition root of the hub, the one place that knows every hub service (they only know
``edgekite``). With chDB only one process may open the data directory, so ingest and the read
API are parts of this one process; several hub processes need a ClickHouse server. Start order
is store, HTTP (ingest route + read API), consumers; stop order is consumers (finish and ack what
they hold), HTTP, store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

from edgekite.config import HubConfig
from edgekite.host import host_cpus
from edgekite.hub_metrics import HubMetrics
from edgekite.hubstore import HubStore
from edgekite.service import serve, wait_for_stop

if TYPE_CHECKING:
    from hub_enrich.consumer import EnrichmentConsumer
    from hub_ingest.consumer import ConsumerGroup
    from hub_ingest.prepare import DecodePool
    from hub_ingest.processor import BatchProcessor

log = logging.getLogger(__name__)


class HubNode:
    """``async with HubNode(config) as node: await node.run()``."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.metrics = HubMetrics()
        self.store = HubStore(config)
        self.processor: BatchProcessor | None = None
        self.decode_pool: DecodePool | None = None
        self.consumers: ConsumerGroup | None = None
        self.enricher: EnrichmentConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self.http_url = ""
        self.started_at = time.time()

    @property
    def mqtt_description(self) -> str:
        return self.config.mqtt.url or "off"

    @staticmethod
    def decode_workers() -> int:
        """Decode worker processes, one per core (at most 4): decoding costs ~2-3x the chDB insert
        per event, so with one worker on 2 cores the insert side sits idle most of the time.
        Cores as ``edgekite.host`` counts them: the affinity mask and the cgroup quota, not the
        host's."""
        return max(1, min(4, host_cpus()))

    async def __aenter__(self) -> HubNode:
        from edgekite.hubstore.analytics import ensure_analytics
        from hub_ingest.prepare import DecodePool, PrepareContext
        from hub_ingest.processor import BatchProcessor
        from hub_ingest.salts import SaltKeeper

        await self.store.run(self.store.open)
        try:
            loop = asyncio.get_running_loop()
            await self.store.run(ensure_analytics, self.store)
            salts = SaltKeeper(self.store, self.config.ingest.salt_keep_days)
            await self.store.run(salts.rotate)
            self._tasks.append(asyncio.create_task(self._rotate_salts(salts), name="edgekite-salts"))
            self.decode_pool = DecodePool(PrepareContext.from_config(self.config), self.decode_workers())
            await loop.run_in_executor(None, self.decode_pool.start)
            self.processor = BatchProcessor(
                self.config, self.store, self.metrics, decode_pool=self.decode_pool, salts=salts.current
            )
            # Before any batch: a group a killed hub stored without its ledger rows gets them now.
            await self.store.run(self.processor.recover)
            await self._start_http(self.processor)
            if self.config.mqtt.url:
                await self._start_consumers(self.processor)
            if self.config.enrich.enabled:
                self._start_enrichment()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()

    async def _rotate_salts(self, salts: object) -> None:
        """Salts expire on time even when no web event arrives (deleting them is the point)."""
        from hub_ingest.salts import SaltKeeper

        assert isinstance(salts, SaltKeeper)
        while True:
            await asyncio.sleep(60)
            try:
                await self.store.run(salts.rotate)
            except Exception:
                log.exception("visitor-id salt rotation failed")

    def _ingest_busy(self) -> bool:
        return self.processor is not None and self.processor.ingest_busy()

    def _start_enrichment(self) -> None:
        from hub_enrich.consumer import EnrichmentConsumer
        from hub_enrich.rerun import build_enricher

        ec = self.config.enrich
        consumer = EnrichmentConsumer(
            self.store,
            build_enricher(ec.bots_file, ec.geo_db, ec.site_hosts),
            batch_rows=ec.batch_rows,
            lag_ms=int(ec.lag_secs * 1000),
            ingest_busy=self._ingest_busy,
            busy_share=ec.busy_share,
        )
        self.enricher = consumer
        m = self.metrics

        def on_step(rows: int, watermark_ms: int, failed: bool) -> None:
            if failed:
                m.enrich_errors.inc()
                return
            m.events_enriched.inc(rows)
            if watermark_ms:
                m.enrich_watermark.set(watermark_ms / 1000)

        self._tasks.append(asyncio.create_task(consumer.run(on_step), name="edgekite-enrich"))

    async def _start_consumers(self, processor: BatchProcessor) -> None:
        from hub_ingest.consumer import ConsumerGroup

        group = ConsumerGroup(self.config.mqtt, processor, self.store, self.metrics)
        group.start()
        self.consumers = group
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, group.wait_connected, 10.0):
            errors = {c.last_error for c in group.consumers if c.last_error}
            log.warning(
                "MQTT consumers not all subscribed at %s yet (%s); starting anyway, they keep retrying",
                self.config.mqtt.url,
                "; ".join(sorted(errors)) or "no answer",
            )

    async def _start_http(self, processor: BatchProcessor) -> None:
        from hub_api.app import HubApiContext, MqttState, create_app
        from hub_ingest.http import add_ingest_routes

        def connected() -> int:
            return self.consumers.connected_count if self.consumers is not None else 0

        ctx = HubApiContext(
            self.config,
            self.store,
            self.metrics,
            dev_mode=processor.dev_mode,
            mqtt=MqttState(bool(self.config.mqtt.url), self.config.mqtt.consumers, connected),
            started_at=self.started_at,
        )
        app = create_app(ctx)
        add_ingest_routes(app, processor, self.store)
        self._runner, self.http_url = await serve(app, self.config.http.host, self.config.http.port)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await wait_for_stop(self._stop)
        log.info("stopping: finishing the batches in hand")

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        if self.enricher is not None:
            self.enricher.stop()
        for task in self._tasks:
            if not task.done() and task.get_name() != "edgekite-enrich":
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        if self.consumers is not None:
            group, self.consumers = self.consumers, None
            await loop.run_in_executor(None, group.stop)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.decode_pool is not None:
            pool, self.decode_pool = self.decode_pool, None
            await loop.run_in_executor(None, pool.shutdown)
        await self.store.run(self.store.close)
        await loop.run_in_executor(None, self.store.shutdown_executor)

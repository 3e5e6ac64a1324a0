"""The embedded broker's commit gate: a publish is acknowledged once its rows are committed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from edge_bridge.inbound import InboundRouter, rejection_summary
from edgekite.metrics import EdgeMetrics
from edgekite.store import EdgeStore

log = logging.getLogger(__name__)


class NotCommittedError(RuntimeError):
    """The store could not commit; the publisher gets no PUBACK and will resend."""


def make_ingest_hook(
    store: EdgeStore, router: InboundRouter, metrics: EdgeMetrics
) -> Callable[[str, bytes, bool], Awaitable[None]]:
    async def ingest(topic: str, payload: bytes, dup: bool) -> None:
        metrics.messages_received.labels("mqtt").inc()
        item = router.build_item(topic, payload, dup, store.now_ms())
        metrics.events_received.labels("mqtt").inc(len(item.decoded.events) + len(item.decoded.rejections))
        if item.decoded.rejections:
            log.info("rejected from %s: %s", topic[:200], rejection_summary(item.decoded))
        result = await store.ingest(item)
        if not result.committed:
            raise NotCommittedError(f"message on {topic[:200]!r} was not committed")

    return ingest

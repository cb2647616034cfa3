"""memoryd's metrics that need I/O to read: the size of the memory collection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge

from hearth.runtime import ServiceMetrics

log = logging.getLogger(__name__)

#: Seconds between two reads of the collection's size.
COLLECTION_SIZE_INTERVAL_SECONDS = 10.0


class CollectionSizeGauge:
    """hearth_memory_collection_points: the points (chunks) in the memory collection.

    Reading the size is a Qdrant call, so it is not done on a scrape (which runs
    on the metrics server's thread): a task owned here reads it at start and then
    every ``interval_seconds``. A failed read keeps the last value and is logged
    once until a read succeeds again. start() and stop() are each safe twice.

    Args:
        metrics: the service's metrics; the gauge is registered on its registry.
        read_points: the store's point count (QdrantMemoryStore.points).
        interval_seconds: seconds between reads.
    """

    def __init__(
        self,
        metrics: ServiceMetrics,
        read_points: Callable[[], Awaitable[int]],
        interval_seconds: float = COLLECTION_SIZE_INTERVAL_SECONDS,
    ) -> None:
        self._gauge = Gauge(
            f"hearth_{metrics.service}_collection_points",
            "Points (memory chunks) in the memory collection of the embedding model, as Qdrant counts them.",
            registry=metrics.registry,
        )
        self._read = read_points
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="memoryd-collection-size")

    async def refresh(self) -> None:
        """Read the size now."""
        try:
            self._gauge.set(await self._read())
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if not self._failing:
                log.warning("cannot read the memory collection's size: %s", err)
            self._failing = True
            return
        self._failing = False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.refresh()

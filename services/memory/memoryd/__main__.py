"""memoryd's composition root: ``python -m memoryd [--flags]``.

Builds the embedder, the store, the domain service and the servicer once,
starts the embedder (loads the model or asks TEI) and the store (checks the
collection's vector size) before serving, and closes both at cleanup.
"""

from __future__ import annotations

import asyncio
import logging

from hearth.api.memory.v1 import memory_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, serve
from memoryd.adapters.embedders import (
    EmbedderStartError,
    LocalEmbedder,
    TeiEmbedder,
    resolve_local_model,
)
from memoryd.adapters.qdrant_store import QdrantMemoryStore, StoreStartError
from memoryd.api.servicer import MemoryMetrics, MemoryServicer
from memoryd.config import Settings
from memoryd.domain import Embedder, MemoryLimits, MemoryService

log = logging.getLogger(__name__)


def build_embedder(settings: Settings) -> Embedder:
    """TEI when a URL is configured, else the local model.

    Raises:
        EmbedderStartError: no local model can be found.
    """
    if settings.tei_url:
        return TeiEmbedder(settings.tei_url, settings.embedding_model)
    return LocalEmbedder(
        resolve_local_model(settings.embedding_model),
        settings.embedding_device,
        cpu_threads=settings.embedding_cpu_threads,
    )


def build_store(settings: Settings) -> QdrantMemoryStore:
    if settings.qdrant_url:
        return QdrantMemoryStore(
            settings.collection_prefix, url=settings.qdrant_url, api_key=settings.qdrant_api_key
        )
    return QdrantMemoryStore(settings.collection_prefix, path=settings.data_dir / "qdrant")


async def run(settings: Settings) -> None:
    """Run memoryd until SIGINT/SIGTERM. Exits with a message (SystemExit)
    when the embedder or the store cannot start."""
    # memoryd publishes nothing on NATS yet, so it does not need a bus.
    host = ServiceHost("memoryd", settings, connect_bus=False)
    try:
        embedder = build_embedder(settings)
        store = build_store(settings)
        # Registered before starting, so a half-started part is closed too.
        host.on_cleanup(embedder.close)
        host.on_cleanup(store.close)
        await embedder.start()
        await store.start(embedder.model_name, embedder.dimension)
    except (EmbedderStartError, StoreStartError) as err:
        log.error("memoryd cannot start: %s", err)
        await host.stop()
        raise SystemExit(f"memoryd: {err}") from None
    except BaseException:
        await host.stop()
        raise

    limits = MemoryLimits(
        max_text_chars=settings.max_text_chars,
        default_top_k=settings.default_top_k,
        max_top_k=settings.max_top_k,
    )
    service = MemoryService(embedder, store, limits)
    servicer = MemoryServicer(service, host.telemetry.tracer, MemoryMetrics(host.metrics))
    host.add_service(
        memory_pb2_grpc.add_MemoryServiceServicer_to_server, servicer, "hearth.api.memory.v1.MemoryService"
    )
    await serve(host)


def main() -> None:
    settings = load_settings(Settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

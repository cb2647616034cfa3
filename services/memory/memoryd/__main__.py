"""memoryd's composition root: ``python -m memoryd [--flags]``.

Builds the embedder, the store, the domain service and the servicer once,
starts the embedder (loads the model or asks TEI) and the store (checks the
collection's vector size) before serving, and closes both at cleanup.
"""

from __future__ import annotations

import asyncio
import logging

from hearth.api.memory.v1 import memory_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, open_channel, serve
from memoryd.adapters.bm25 import Bm25Encoder
from memoryd.adapters.embedders import (
    EmbedderStartError,
    LocalEmbedder,
    TeiEmbedder,
    resolve_local_model,
)
from memoryd.adapters.local_rerank import CrossEncoderReranker
from memoryd.adapters.metrics import CollectionSizeGauge
from memoryd.adapters.orchestrator_jobs import OrchestratorSummaryJobs
from memoryd.adapters.qdrant_store import QdrantMemoryStore, StoreStartError
from memoryd.adapters.tei_rerank import TeiReranker
from memoryd.adapters.tei_sparse import TeiSparseEncoder
from memoryd.adapters.token_counting import TokenizerCounter
from memoryd.api.servicer import MemoryMetrics, MemoryServicer
from memoryd.api.summaries import SummaryHandlers
from memoryd.config import Settings
from memoryd.domain import Embedder, MemoryLimits, MemoryService
from memoryd.domain.compaction import CompactionSettings, Compactor
from memoryd.domain.context import ContextBuilder, ContextLimits, EstimatedTokenCounter, TokenCounter

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


def build_sparse_encoder(settings: Settings) -> Bm25Encoder | TeiSparseEncoder:
    """The sparse half of hybrid retrieval: TEI's /embed_sparse when
    sparse_url is set, else BM25 computed in process."""
    if settings.sparse_url:
        return TeiSparseEncoder(settings.sparse_url)
    return Bm25Encoder()


def build_reranker(settings: Settings) -> TeiReranker | CrossEncoderReranker | None:
    """The reranker of Query(rerank=true): TEI's /rerank (rerank_url), a local
    cross-encoder (rerank_model), or None when neither is configured."""
    if settings.rerank_url:
        return TeiReranker(settings.rerank_url)
    if settings.rerank_model:
        return CrossEncoderReranker(
            settings.rerank_model, settings.embedding_device, cpu_threads=settings.embedding_cpu_threads
        )
    return None


def build_summaries(settings: Settings, service: MemoryService, host: ServiceHost) -> SummaryHandlers:
    """Compact (summary jobs through orchestratord, when its address is
    set) and GetContext (tokens counted with the local embedder's tokenizer,
    or estimated with TEI)."""
    jobs = None
    if settings.orchestrator_address:
        channel = open_channel(settings.orchestrator_address, host.telemetry)
        host.on_cleanup(channel.close)
        jobs = OrchestratorSummaryJobs(
            channel,
            max_tokens=settings.compaction_summary_max_tokens,
            timeout_seconds=settings.compaction_job_timeout_seconds,
        )
    compactor = Compactor(
        service,
        jobs,
        CompactionSettings(
            max_model_calls=settings.compaction_max_model_calls,
            prompt_budget_chars=settings.compaction_prompt_chars,
            model=settings.compaction_model,
        ),
    )
    counter: TokenCounter = EstimatedTokenCounter()
    if not settings.tei_url:
        model = resolve_local_model(settings.embedding_model)
        try:
            counter = TokenizerCounter(model.path, model.name)
        except Exception as err:  # no tokenizer.json, or one the tokenizers library cannot read
            log.warning("counting context tokens by estimate: no tokenizer for %s (%s)", model.name, err)
    context = ContextBuilder(
        service,
        counter,
        ContextLimits(
            default_top_k=settings.context_default_top_k,
            max_top_k=settings.max_top_k,
            max_text_chars=settings.max_text_chars,
        ),
    )
    return SummaryHandlers(compactor, context, host.telemetry.tracer)


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
        sparse = build_sparse_encoder(settings)
        reranker = build_reranker(settings)
        store = build_store(settings)
        # Registered before starting, so a half-started part is closed too.
        host.on_cleanup(embedder.close)
        host.on_cleanup(sparse.close)
        if reranker is not None:
            host.on_cleanup(reranker.close)
        host.on_cleanup(store.close)
        await embedder.start()
        # A TEI sparse encoder learns its model, which names the collection's
        # sparse vectors; a reranker is checked (TEI) or loaded (local) now,
        # not at the first query.
        await sparse.start()
        if reranker is not None:
            await reranker.start()
        # The collection's dense size is checked against the embedder's
        # dimension here: a mismatch stops memoryd with both numbers.
        await store.start(embedder.model_name, embedder.dimension, sparse.name, sparse.idf_modifier)
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
        chunk_chars=settings.chunk_chars,
        chunk_overlap_chars=settings.chunk_overlap_chars,
    )
    service = MemoryService(embedder, store, limits, sparse=sparse, reranker=reranker)
    servicer = MemoryServicer(
        service, host.telemetry.tracer, MemoryMetrics(host.metrics), build_summaries(settings, service, host)
    )
    host.add_service(
        memory_pb2_grpc.add_MemoryServiceServicer_to_server, servicer, "hearth.api.memory.v1.MemoryService"
    )
    collection_size = CollectionSizeGauge(host.metrics, store.points)
    host.on_cleanup(collection_size.stop)  # before the store closes (cleanup runs newest first)
    await serve(host, started=collection_size.start)


def main() -> None:
    settings = load_settings(Settings)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

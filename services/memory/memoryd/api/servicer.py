"""The hearth.api.memory.v1.MemoryService servicer: convert, call the domain,
convert back. Spans carry the project id and counts, never a memory's text."""

from __future__ import annotations

import time

import grpc
from opentelemetry.trace import Tracer
from prometheus_client import Counter, Histogram

from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.runtime import ServiceMetrics
from memoryd.api.convert import memory_to_proto, new_memory_from_proto, query_from_proto, scored_to_proto
from memoryd.domain import MemoryKind, MemoryService

#: Span attribute names.
PROJECT_ID_ATTRIBUTE = "hearth.project_id"
RESULT_COUNT_ATTRIBUTE = "hearth.memory.results"


class MemoryMetrics:
    """memoryd's own metrics, on the service registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.stored: Counter = metrics.counter(
            "stored_total", "Memories written, by kind (repeated request ids not counted).", ["kind"]
        )
        self.query_seconds: Histogram = metrics.histogram(
            "query_duration_seconds",
            "Time to answer a Query: embedding the text and searching.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        for kind in MemoryKind:
            self.stored.labels(kind.value)  # so every kind shows up at 0


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Serves MemoryService over a :class:`MemoryService`."""

    def __init__(self, service: MemoryService, tracer: Tracer, metrics: MemoryMetrics) -> None:
        self._service = service
        self._tracer = tracer
        self._metrics = metrics

    async def Store(
        self, request: memory_pb2.StoreRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.StoreResponse:
        with self._tracer.start_as_current_span(
            "memory.store", attributes={PROJECT_ID_ATTRIBUTE: request.memory.project_id}
        ) as span:
            result = await self._service.store(new_memory_from_proto(request.memory), request.request_id)
            span.set_attribute("hearth.memory.kind", result.memory.kind.value)
            span.set_attribute("hearth.memory.created", result.created)
            if result.created:
                self._metrics.stored.labels(result.memory.kind.value).inc()
            return memory_pb2.StoreResponse(memory=memory_to_proto(result.memory))

    async def Query(
        self, request: memory_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.QueryResponse:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "memory.query",
            attributes={PROJECT_ID_ATTRIBUTE: request.project_id, "hearth.memory.top_k": request.top_k},
        ) as span:
            try:
                results = await self._service.query(query_from_proto(request))
            finally:
                self._metrics.query_seconds.observe(time.perf_counter() - started)
            span.set_attribute(RESULT_COUNT_ATTRIBUTE, len(results))
            return memory_pb2.QueryResponse(results=[scored_to_proto(r) for r in results])

    async def Delete(
        self, request: memory_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteResponse:
        with self._tracer.start_as_current_span(
            "memory.delete",
            attributes={
                PROJECT_ID_ATTRIBUTE: request.project_id,
                "hearth.memory.requested": len(request.memory_ids),
            },
        ) as span:
            deleted = await self._service.delete(request.project_id, list(request.memory_ids))
            span.set_attribute("hearth.memory.deleted", deleted)
            return memory_pb2.DeleteResponse(deleted=deleted)

    async def Embed(
        self, request: memory_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.EmbedResponse:
        with self._tracer.start_as_current_span(
            "memory.embed", attributes={"hearth.memory.inputs": len(request.inputs)}
        ):
            result = await self._service.embed(request.inputs)
            return memory_pb2.EmbedResponse(
                embeddings=[memory_pb2.Embedding(values=vector) for vector in result.vectors],
                model=result.model,
                dimension=result.dimension,
                input_tokens=result.input_tokens,
            )

"""Shared scaffolding for tests that talk to a real grpc.aio server faking the
stack: the server on its own thread and event loop, and a fake memory service.
Each test module brings its own orchestrator and pool fakes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.api.orchestrator.v1 import orchestrator_pb2_grpc
from hearth.api.pool.v1 import pool_pb2_grpc
from hearth.runtime.interceptors import ErrorInterceptor

ANSWER = ["Hello", ", ", "world"]

OrchestratorT = TypeVar("OrchestratorT", bound=orchestrator_pb2_grpc.OrchestratorServiceServicer)
PoolT = TypeVar("PoolT", bound=pool_pb2_grpc.PoolServiceServicer)
MemoryT = TypeVar("MemoryT", bound=memory_pb2_grpc.MemoryServiceServicer)


class FakeMemory(memory_pb2_grpc.MemoryServiceServicer):
    """Stores what it is given, naming each memory ``<id_prefix><n>``; a query
    returns the project's memories (at most top_k), each with ``score``."""

    def __init__(self, *, id_prefix: str, score: float) -> None:
        self.id_prefix = id_prefix
        self.score = score
        self.requests: list[memory_pb2.StoreRequest] = []
        self.memories: list[memory_pb2.Memory] = []

    async def Store(self, request: Any, context: Any) -> memory_pb2.StoreResponse:
        self.requests.append(request)
        memory = memory_pb2.Memory()
        memory.CopyFrom(request.memory)
        memory.memory_id = f"{self.id_prefix}{len(self.requests)}"
        self.memories.append(memory)
        return memory_pb2.StoreResponse(memory=memory)

    async def Query(self, request: Any, context: Any) -> memory_pb2.QueryResponse:
        found = [m for m in self.memories if m.project_id == request.project_id]
        return memory_pb2.QueryResponse(
            results=[memory_pb2.ScoredMemory(memory=m, score=self.score) for m in found[: request.top_k]]
        )


class ServerThread(Generic[OrchestratorT, PoolT, MemoryT]):
    """The given fakes and the health service in one grpc.aio server with the
    runtime's ErrorInterceptor, on its own event loop in a thread, so that
    blocking callers (the CLI's asyncio.run, the blocking client) and the
    test's own loop can both call it. Use as ``with ServerThread(...) as server``."""

    def __init__(self, orchestrator: OrchestratorT, pool: PoolT, memory: MemoryT) -> None:
        self.orchestrator = orchestrator
        self.pool = pool
        self.memory = memory
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(self.orchestrator, server)
        pool_pb2_grpc.add_PoolServiceServicer_to_server(self.pool, server)
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(self.memory, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        self.address = f"127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(None)

    def __enter__(self) -> ServerThread[OrchestratorT, PoolT, MemoryT]:
        self._thread.start()
        assert self._ready.wait(10), "the fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

"""Text embeddings through memoryd's Embed RPC (the HTTP API's /v1/embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.errors import Unavailable, from_rpc_error
from orchestratord.api.openai_http.ports import EmbeddingBatch

#: Longest an Embed call may take; 256 texts on a CPU embedder take seconds.
EMBED_TIMEOUT_SECONDS = 60.0


class GrpcEmbeddings:
    """The Embeddings port over memoryd's MemoryService.Embed.

    Args:
        channel: the (traced) channel to memoryd; None when no memory address
            is configured, and then every call fails with Unavailable
            MEMORY_UNAVAILABLE.
        timeout: seconds per call.
    """

    def __init__(self, channel: grpc.aio.Channel | None, *, timeout: float = EMBED_TIMEOUT_SECONDS) -> None:
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel) if channel is not None else None
        self._timeout = timeout

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        if self._stub is None:
            raise Unavailable("memoryd is not configured (memory_address)", reason="MEMORY_UNAVAILABLE")
        try:
            reply = await self._stub.Embed(memory_pb2.EmbedRequest(inputs=list(texts)), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return EmbeddingBatch(
            vectors=[list(embedding.values) for embedding in reply.embeddings],
            model=reply.model,
            dimension=reply.dimension,
            input_tokens=reply.input_tokens,
        )

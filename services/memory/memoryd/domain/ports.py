"""The interfaces memoryd's rules depend on: an embedder and a memory store.

Adapters implement them (adapters/embedders.py, adapters/qdrant_store.py);
tests pass small fakes. Both are narrow on purpose: the later hierarchy
(summaries, hybrid search, compaction) adds methods here, not new couplings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from memoryd.domain.memories import Memory, MemoryKind, ScoredMemory


class EmbedderError(Exception):
    """The embedder failed for a reason that retrying will not fix."""


class EmbeddingInputTooLarge(EmbedderError):
    """An input is longer than the embedding model accepts."""


class EmbedderUnavailable(EmbedderError):
    """The embedder is overloaded or unreachable; try again later.

    Args:
        retry_after: seconds the embedder asked callers to wait, when known.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """The memory store is unreachable or overloaded; try again later."""


class Embedder(Protocol):
    """Turns texts into unit-length vectors of one model.

    Lifecycle: ``await start()`` once before use (loads the model or learns
    the dimension from the server); ``await close()`` at the end, safe to call
    twice and after a failed start. ``model_name`` and ``dimension`` are valid
    after start.
    """

    @property
    def model_name(self) -> str:
        """A stable name of the model; memories are filed per model."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One normalised vector per text, in order.

        Raises:
            EmbeddingInputTooLarge: a text is too long for the model.
            EmbedderUnavailable: the embedder is overloaded or unreachable.
            EmbedderError: any other failure.
        """
        ...


class MemoryStore(Protocol):
    """Keeps memories with their vectors, one model's vectors per store.

    Every write is acknowledged only once it is durable. Reads are scoped by
    project: a memory of another project is never returned or deleted.
    Operations raise :class:`StoreUnavailable` when the store cannot be reached.
    """

    async def get(self, memory_id: str) -> Memory | None:
        """The memory with this id, or None."""
        ...

    async def put(self, memory: Memory, vector: Sequence[float]) -> None:
        """Write (or overwrite) one memory with its vector."""
        ...

    async def search(
        self,
        vector: Sequence[float],
        *,
        project_id: str,
        limit: int,
        task_id: str = "",
        kinds: Sequence[MemoryKind] = (),
    ) -> list[ScoredMemory]:
        """The nearest memories of ``project_id``, nearest first; ``task_id``
        and ``kinds`` narrow the search when set."""
        ...

    async def delete(self, project_id: str, memory_ids: Sequence[str]) -> int:
        """Delete those of ``memory_ids`` that belong to ``project_id``;
        returns how many were deleted."""
        ...

"""MemoryService: the operations of memoryd over an Embedder and a MemoryStore."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from hearth.errors import InvalidArgument, Unavailable
from memoryd.domain.memories import (
    Memory,
    MemoryLimits,
    MemoryQuery,
    NewMemory,
    ScoredMemory,
    memory_id_for,
    parse_memory_ids,
    parse_request_id,
    validate_new_memory,
    validate_query,
)
from memoryd.domain.ports import (
    Embedder,
    EmbedderUnavailable,
    EmbeddingInputTooLarge,
    MemoryStore,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most texts one Embed call may carry.
MAX_EMBED_INPUTS = 256


@dataclass(frozen=True)
class StoreResult:
    """The memory a Store answers with; ``created`` is False when a repeated
    request id found the memory its first attempt wrote."""

    memory: Memory
    created: bool


@dataclass(frozen=True)
class EmbeddingResult:
    """The answer of :meth:`MemoryService.embed`.

    ``input_tokens`` is an estimate (about four characters per token): the
    embedder interface does not count tokens.
    """

    #: One unit-length vector per input, in order.
    vectors: list[list[float]]
    model: str
    dimension: int
    input_tokens: int


class MemoryService:
    """Store, query and delete memories, and embed texts.

    Every input is validated before anything is embedded or written, so a
    rejected request leaves no trace. Errors are Hearth errors: InvalidArgument
    naming the request field, Unavailable (EMBEDDER_UNAVAILABLE,
    STORE_UNAVAILABLE) when a dependency is down.

    Args:
        embedder: started; its vectors must match the store's dimension.
        store: started.
        limits: request limits.
        clock: the time new memories are stamped with (UTC).
    """

    def __init__(
        self,
        embedder: Embedder,
        store: MemoryStore,
        limits: MemoryLimits,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._embedder = embedder
        self._store = store
        self._limits = limits
        self._clock = clock
        self._in_flight = _KeyedLocks()

    async def store(self, new: NewMemory, request_id: str = "") -> StoreResult:
        """Embed and write one memory; answers once it is written.

        With a request id (a UUID) the memory id is derived from it, and a
        repeated call returns the memory already written without embedding
        again; concurrent repeats wait for the first.
        """
        new = validate_new_memory(new, self._limits)
        key = parse_request_id(request_id)
        memory_id = memory_id_for(new.project_id, key)
        if key is None:
            return StoreResult(await self._write(memory_id, new), created=True)
        async with self._in_flight.hold(memory_id):
            existing = await _guard_store(self._store.get(memory_id))
            if existing is not None:
                return StoreResult(existing, created=False)
            return StoreResult(await self._write(memory_id, new), created=True)

    async def query(self, query: MemoryQuery) -> list[ScoredMemory]:
        """The memories of the query's project nearest in meaning, nearest first."""
        query = validate_query(query, self._limits)
        [vector] = await self._embed([query.text], "text")
        return await _guard_store(
            self._store.search(
                vector,
                project_id=query.project_id,
                limit=query.top_k,
                task_id=query.task_id,
                kinds=query.kinds,
            )
        )

    async def delete(self, project_id: str, memory_ids: Sequence[str]) -> int:
        """Delete memories of one project by id; ids of other projects and
        unknown ids are skipped. Returns how many were deleted."""
        ids = parse_memory_ids(project_id, memory_ids)
        if not ids:
            return 0
        return await _guard_store(self._store.delete(project_id, ids))

    async def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """Embed 1 to 256 texts with the memories' model, in one call of the
        embedder (which batches them).

        Raises:
            InvalidArgument: ``inputs`` (none, more than 256, or one too large
                for the model: reason INPUT_TOO_LARGE) or ``inputs[i]`` (empty,
                or longer than the text limit).
            Unavailable: EMBEDDER_UNAVAILABLE.
        """
        texts = list(texts)
        if not texts:
            raise InvalidArgument("inputs", "must hold at least one text")
        if len(texts) > MAX_EMBED_INPUTS:
            raise InvalidArgument(
                "inputs",
                f"holds {len(texts)} texts; at most {MAX_EMBED_INPUTS}",
                max=str(MAX_EMBED_INPUTS),
            )
        for index, text in enumerate(texts):
            if not text:
                raise InvalidArgument(f"inputs[{index}]", "must not be empty")
            if len(text) > self._limits.max_text_chars:
                raise InvalidArgument(
                    f"inputs[{index}]",
                    f"is {len(text)} characters; at most {self._limits.max_text_chars}",
                    max=str(self._limits.max_text_chars),
                )
        vectors = await self._embed(texts, "inputs")
        return EmbeddingResult(
            vectors=vectors,
            model=self._embedder.model_name,
            dimension=self._embedder.dimension,
            input_tokens=sum(-(-len(text) // 4) for text in texts),
        )

    async def _write(self, memory_id: str, new: NewMemory) -> Memory:
        assert new.kind is not None  # validate_new_memory defaulted it
        [vector] = await self._embed([new.text], "memory.text")
        memory = Memory(
            memory_id=memory_id,
            text=new.text,
            project_id=new.project_id,
            task_id=new.task_id,
            subtask_id=new.subtask_id,
            kind=new.kind,
            source=new.source,
            labels=dict(new.labels),
            created_at=self._clock(),
        )
        await _guard_store(self._store.put(memory, vector))
        return memory

    async def _embed(self, texts: list[str], field_path: str) -> list[list[float]]:
        try:
            return await self._embedder.embed(texts)
        except EmbeddingInputTooLarge as err:
            raise InvalidArgument(
                field_path, f"too large for the embedding model: {err}", reason="INPUT_TOO_LARGE"
            ) from None
        except EmbedderUnavailable as err:
            log.warning("embedder unavailable: %s", err)
            raise Unavailable(
                "the embedding model is unavailable; retry later",
                reason="EMBEDDER_UNAVAILABLE",
                retry_after=err.retry_after or 1.0,
            ) from None


async def _guard_store(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except StoreUnavailable as err:
        log.warning("memory store unavailable: %s", err)
        raise Unavailable(
            "the memory store is unavailable; retry later", reason="STORE_UNAVAILABLE", retry_after=1.0
        ) from None


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

"""The memory store in Qdrant: one collection per embedding model, project,
task and kind as indexed payload fields."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from memoryd.domain.memories import Memory, MemoryKind, ScoredMemory
from memoryd.domain.ports import StoreUnavailable

log = logging.getLogger(__name__)


class StoreStartError(Exception):
    """The store cannot start (Qdrant unreachable, the local folder in use by
    another process, a collection of another vector size). memoryd exits with
    this message."""


def slug(text: str) -> str:
    """Lowercase, every run of characters outside [a-z0-9_] made one ``_``."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def collection_name(prefix: str, model_name: str, dimension: int) -> str:
    """The collection of one embedding model, e.g.
    ``hearth_memories__sentence_transformers_all_minilm_l6_v2__384``. The
    dimension is part of the name so that a model change never mixes vectors."""
    return f"{prefix}__{slug(model_name)}__{dimension}"


def memory_payload(memory: Memory) -> dict[str, Any]:
    """A memory as its Qdrant payload (the vector goes beside it)."""
    return {
        "text": memory.text,
        "project_id": memory.project_id,
        "task_id": memory.task_id,
        "subtask_id": memory.subtask_id,
        "kind": memory.kind.value,
        "source": memory.source,
        "labels": dict(memory.labels),
        "created_at": memory.created_at.astimezone(UTC).isoformat(),
    }


def memory_from_payload(memory_id: str, payload: Mapping[str, Any]) -> Memory:
    """Read back what :func:`memory_payload` wrote."""
    created = datetime.fromisoformat(str(payload.get("created_at") or "1970-01-01T00:00:00+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    try:
        kind = MemoryKind(payload.get("kind"))
    except ValueError:
        kind = MemoryKind.NOTE
    labels = payload.get("labels") or {}
    return Memory(
        memory_id=memory_id,
        text=str(payload.get("text", "")),
        project_id=str(payload.get("project_id", "")),
        task_id=str(payload.get("task_id", "")),
        subtask_id=str(payload.get("subtask_id", "")),
        kind=kind,
        source=str(payload.get("source", "")),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        created_at=created,
    )


# Indexed payload fields. project_id is the tenant: Qdrant keeps each
# project's points together and searches within one.
_PAYLOAD_INDEXES: tuple[tuple[str, Any], ...] = (
    ("project_id", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
    ("task_id", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD)),
    ("kind", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD)),
    ("created_at", models.DatetimeIndexParams(type=models.DatetimeIndexType.DATETIME)),
)


class QdrantMemoryStore:
    """:class:`~memoryd.domain.ports.MemoryStore` over AsyncQdrantClient.

    Local mode (no ``url``) keeps the data in ``path``; qdrant-client allows
    one process per folder, and memoryd is that process. Writes wait for
    Qdrant to acknowledge them (``wait=True``).

    Lifecycle: ``await start(model_name, dimension)`` opens the client and
    makes sure the model's collection exists with that vector size;
    ``await close()`` is safe twice and after a failed start.

    Args:
        prefix: collection name prefix.
        url: Qdrant server URL; empty for local mode.
        api_key: for the server; empty for none.
        path: local mode folder.
    """

    def __init__(self, prefix: str, *, url: str = "", api_key: str = "", path: Path | None = None) -> None:
        if not url and path is None:
            raise ValueError("QdrantMemoryStore needs a url or a local path")
        self._prefix = prefix
        self._url = url
        self._api_key = api_key
        self._path = path
        self._client: AsyncQdrantClient | None = None
        self.collection = ""

    @property
    def where(self) -> str:
        return self._url or f"local mode in {self._path}"

    async def start(self, model_name: str, dimension: int) -> None:
        """Open the client and make sure the collection of this model exists.

        Raises:
            StoreStartError: Qdrant cannot be opened, or the collection exists
                with another vector size or distance.
        """
        if self._client is not None:
            return
        self.collection = collection_name(self._prefix, model_name, dimension)
        try:
            if self._url:
                self._client = AsyncQdrantClient(url=self._url, api_key=self._api_key or None)
            else:
                assert self._path is not None
                self._path.mkdir(parents=True, exist_ok=True)
                self._client = AsyncQdrantClient(path=str(self._path))
            await self._ensure_collection(dimension)
        except StoreStartError:
            raise
        except (RuntimeError, OSError, ResponseHandlingException, UnexpectedResponse) as err:
            # RuntimeError is how local mode says another process holds the folder.
            raise StoreStartError(f"cannot open Qdrant ({self.where}): {err}") from err
        log.info("memories in Qdrant %s, collection %s", self.where, self.collection)

    async def _ensure_collection(self, dimension: int) -> None:
        client = self._require()
        if not await client.collection_exists(self.collection):
            try:
                await client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                )
            except UnexpectedResponse as err:
                # Another replica created it first; the check below still applies.
                if err.status_code != 409:
                    raise
        info = await client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise StoreStartError(
                f"collection {self.collection!r} has named vectors; memoryd expects one unnamed vector "
                f"of size {dimension}"
            )
        if vectors.size != dimension:
            raise StoreStartError(
                f"collection {self.collection!r} holds vectors of size {vectors.size}, but the embedding "
                f"model makes vectors of size {dimension}; remove the collection or set another "
                "--collection-prefix"
            )
        if vectors.distance != models.Distance.COSINE:
            raise StoreStartError(
                f"collection {self.collection!r} uses {vectors.distance.value} distance; memoryd needs Cosine"
            )
        if self._url:
            # Local mode ignores payload indexes (and warns). On the server this
            # is idempotent: an existing index with the same schema is kept.
            for field_name, schema in _PAYLOAD_INDEXES:
                await client.create_payload_index(self.collection, field_name, field_schema=schema, wait=True)

    def _require(self) -> AsyncQdrantClient:
        if self._client is None:
            raise StoreUnavailable("the memory store is not started")
        return self._client

    async def get(self, memory_id: str) -> Memory | None:
        with _outages_as_unavailable():
            records = await self._require().retrieve(self.collection, [memory_id], with_payload=True)
        if not records:
            return None
        return memory_from_payload(str(records[0].id), records[0].payload or {})

    async def put(self, memory: Memory, vector: Sequence[float]) -> None:
        point = models.PointStruct(id=memory.memory_id, vector=list(vector), payload=memory_payload(memory))
        with _outages_as_unavailable():
            await self._require().upsert(self.collection, [point], wait=True)

    async def search(
        self,
        vector: Sequence[float],
        *,
        project_id: str,
        limit: int,
        task_id: str = "",
        kinds: Sequence[MemoryKind] = (),
    ) -> list[ScoredMemory]:
        must: list[models.Condition] = [_match("project_id", project_id)]
        if task_id:
            must.append(_match("task_id", task_id))
        if kinds:
            must.append(
                models.FieldCondition(key="kind", match=models.MatchAny(any=[k.value for k in kinds]))
            )
        with _outages_as_unavailable():
            reply = await self._require().query_points(
                self.collection,
                query=list(vector),
                query_filter=models.Filter(must=must),
                limit=limit,
                with_payload=True,
            )
        return [
            ScoredMemory(memory=memory_from_payload(str(p.id), p.payload or {}), score=float(p.score))
            for p in reply.points
        ]

    async def delete(self, project_id: str, memory_ids: Sequence[str]) -> int:
        # Both steps filter by project, so another project's point is never
        # touched even when its id is named.
        selection = models.Filter(
            must=[models.HasIdCondition(has_id=list(memory_ids)), _match("project_id", project_id)]
        )
        client = self._require()
        with _outages_as_unavailable():
            found = await client.count(self.collection, count_filter=selection, exact=True)
            if found.count == 0:
                return 0
            await client.delete(self.collection, models.FilterSelector(filter=selection), wait=True)
        return int(found.count)

    async def close(self) -> None:
        """Close the client (local mode releases the folder); safe twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


@contextlib.contextmanager
def _outages_as_unavailable() -> Iterator[None]:
    """Unreachable Qdrant and 5xx answers become StoreUnavailable; 4xx answers
    are our bugs, not outages, and surface as they are (INTERNAL)."""
    try:
        yield
    except ResponseHandlingException as err:
        raise StoreUnavailable(f"Qdrant: {err}") from err
    except UnexpectedResponse as err:
        if err.status_code is not None and err.status_code < 500:
            raise
        raise StoreUnavailable(f"Qdrant answered {err.status_code}") from err

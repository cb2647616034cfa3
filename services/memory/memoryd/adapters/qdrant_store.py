"""The memory store in Qdrant: one collection per embedding model, one point
per chunk of a memory, with a named dense vector and a named sparse vector.

Point layout. A memory of n chunks is n points with ids
``uuid5(memory_id, str(index))``. Every point carries all of the memory's
fields (so every filter applies to every chunk alike, and a hit on any chunk
names its memory) plus ``chunk_index``, ``chunk_start``, ``chunk_end``. The
full text is on chunk 0 only; a later chunk carries just its own text
(``chunk_text``). Short memories (the common case) are one point and a query
never needs a second round trip; a long memory's text is stored about once
rather than once per chunk (a 32 KiB text is ~40 chunks), at the cost of one
extra read when a query's best hit on it is a later chunk.

Dates are RFC 3339 strings in UTC with microseconds always written, so their
text order is their time order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from memoryd.domain.memories import ChunkRef, ListCursor, Memory, MemoryFilter, MemoryKind
from memoryd.domain.ports import ChunkPoint, SearchHits, SparseVector, StoreCounts, StoreUnavailable
from memoryd.domain.retrieval import ChunkHit

log = logging.getLogger(__name__)

#: The dense vector's name in every collection.
DENSE_VECTOR = "dense"

#: Most distinct (task, subtask) scopes one Stats call reports.
MAX_SCOPES = 10_000


class StoreStartError(Exception):
    """The store cannot start (Qdrant unreachable, the local folder in use by
    another process, a collection of another vector size or layout). memoryd
    exits with this message."""


def slug(text: str) -> str:
    """Lowercase, every run of characters outside [a-z0-9_] made one ``_``."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def collection_name(prefix: str, model_name: str, dimension: int) -> str:
    """The collection of one embedding model, e.g.
    ``hearth_memories__sentence_transformers_all_minilm_l6_v2__384``. The
    dimension is part of the name so that a model change never mixes vectors."""
    return f"{prefix}__{slug(model_name)}__{dimension}"


def sparse_vector_name(encoder_name: str) -> str:
    """The sparse vector of one encoder, e.g. ``sparse_bm25``."""
    return f"sparse_{slug(encoder_name)}"


def point_id(memory_id: str, chunk_index: int) -> str:
    """The point of a memory's chunk: stable, so a rewrite overwrites it."""
    return str(uuid.uuid5(uuid.UUID(memory_id), str(chunk_index)))


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def scope_key(task_id: str, subtask_id: str) -> str:
    """The (task, subtask) pair as one keyword, for counting by scope."""
    return json.dumps([task_id, subtask_id])


def chunk_payload(memory: Memory, chunk: ChunkRef) -> dict[str, Any]:
    """The payload of one chunk point of ``memory``."""
    payload: dict[str, Any] = {
        "memory_id": memory.memory_id,
        "project_id": memory.project_id,
        "task_id": memory.task_id,
        "subtask_id": memory.subtask_id,
        "scope": scope_key(memory.task_id, memory.subtask_id),
        "kind": memory.kind.value,
        "agent": memory.agent,
        "role": memory.role,
        "source": memory.source,
        "labels": dict(memory.labels),
        "created_at": rfc3339(memory.created_at),
        "valid_from": rfc3339(memory.valid_from or memory.created_at),
        "valid_to": rfc3339(memory.valid_to) if memory.valid_to else None,
        "updated_at": rfc3339(memory.updated_at or memory.created_at),
        "source_memory_ids": list(memory.source_memory_ids),
        "chunk_count": memory.chunk_count,
        "chunk_index": chunk.index,
        "chunk_start": chunk.start,
        "chunk_end": chunk.end,
    }
    if chunk.index == 0:
        payload["text"] = memory.text
    else:
        payload["chunk_text"] = memory.text[chunk.start : chunk.end]
    return payload


def metadata_payload(memory: Memory) -> dict[str, Any]:
    """The fields Update may change without touching the text."""
    return {
        "valid_from": rfc3339(memory.valid_from or memory.created_at),
        "valid_to": rfc3339(memory.valid_to) if memory.valid_to else None,
        "labels": dict(memory.labels),
        "updated_at": rfc3339(memory.updated_at or memory.created_at),
    }


def memory_from_payload(payload: Mapping[str, Any]) -> Memory:
    """The memory a chunk point describes; its text is empty unless it is chunk 0."""
    created = _datetime(payload.get("created_at")) or datetime(1970, 1, 1, tzinfo=UTC)
    try:
        kind = MemoryKind(payload.get("kind"))
    except ValueError:
        kind = MemoryKind.NOTE
    labels = payload.get("labels") or {}
    return Memory(
        memory_id=str(payload.get("memory_id", "")),
        text=str(payload.get("text", "")),
        project_id=str(payload.get("project_id", "")),
        task_id=str(payload.get("task_id", "")),
        subtask_id=str(payload.get("subtask_id", "")),
        kind=kind,
        source=str(payload.get("source", "")),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        created_at=created,
        agent=str(payload.get("agent", "")),
        role=str(payload.get("role", "")),
        valid_from=_datetime(payload.get("valid_from")) or created,
        valid_to=_datetime(payload.get("valid_to")),
        source_memory_ids=tuple(str(i) for i in payload.get("source_memory_ids") or ()),
        updated_at=_datetime(payload.get("updated_at")) or created,
        chunk_count=int(payload.get("chunk_count") or 1),
    )


def hit_from_point(point: models.ScoredPoint) -> ChunkHit:
    payload = point.payload or {}
    memory = memory_from_payload(payload)
    index = int(payload.get("chunk_index") or 0)
    chunk = ChunkRef(index, int(payload.get("chunk_start") or 0), int(payload.get("chunk_end") or 0))
    if index == 0:
        chunk_text = memory.text[chunk.start : chunk.end]
    else:
        chunk_text = str(payload.get("chunk_text", ""))
    return ChunkHit(memory, chunk, chunk_text, float(point.score), complete=index == 0)


def filter_conditions(memory_filter: MemoryFilter) -> list[models.Condition]:
    """The Qdrant conditions of a (validated) filter. The project condition is
    always first and always there: no translated filter crosses projects."""
    must: list[models.Condition] = [_match("project_id", memory_filter.project_id)]
    for key in ("task_id", "subtask_id", "agent", "role", "source"):
        value = getattr(memory_filter, key)
        if value:
            must.append(_match(key, value))
    if memory_filter.kinds:
        must.append(
            models.FieldCondition(
                key="kind", match=models.MatchAny(any=[k.value for k in memory_filter.kinds])
            )
        )
    if memory_filter.created_after is not None or memory_filter.created_before is not None:
        must.append(
            models.FieldCondition(
                key="created_at",
                range=models.DatetimeRange(
                    gt=memory_filter.created_after,
                    lt=memory_filter.created_before,
                ),
            )
        )
    if memory_filter.valid_at is not None:
        moment = memory_filter.valid_at
        must.append(models.FieldCondition(key="valid_from", range=models.DatetimeRange(lte=moment)))
        must.append(
            models.Filter(
                should=[
                    models.IsEmptyCondition(is_empty=models.PayloadField(key="valid_to")),
                    models.FieldCondition(key="valid_to", range=models.DatetimeRange(gt=moment)),
                ]
            )
        )
    for name, value in sorted(memory_filter.match.items()):
        must.append(_match(name, value))
    return must


# Indexed payload fields. project_id is the tenant: Qdrant keeps each
# project's points together and searches within one.
_PAYLOAD_INDEXES: tuple[tuple[str, Any], ...] = (
    ("project_id", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
    *(
        (name, models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD))
        for name in ("task_id", "subtask_id", "kind", "agent", "role", "source", "memory_id", "scope")
    ),
    *(
        (name, models.DatetimeIndexParams(type=models.DatetimeIndexType.DATETIME))
        for name in ("created_at", "valid_from", "valid_to")
    ),
    ("chunk_index", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True)),
)

_HEAD = models.FieldCondition(key="chunk_index", match=models.MatchValue(value=0))


class QdrantMemoryStore:
    """:class:`~memoryd.domain.ports.MemoryStore` over AsyncQdrantClient.

    Local mode (no ``url``) keeps the data in ``path``; qdrant-client allows
    one process per folder, and memoryd is that process. Writes wait for
    Qdrant to acknowledge them (``wait=True``).

    Lifecycle: ``await start(model_name, dimension, sparse_name, sparse_idf)``
    opens the client and makes sure the model's collection exists with that
    layout; ``await close()`` is safe twice and after a failed start.

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
        self._collection = ""
        self._dimension = 0
        self._sparse = ""

    @property
    def where(self) -> str:
        return self._url or f"local mode in {self._path}"

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def dimension(self) -> int:
        return self._dimension

    async def start(
        self, model_name: str, dimension: int, sparse_name: str = "bm25", sparse_idf: bool = True
    ) -> None:
        """Open the client and make sure the collection of this model exists.

        Raises:
            StoreStartError: Qdrant cannot be opened, or the collection exists
                with another vector size, distance or layout.
        """
        if self._client is not None:
            return
        self._collection = collection_name(self._prefix, model_name, dimension)
        self._dimension = dimension
        self._sparse = sparse_vector_name(sparse_name)
        try:
            if self._url:
                self._client = AsyncQdrantClient(url=self._url, api_key=self._api_key or None)
            else:
                assert self._path is not None
                self._path.mkdir(parents=True, exist_ok=True)
                self._client = AsyncQdrantClient(path=str(self._path))
            await self._ensure_collection(dimension, sparse_idf)
        except StoreStartError:
            raise
        except (RuntimeError, OSError, ResponseHandlingException, UnexpectedResponse) as err:
            # RuntimeError is how local mode says another process holds the folder.
            raise StoreStartError(f"cannot open Qdrant ({self.where}): {err}") from err
        log.info("memories in Qdrant %s, collection %s", self.where, self._collection)

    async def _ensure_collection(self, dimension: int, sparse_idf: bool) -> None:
        client = self._require()
        name = self._collection
        if not await client.collection_exists(name):
            try:
                await client.create_collection(
                    name,
                    vectors_config={
                        DENSE_VECTOR: models.VectorParams(size=dimension, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config={
                        self._sparse: models.SparseVectorParams(
                            modifier=models.Modifier.IDF if sparse_idf else models.Modifier.NONE
                        )
                    },
                )
            except UnexpectedResponse as err:
                # Another replica created it first; the checks below still apply.
                if err.status_code != 409:
                    raise
        params = (await client.get_collection(name)).config.params
        vectors = params.vectors
        dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else vectors
        if dense is not None and dense.size != dimension:
            raise StoreStartError(
                f"collection {name!r} holds vectors of size {dense.size}, but the embedding model makes "
                f"vectors of size {dimension}; remove the collection or set another --collection-prefix"
            )
        if not isinstance(vectors, dict) or dense is None:
            raise StoreStartError(
                f"collection {name!r} has the layout of an older memoryd (no named {DENSE_VECTOR!r} vector); "
                "move its memories to a new collection, or set another --collection-prefix"
            )
        if dense.distance != models.Distance.COSINE:
            raise StoreStartError(
                f"collection {name!r} uses {dense.distance.value} distance; memoryd needs Cosine"
            )
        sparse = params.sparse_vectors or {}
        if self._sparse not in sparse:
            raise StoreStartError(
                f"collection {name!r} has no sparse vector {self._sparse!r} "
                f"(it has {sorted(sparse) or 'none'}); its memories were written with another sparse "
                "encoder; use that encoder or another "
                "--collection-prefix"
            )
        if self._url:
            # Local mode ignores payload indexes (and warns). On the server this
            # is idempotent: an existing index with the same schema is kept.
            for field_name, schema in _PAYLOAD_INDEXES:
                await client.create_payload_index(name, field_name, field_schema=schema, wait=True)

    def _require(self) -> AsyncQdrantClient:
        if self._client is None:
            raise StoreUnavailable("the memory store is not started")
        return self._client

    def _point(self, point: ChunkPoint) -> models.PointStruct:
        vector: dict[str, Any] = {DENSE_VECTOR: list(point.dense)}
        if point.sparse.indices:
            vector[self._sparse] = models.SparseVector(
                indices=list(point.sparse.indices), values=list(point.sparse.values)
            )
        return models.PointStruct(
            id=point_id(point.memory.memory_id, point.chunk.index),
            vector=vector,
            payload=chunk_payload(point.memory, point.chunk),
        )

    async def write(self, points: Sequence[ChunkPoint]) -> None:
        structs = [self._point(point) for point in points]
        with _outages_as_unavailable():
            await self._require().upsert(self._collection, structs, wait=True)

    async def get_many(self, project_id: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        if not memory_ids:
            return {}
        with _outages_as_unavailable():
            records = await self._require().retrieve(
                self._collection, [point_id(i, 0) for i in memory_ids], with_payload=True
            )
        found: dict[str, Memory] = {}
        for record in records:
            memory = memory_from_payload(record.payload or {})
            # Retrieval is by id, so the project is checked here.
            if memory.project_id == project_id:
                found[memory.memory_id] = memory
        return found

    async def search(
        self,
        memory_filter: MemoryFilter,
        *,
        dense: Sequence[float] | None,
        sparse: SparseVector | None,
        limit: int,
    ) -> SearchHits:
        query_filter = models.Filter(must=filter_conditions(memory_filter))
        requests: list[models.QueryRequest] = []
        if dense is not None:
            requests.append(
                models.QueryRequest(
                    query=list(dense), using=DENSE_VECTOR, filter=query_filter, limit=limit, with_payload=True
                )
            )
        if sparse is not None:
            requests.append(
                models.QueryRequest(
                    query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
                    using=self._sparse,
                    filter=query_filter,
                    limit=limit,
                    with_payload=True,
                )
            )
        if not requests:
            return SearchHits([], [])
        client = self._require()
        with _outages_as_unavailable():
            if len(requests) == 1:
                request = requests[0]
                replies = [
                    await client.query_points(
                        self._collection,
                        query=request.query,
                        using=request.using,
                        query_filter=query_filter,
                        limit=limit,
                        with_payload=True,
                    )
                ]
            else:
                # Both retrievers in one round trip; fusion happens in the
                # domain, which also needs each retriever's ranks.
                replies = await client.query_batch_points(self._collection, requests)
        found = [[hit_from_point(p) for p in reply.points] for reply in replies]
        dense_hits = found.pop(0) if dense is not None else []
        sparse_hits = found.pop(0) if sparse is not None else []
        return SearchHits(dense_hits, sparse_hits)

    async def list_page(
        self, memory_filter: MemoryFilter, limit: int, after: ListCursor | None
    ) -> list[Memory]:
        """Ordered by created_at in Qdrant and by memory id among equal times
        here: Qdrant orders by one key only, so the memories sharing the last
        time of a batch (one Store stamps all its memories alike) are fetched
        whole before the page is cut."""
        base = [*filter_conditions(memory_filter), _HEAD]
        collected: list[Memory] = []
        lower = after.created_at if after is not None else None
        inclusive = True
        fetch = limit + 1
        while len(collected) < limit:
            must = list(base)
            if lower is not None:
                bound = models.DatetimeRange(gte=lower) if inclusive else models.DatetimeRange(gt=lower)
                must.append(models.FieldCondition(key="created_at", range=bound))
            batch = await self._scroll(must, fetch, ordered=True)
            if len(batch) < fetch:
                collected.extend(sorted(_after(batch, after), key=_list_order))
                break
            last_time = batch[-1].created_at
            group = [m for m in batch if m.created_at < last_time]
            same = models.FieldCondition(
                key="created_at", range=models.DatetimeRange(gte=last_time, lte=last_time)
            )
            group.extend(await self._scroll_all([*base, same]))
            collected.extend(sorted(_after(group, after), key=_list_order))
            lower, inclusive = last_time, False
        return collected[:limit]

    async def _scroll(self, must: list[models.Condition], limit: int, *, ordered: bool) -> list[Memory]:
        with _outages_as_unavailable():
            records, _ = await self._require().scroll(
                self._collection,
                scroll_filter=models.Filter(must=must),
                limit=limit,
                order_by=models.OrderBy(key="created_at", direction=models.Direction.ASC)
                if ordered
                else None,
                with_payload=True,
            )
        return [memory_from_payload(r.payload or {}) for r in records]

    async def _scroll_all(self, must: list[models.Condition]) -> list[Memory]:
        found: list[Memory] = []
        offset: Any = None
        while True:
            with _outages_as_unavailable():
                records, offset = await self._require().scroll(
                    self._collection,
                    scroll_filter=models.Filter(must=must),
                    limit=1000,
                    offset=offset,
                    with_payload=True,
                )
            found.extend(memory_from_payload(r.payload or {}) for r in records)
            if offset is None:
                return found

    async def replace_chunks(self, memory: Memory, points: Sequence[ChunkPoint]) -> None:
        # New chunks first (same ids overwrite), then the old tail: a crash in
        # between leaves extra chunks of the new memory's metadata, never a
        # memory without its text.
        await self.write(points)
        stale = models.Filter(
            must=[
                _match("project_id", memory.project_id),
                _match("memory_id", memory.memory_id),
                models.FieldCondition(key="chunk_index", range=models.Range(gte=len(points))),
            ]
        )
        with _outages_as_unavailable():
            await self._require().delete(self._collection, models.FilterSelector(filter=stale), wait=True)

    async def rewrite_metadata(self, memory: Memory) -> None:
        chunks = models.Filter(
            must=[_match("project_id", memory.project_id), _match("memory_id", memory.memory_id)]
        )
        with _outages_as_unavailable():
            await self._require().set_payload(
                self._collection, payload=metadata_payload(memory), points=chunks, wait=True
            )

    async def delete(
        self, project_id: str, memory_ids: Sequence[str] = (), memory_filter: MemoryFilter | None = None
    ) -> int:
        # Every selection carries the project condition, so another project's
        # point is never touched, even when its id is named.
        if memory_filter is not None:
            if memory_filter.project_id != project_id:
                raise ValueError("the filter's project differs from the call's")
            must = filter_conditions(memory_filter)
        elif memory_ids:
            must = [
                _match("project_id", project_id),
                models.FieldCondition(key="memory_id", match=models.MatchAny(any=list(memory_ids))),
            ]
        else:
            return 0
        client = self._require()
        with _outages_as_unavailable():
            found = await client.count(
                self._collection, count_filter=models.Filter(must=[*must, _HEAD]), exact=True
            )
            if found.count == 0:
                return 0
            await client.delete(
                self._collection, models.FilterSelector(filter=models.Filter(must=must)), wait=True
            )
        return int(found.count)

    async def count(self, project_id: str) -> StoreCounts:
        heads = models.Filter(must=[_match("project_id", project_id), _HEAD])
        client = self._require()
        with _outages_as_unavailable():
            total = await client.count(self._collection, count_filter=heads, exact=True)
            kinds = await client.facet(
                self._collection, key="kind", facet_filter=heads, limit=len(MemoryKind) + 1, exact=True
            )
            scopes = await client.facet(
                self._collection, key="scope", facet_filter=heads, limit=MAX_SCOPES, exact=True
            )
        by_kind: dict[MemoryKind, int] = {}
        for hit in kinds.hits:
            with contextlib.suppress(ValueError):
                by_kind[MemoryKind(str(hit.value))] = int(hit.count)
        by_scope: dict[tuple[str, str], int] = {}
        for hit in scopes.hits:
            with contextlib.suppress(ValueError, TypeError):
                task_id, subtask_id = json.loads(str(hit.value))
                by_scope[(str(task_id), str(subtask_id))] = int(hit.count)
        return StoreCounts(int(total.count), by_kind, by_scope)

    async def points(self) -> int:
        """Points (chunks) in the collection, as Qdrant counts them without a filter (cheap;
        may lag a write by a moment)."""
        client = self._require()
        with _outages_as_unavailable():
            info = await client.get_collection(self._collection)
        return int(info.points_count or 0)

    async def close(self) -> None:
        """Close the client (local mode releases the folder); safe twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _after(memories: list[Memory], cursor: ListCursor | None) -> list[Memory]:
    if cursor is None:
        return memories
    key = (cursor.created_at, cursor.memory_id)
    return [m for m in memories if _list_order(m) > key]


def _list_order(memory: Memory) -> tuple[datetime, str]:
    return (memory.created_at, memory.memory_id)


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _datetime(value: object) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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

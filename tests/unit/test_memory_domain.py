"""memoryd's pure rules: validation, idempotent ids, collection names, proto
conversion, and MemoryService over fakes of its two interfaces."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hearth.api.memory.v1 import memory_pb2
from hearth.errors import InvalidArgument, Unavailable
from memoryd.adapters.embedders import DEFAULT_MODEL_NAME, resolve_local_model
from memoryd.adapters.qdrant_store import collection_name, slug
from memoryd.api.convert import kinds_from_proto, memory_to_proto, new_memory_from_proto
from memoryd.domain import (
    IDEMPOTENCY_NAMESPACE,
    MAX_DELETE_IDS,
    EmbedderUnavailable,
    EmbeddingInputTooLarge,
    Memory,
    MemoryKind,
    MemoryLimits,
    MemoryQuery,
    MemoryService,
    NewMemory,
    ScoredMemory,
    memory_id_for,
    parse_memory_ids,
    parse_request_id,
    validate_new_memory,
    validate_query,
)

pytestmark = pytest.mark.unit

LIMITS = MemoryLimits(max_text_chars=50, default_top_k=5, max_top_k=100)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewMemory(text="", project_id="p"), "memory.text"),
        (NewMemory(text=" \n\t ", project_id="p"), "memory.text"),
        (NewMemory(text="x" * 51, project_id="p"), "memory.text"),
        (NewMemory(text="hello", project_id=""), "memory.project_id"),
        (NewMemory(text="hello", project_id="   "), "memory.project_id"),
    ],
)
def test_bad_memory_names_its_field(new: NewMemory, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_new_memory(new, LIMITS)
    assert caught.value.field == field
    assert caught.value.metadata["field"] == field


def test_memory_at_the_limit_passes_and_kind_defaults_to_note() -> None:
    checked = validate_new_memory(NewMemory(text="x" * 50, project_id="p"), LIMITS)
    assert checked.kind is MemoryKind.NOTE
    kept = validate_new_memory(NewMemory(text="y", project_id="p", kind=MemoryKind.DESIGN_DOC), LIMITS)
    assert kept.kind is MemoryKind.DESIGN_DOC


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (MemoryQuery(text="", project_id="p"), "text"),
        (MemoryQuery(text="  ", project_id="p"), "text"),
        (MemoryQuery(text="x" * 51, project_id="p"), "text"),
        (MemoryQuery(text="q", project_id=""), "project_id"),
        (MemoryQuery(text="q", project_id="p", top_k=-1), "top_k"),
        (MemoryQuery(text="q", project_id="p", top_k=101), "top_k"),
    ],
)
def test_bad_query_names_its_field(query: MemoryQuery, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_query(query, LIMITS)
    assert caught.value.field == field


def test_top_k_zero_means_default_and_max_is_allowed() -> None:
    assert validate_query(MemoryQuery(text="q", project_id="p"), LIMITS).top_k == 5
    assert validate_query(MemoryQuery(text="q", project_id="p", top_k=100), LIMITS).top_k == 100


def test_request_id_must_be_a_uuid() -> None:
    assert parse_request_id("") is None
    key = uuid.uuid4()
    assert parse_request_id(str(key).upper()) == key
    with pytest.raises(InvalidArgument) as caught:
        parse_request_id("retry-1")
    assert caught.value.field == "request_id"


def test_memory_ids_are_checked_and_canonical() -> None:
    one = uuid.uuid4()
    assert parse_memory_ids("p", [str(one).upper(), str(one)]) == [str(one)]
    with pytest.raises(InvalidArgument) as caught:
        parse_memory_ids("p", [str(one), "not-an-id"])
    assert (caught.value.field, caught.value.metadata["index"]) == ("memory_ids", "1")
    with pytest.raises(InvalidArgument) as too_many:
        parse_memory_ids("p", [str(uuid.uuid4()) for _ in range(MAX_DELETE_IDS + 1)])
    assert too_many.value.field == "memory_ids"
    with pytest.raises(InvalidArgument) as no_project:
        parse_memory_ids("", [str(one)])
    assert no_project.value.field == "project_id"


def test_idempotent_ids_derive_from_project_and_request_id() -> None:
    key = uuid.UUID("0b7e6a52-8f0a-4c55-9b39-4f0f5c1f3c2d")
    first = memory_id_for("proj", key)
    assert first == str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"proj:{key}"))
    assert memory_id_for("proj", key) == first
    assert memory_id_for("other", key) != first
    assert memory_id_for("proj", None) != memory_id_for("proj", None)
    assert uuid.UUID(memory_id_for("proj", None)).version == 4


def test_collection_names_carry_model_and_dimension() -> None:
    assert slug("sentence-transformers/all-MiniLM-L6-v2") == "sentence_transformers_all_minilm_l6_v2"
    assert (
        collection_name("hearth_memories", "sentence-transformers/all-MiniLM-L6-v2", 384)
        == "hearth_memories__sentence_transformers_all_minilm_l6_v2__384"
    )
    assert collection_name("m", "BAAI/bge-m3", 1024) == "m__baai_bge_m3__1024"
    assert collection_name("m", "x", 8) != collection_name("m", "x", 16)


def test_local_model_names(tmp_path: Path) -> None:
    default = resolve_local_model("")
    assert default.name == DEFAULT_MODEL_NAME and Path(default.path, "modules.json").is_file()
    folder = tmp_path / "bge-small"
    folder.mkdir()
    assert resolve_local_model(str(folder)).name == "bge-small"
    assert resolve_local_model("BAAI/bge-m3").name == "BAAI/bge-m3"


def test_proto_kinds_convert_both_ways() -> None:
    new = new_memory_from_proto(
        memory_pb2.Memory(
            text="t", project_id="p", kind=memory_pb2.MEMORY_KIND_RAW_INTERACTION, labels={"a": "b"}
        )
    )
    assert (new.kind, dict(new.labels)) == (MemoryKind.RAW_INTERACTION, {"a": "b"})
    assert new_memory_from_proto(memory_pb2.Memory(text="t", project_id="p")).kind is None
    with pytest.raises(InvalidArgument) as unknown:
        new_memory_from_proto(memory_pb2.Memory(text="t", project_id="p", kind=99))  # type: ignore[arg-type]
    assert unknown.value.field == "memory.kind"
    assert kinds_from_proto([memory_pb2.MEMORY_KIND_NOTE, memory_pb2.MEMORY_KIND_NOTE]) == (MemoryKind.NOTE,)
    with pytest.raises(InvalidArgument) as unspecified:
        kinds_from_proto([memory_pb2.MEMORY_KIND_UNSPECIFIED])
    assert unspecified.value.field == "kinds"
    stored = Memory("id", "t", "p", "", "", MemoryKind.TASK_SUMMARY, "job-1", {}, NOW)
    proto = memory_to_proto(stored)
    assert proto.kind == memory_pb2.MEMORY_KIND_TASK_SUMMARY
    assert proto.create_time.ToDatetime(tzinfo=UTC) == NOW


class CountingEmbedder:
    """A fake Embedder: a 2-d vector from the text length; counts texts."""

    model_name = "fake"
    dimension = 2

    def __init__(self, error: Exception | None = None) -> None:
        self.texts: list[str] = []
        self.error = error

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if self.error is not None:
            raise self.error
        self.texts.extend(texts)
        return [[float(len(t)), 1.0] for t in texts]


class DictStore:
    """A fake MemoryStore in a dict."""

    def __init__(self) -> None:
        self.memories: dict[str, Memory] = {}

    async def get(self, memory_id: str) -> Memory | None:
        return self.memories.get(memory_id)

    async def put(self, memory: Memory, vector: Sequence[float]) -> None:
        self.memories[memory.memory_id] = memory

    async def search(
        self,
        vector: Sequence[float],
        *,
        project_id: str,
        limit: int,
        task_id: str = "",
        kinds: Sequence[MemoryKind] = (),
    ) -> list[ScoredMemory]:
        found = [m for m in self.memories.values() if m.project_id == project_id]
        return [ScoredMemory(m, 1.0) for m in found[:limit]]

    async def delete(self, project_id: str, memory_ids: Sequence[str]) -> int:
        doomed = [i for i in memory_ids if i in self.memories and self.memories[i].project_id == project_id]
        for memory_id in doomed:
            del self.memories[memory_id]
        return len(doomed)


def _service(embedder: CountingEmbedder, store: DictStore) -> MemoryService:
    return MemoryService(embedder, store, LIMITS, clock=lambda: NOW)


async def test_repeated_request_id_returns_the_first_memory_without_embedding() -> None:
    embedder, store = CountingEmbedder(), DictStore()
    service = _service(embedder, store)
    key = str(uuid.uuid4())
    first = await service.store(NewMemory(text="first", project_id="p"), key)
    again = await service.store(NewMemory(text="second", project_id="p"), key)
    assert first.created and not again.created
    assert again.memory == first.memory
    assert again.memory.text == "first"
    assert embedder.texts == ["first"]
    assert len(store.memories) == 1
    assert first.memory.created_at == NOW and first.memory.kind is MemoryKind.NOTE


async def test_bad_requests_embed_and_write_nothing() -> None:
    embedder, store = CountingEmbedder(), DictStore()
    service = _service(embedder, store)
    with pytest.raises(InvalidArgument):
        await service.store(NewMemory(text="ok", project_id="p"), "not-a-uuid")
    with pytest.raises(InvalidArgument):
        await service.store(NewMemory(text="x" * 51, project_id="p"))
    with pytest.raises(InvalidArgument):
        await service.query(MemoryQuery(text="q", project_id="p", top_k=1000))
    assert embedder.texts == [] and store.memories == {}


async def test_embedder_failures_become_hearth_errors() -> None:
    store = DictStore()
    too_large = _service(CountingEmbedder(EmbeddingInputTooLarge("512 tokens at most")), store)
    with pytest.raises(InvalidArgument) as caught:
        await too_large.store(NewMemory(text="long", project_id="p"))
    assert (caught.value.field, caught.value.reason) == ("memory.text", "INPUT_TOO_LARGE")
    down = _service(CountingEmbedder(EmbedderUnavailable("busy", retry_after=3.0)), store)
    with pytest.raises(Unavailable) as unavailable:
        await down.query(MemoryQuery(text="q", project_id="p"))
    assert (unavailable.value.reason, unavailable.value.retry_after) == ("EMBEDDER_UNAVAILABLE", 3.0)
    assert store.memories == {}


async def test_delete_counts_only_the_projects_memories() -> None:
    store = DictStore()
    service = _service(CountingEmbedder(), store)
    mine = (await service.store(NewMemory(text="mine", project_id="p"))).memory
    theirs = (await service.store(NewMemory(text="theirs", project_id="q"))).memory
    assert await service.delete("p", []) == 0
    assert await service.delete("p", [mine.memory_id, theirs.memory_id, str(uuid.uuid4())]) == 1
    assert list(store.memories) == [theirs.memory_id]

"""QdrantMemoryStore in Qdrant local mode in a temp folder (no server)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from memoryd.adapters.qdrant_store import QdrantMemoryStore, StoreStartError, collection_name
from memoryd.domain import Memory, MemoryKind

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def memory(
    project_id: str, *, task_id: str = "", kind: MemoryKind = MemoryKind.NOTE, text: str = "t"
) -> Memory:
    return Memory(str(uuid.uuid4()), text, project_id, task_id, "sub", kind, "job-9", {"lang": "en"}, NOW)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[QdrantMemoryStore]:
    opened = QdrantMemoryStore("test", path=tmp_path / "qdrant")
    await opened.start("unit/model", 3)
    yield opened
    await opened.close()


async def test_put_get_round_trip(store: QdrantMemoryStore) -> None:
    assert store.collection == "test__unit_model__3"
    stored = memory("p", task_id="t1", kind=MemoryKind.CODE_SNIPPET, text="def f(): pass")
    await store.put(stored, [1.0, 0.0, 0.0])
    assert await store.get(stored.memory_id) == stored
    assert await store.get(str(uuid.uuid4())) is None


async def test_search_never_crosses_projects_and_filters(store: QdrantMemoryStore) -> None:
    near_other = memory("other")
    near = memory("p", task_id="t1")
    far = memory("p", task_id="t2", kind=MemoryKind.DESIGN_DOC)
    await store.put(near_other, [1.0, 0.0, 0.0])
    await store.put(near, [0.9, 0.1, 0.0])
    await store.put(far, [0.0, 0.0, 1.0])

    found = await store.search([1.0, 0.0, 0.0], project_id="p", limit=10)
    assert [s.memory.memory_id for s in found] == [near.memory_id, far.memory_id]
    assert found[0].score > found[1].score
    assert found[0].score == pytest.approx(0.9 / (0.82**0.5), rel=1e-4)
    by_task = await store.search([1.0, 0.0, 0.0], project_id="p", limit=10, task_id="t2")
    assert [s.memory.memory_id for s in by_task] == [far.memory_id]
    by_kind = await store.search([1.0, 0.0, 0.0], project_id="p", limit=10, kinds=[MemoryKind.NOTE])
    assert [s.memory.memory_id for s in by_kind] == [near.memory_id]
    assert len(await store.search([1.0, 0.0, 0.0], project_id="p", limit=1)) == 1


async def test_delete_only_within_the_project(store: QdrantMemoryStore) -> None:
    mine, theirs = memory("p"), memory("q")
    await store.put(mine, [1.0, 0.0, 0.0])
    await store.put(theirs, [1.0, 0.0, 0.0])
    assert await store.delete("p", [mine.memory_id, theirs.memory_id, str(uuid.uuid4())]) == 1
    assert await store.get(mine.memory_id) is None
    assert await store.get(theirs.memory_id) == theirs
    assert await store.delete("p", [mine.memory_id]) == 0


async def test_another_vector_size_stops_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "qdrant"
    folder.mkdir()
    name = collection_name("test", "unit/model", 384)
    client = QdrantClient(path=str(folder))
    client.create_collection(
        name, vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE)
    )
    client.close()

    store = QdrantMemoryStore("test", path=folder)
    with pytest.raises(StoreStartError) as caught:
        await store.start("unit/model", 384)
    await store.close()
    await store.close()
    assert "8" in str(caught.value) and "384" in str(caught.value)


async def test_a_held_folder_is_a_start_error(store: QdrantMemoryStore, tmp_path: Path) -> None:
    second = QdrantMemoryStore("test", path=tmp_path / "qdrant")
    with pytest.raises(StoreStartError) as caught:
        await second.start("unit/model", 3)
    await second.close()
    assert "cannot open Qdrant" in str(caught.value)

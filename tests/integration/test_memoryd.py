"""memoryd as a real process: local Qdrant in a temp data dir and the local
all-MiniLM-L6-v2 embedder. memoryd needs no NATS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from qdrant_client import QdrantClient, models

from hearth.api.memory.v1 import memory_pb2 as pb
from hearth.api.memory.v1 import memory_pb2_grpc
from hearth.embedded import free_port
from hearth.errors import InvalidArgument, from_rpc_error
from memoryd.adapters.embedders import DEFAULT_MODEL_NAME
from memoryd.adapters.qdrant_store import collection_name
from tests.integration.service_process import ServiceProcess, service_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def memoryd_args(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--log-format", "text"]


def memoryd_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def memoryd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("memoryd")
    args = memoryd_args(data_dir)
    process = ServiceProcess(
        "memoryd", data_dir / "memoryd.log", *args, env=memoryd_env(), healthy_within=90, stop_within=20
    )
    with process:
        yield process


@pytest.fixture
async def stub(memoryd: ServiceProcess) -> AsyncIterator[memory_pb2_grpc.MemoryServiceStub]:
    async with grpc.aio.insecure_channel(memoryd.address) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)


def project() -> str:
    return f"proj-{uuid.uuid4().hex[:8]}"


async def store(
    stub: memory_pb2_grpc.MemoryServiceStub, text: str, project_id: str, **fields: object
) -> pb.Memory:
    reply = await stub.Store(pb.StoreRequest(memory=pb.Memory(text=text, project_id=project_id, **fields)))  # type: ignore[arg-type]
    return reply.memory


async def test_query_finds_the_nearest_in_meaning_within_its_project(
    stub: memory_pb2_grpc.MemoryServiceStub,
) -> None:
    home, away = project(), project()
    cat = await store(stub, "The cat curled up on the mat and purred.", home, source="job-1")
    taxes = await store(stub, "Quarterly tax filing deadlines for small businesses.", home, task_id="t-tax")
    kitten = await store(stub, "A kitten is sleeping on a rug.", away)
    assert cat.memory_id and cat.create_time.seconds > 0 and cat.kind == pb.MEMORY_KIND_NOTE

    reply = await stub.Query(pb.QueryRequest(text="a cat napping on a carpet", project_id=home))
    found = [r.memory for r in reply.results]
    assert [m.memory_id for m in found] == [cat.memory_id, taxes.memory_id]
    assert reply.results[0].score > reply.results[1].score
    assert found[0].text == cat.text and found[0].source == "job-1" and found[0].project_id == home
    assert kitten.memory_id not in {m.memory_id for m in found}

    elsewhere = await stub.Query(pb.QueryRequest(text="a cat napping on a carpet", project_id=away, top_k=10))
    assert [r.memory.memory_id for r in elsewhere.results] == [kitten.memory_id]


async def test_task_and_kind_filters(stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    home = project()
    design = await store(stub, "Use NATS for heartbeats.", home, task_id="t1", kind=pb.MEMORY_KIND_DESIGN_DOC)
    note = await store(stub, "Heartbeats every two seconds.", home, task_id="t1")
    other_task = await store(stub, "Heartbeat TTL is six seconds.", home, task_id="t2")

    by_task = await stub.Query(pb.QueryRequest(text="heartbeats", project_id=home, task_id="t1"))
    assert {r.memory.memory_id for r in by_task.results} == {design.memory_id, note.memory_id}
    by_kind = await stub.Query(
        pb.QueryRequest(text="heartbeats", project_id=home, kinds=[pb.MEMORY_KIND_DESIGN_DOC])
    )
    assert [r.memory.memory_id for r in by_kind.results] == [design.memory_id]
    everything = await stub.Query(pb.QueryRequest(text="heartbeats", project_id=home, top_k=2))
    assert len(everything.results) == 2
    assert other_task.memory_id


async def test_repeated_request_id_returns_the_first_memory(stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    home, key = project(), str(uuid.uuid4())
    first = await stub.Store(
        pb.StoreRequest(memory=pb.Memory(text="first words", project_id=home), request_id=key)
    )
    again = await stub.Store(
        pb.StoreRequest(memory=pb.Memory(text="other words", project_id=home), request_id=key)
    )
    assert again.memory == first.memory
    reply = await stub.Query(pb.QueryRequest(text="words", project_id=home, top_k=10))
    assert [r.memory.text for r in reply.results] == ["first words"]


async def test_delete_within_a_project(stub: memory_pb2_grpc.MemoryServiceStub) -> None:
    home, away = project(), project()
    doomed = await store(stub, "Delete me.", home)
    kept = await store(stub, "Keep me.", home)
    theirs = await store(stub, "Not yours to delete.", away)

    reply = await stub.Delete(
        pb.DeleteRequest(project_id=home, memory_ids=[doomed.memory_id, theirs.memory_id, str(uuid.uuid4())])
    )
    assert reply.deleted == 1
    left = await stub.Query(pb.QueryRequest(text="delete", project_id=home, top_k=10))
    assert [r.memory.memory_id for r in left.results] == [kept.memory_id]
    still = await stub.Query(pb.QueryRequest(text="delete", project_id=away, top_k=10))
    assert [r.memory.memory_id for r in still.results] == [theirs.memory_id]


async def invalid_field(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(caught.value)
    assert isinstance(err, InvalidArgument)
    return err.metadata["field"]


async def test_bad_inputs_are_invalid_argument_and_write_nothing(
    stub: memory_pb2_grpc.MemoryServiceStub,
) -> None:
    home = project()
    memory = pb.Memory(text="valid text", project_id=home)
    bad_stores = {
        "memory.text": pb.StoreRequest(memory=pb.Memory(text="   ", project_id=home)),
        "memory.project_id": pb.StoreRequest(memory=pb.Memory(text="no project")),
        "request_id": pb.StoreRequest(memory=memory, request_id="again-please"),
        "memory.kind": pb.StoreRequest(memory=pb.Memory(text="valid text", project_id=home, kind=42)),  # type: ignore[arg-type]
    }
    for field, request in bad_stores.items():
        assert await invalid_field(stub.Store(request)) == field
    too_long = pb.StoreRequest(memory=pb.Memory(text="x" * 32769, project_id=home))
    assert await invalid_field(stub.Store(too_long)) == "memory.text"

    assert await invalid_field(stub.Query(pb.QueryRequest(text="q", project_id=home, top_k=101))) == "top_k"
    assert await invalid_field(stub.Query(pb.QueryRequest(text="q", project_id=home, top_k=-1))) == "top_k"
    assert await invalid_field(stub.Query(pb.QueryRequest(text="", project_id=home))) == "text"
    assert await invalid_field(stub.Query(pb.QueryRequest(text="q"))) == "project_id"
    bad_delete = pb.DeleteRequest(project_id=home, memory_ids=["not-an-id"])
    assert await invalid_field(stub.Delete(bad_delete)) == "memory_ids"

    written = await stub.Query(pb.QueryRequest(text="valid text", project_id=home, top_k=100))
    assert list(written.results) == []


async def test_memories_survive_a_restart(memoryd: ServiceProcess) -> None:
    home = project()
    async with grpc.aio.insecure_channel(memoryd.address) as channel:
        kept = await store(
            memory_pb2_grpc.MemoryServiceStub(channel), "Remember the milk.", home, task_id="t"
        )
    assert await asyncio.to_thread(memoryd.stop) == 0
    await asyncio.to_thread(memoryd.start)
    async with grpc.aio.insecure_channel(memoryd.address) as channel:
        reply = await memory_pb2_grpc.MemoryServiceStub(channel).Query(
            pb.QueryRequest(text="groceries to buy", project_id=home)
        )
    assert [r.memory for r in reply.results] == [kept]


def test_a_collection_of_another_size_stops_memoryd(tmp_path: Path) -> None:
    folder = tmp_path / "qdrant"
    folder.mkdir()
    client = QdrantClient(path=str(folder))
    client.create_collection(
        collection_name("hearth_memories", DEFAULT_MODEL_NAME, 384),
        vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE),
    )
    client.close()

    done = subprocess.run(
        service_command("memoryd", f"127.0.0.1:{free_port()}", *memoryd_args(tmp_path)),
        env=memoryd_env(),
        capture_output=True,
        timeout=110,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode != 0, stderr[-2000:]
    assert "size 8" in stderr and "size 384" in stderr, stderr[-2000:]

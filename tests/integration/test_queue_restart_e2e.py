"""End to end with the simulated engine: a full queue, and orchestratord
restarted while jobs wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hearth import errors
from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from hearth.embedded import wait_healthy
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "sim-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    config = {
        "models": [{"name": MODEL, "engine": "sim", "context_length": 4096, "roles": ["default"]}],
        "orchestrator": {"max_queued": 3, "max_running": 1},
        "worker": {
            "engine": "sim",
            "model": MODEL,
            "max_concurrency": 1,
            "sim_decode_seconds_per_step": 0.02,
        },
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-queue"), config)
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


async def final_state(client: AsyncClient, job_id: str) -> Any:
    events = [e async for e in client.watch(job_id)]
    return events[-1]


async def test_queue_full_is_resource_exhausted_and_persists_nothing(client: AsyncClient) -> None:
    accepted: list[str] = []
    rejected: errors.ResourceExhausted | None = None
    for _ in range(10):  # one runs, three wait, then the queue is full
        try:
            job = await client.submit("fill the queue", model=MODEL, max_tokens=100)
        except errors.ResourceExhausted as err:
            rejected = err
            break
        accepted.append(job.job_id)
    assert rejected is not None, "the queue never filled"
    assert rejected.reason == "QUEUE_FULL" and rejected.retry_after and rejected.retry_after > 0
    assert 3 <= len(accepted) <= 4
    jobs, _ = await client.list_jobs(page_size=100)
    assert sorted(j.job_id for j in jobs) == sorted(accepted)
    for job_id in accepted:
        await client.cancel_job(job_id)
    for job_id in accepted:
        assert (await final_state(client, job_id)).WhichOneof("kind") == "cancelled"


async def test_restart_runs_queued_jobs(client: AsyncClient, stack: Any) -> None:
    jobs = [await client.submit(f"job {i}", model=MODEL, max_tokens=40) for i in range(4)]

    async def running() -> bool:
        return (await client.get_job(jobs[0].job_id)).state == orchestrator_pb2.JOB_STATE_RUNNING

    while not await running():
        await asyncio.sleep(0.02)
    queued_before = [
        j.job_id for j in jobs if (await client.get_job(j.job_id)).state == orchestrator_pb2.JOB_STATE_QUEUED
    ]
    assert queued_before, "expected jobs still queued at the restart"

    stack.restart_service("orchestratord")
    await wait_healthy(stack.addresses["orchestratord"], timeout=60)

    ends = {j.job_id: await asyncio.wait_for(final_state(client, j.job_id), 60) for j in jobs}
    for job_id in queued_before:
        assert ends[job_id].WhichOneof("kind") == "completed", ends[job_id]
    for end in ends.values():
        kind = end.WhichOneof("kind")
        assert kind in {"completed", "failed"}
        if kind == "failed":
            assert end.failed.reason == "ORCHESTRATOR_RESTARTED"

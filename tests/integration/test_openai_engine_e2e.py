"""End to end: the `openai` engine against a real OpenAI-compatible server,
Hearth's own front door. A second worker serves targets whose upstream is the
stack's HTTP API, so a job for them goes client -> orchestratord -> openai
worker -> HTTP -> orchestratord -> the transformers (or sim) worker, and
back. Nothing in the loop is a stand-in."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.chat import ChatMessage
from hearth.client import AsyncClient
from hearth.embedded import free_port
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TINY = "tiny-llama"
SIM_SLOW = "sim-slow"
LOOP_TINY = "loop-tiny"
LOOP_SIM = "loop-sim"
KEY_ENV = "HEARTH_TEST_LOOP_KEY"
API_KEY = "loop-key-93c1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    port = free_port()
    upstream = {"engine": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": KEY_ENV}
    config = {
        "models": [
            {"name": TINY, "path": str(tiny_model_dir), "context_length": 2048, "roles": ["default"]},
            {"name": SIM_SLOW, "engine": "sim", "context_length": 8192},
            {"name": LOOP_TINY, "upstream_model": TINY, "context_length": 2048, **upstream},
            {"name": LOOP_SIM, "upstream_model": SIM_SLOW, "context_length": 8192, **upstream},
        ],
        "orchestrator": {"http_listen": f"127.0.0.1:{port}", "http_api_keys": [API_KEY]},
        "worker": {"engine": "transformers", "model": TINY, "max_concurrency": 4},
    }
    sim_worker = {
        "engine": "sim",
        "model": SIM_SLOW,
        "worker_id": "sim-worker",
        "sim_decode_seconds_per_step": 0.05,
        "sim_context_length": 8192,
    }
    # One openai worker: loop-tiny loaded at start, loop-sim loaded on demand.
    loop_worker = {"engine": "openai", "model": LOOP_TINY, "loadable_models": [LOOP_SIM], "worker_id": "loop"}
    saved = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = API_KEY  # the workers read the key from their environment
    try:
        stack = start_stack(tmp_path_factory.mktemp("stack-loop"), config, [sim_worker, loop_worker])
    finally:
        if saved is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = saved
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


async def run(client: AsyncClient, **submit: Any) -> tuple[orchestrator_pb2.Job, list[Any]]:
    job = await client.submit(**submit)
    events = [e async for e in client.watch(job.job_id)]
    return await client.get_job(job.job_id), events


async def jobs_for(client: AsyncClient, model: str) -> list[orchestrator_pb2.Job]:
    jobs, _ = await client.list_jobs(page_size=1000)
    return [j for j in jobs if j.spec.model == model]


async def test_a_job_through_the_openai_engine_matches_the_model_behind_it(client: AsyncClient) -> None:
    conversation = [ChatMessage("system", "Be brief."), ChatMessage("user", "Name a colour.")]

    looped, events = await run(client, prompt="", model=LOOP_TINY, messages=conversation, max_tokens=12)
    direct, _ = await run(client, prompt="", model=TINY, messages=conversation, max_tokens=12)

    assert events[-1].WhichOneof("kind") == "completed", events[-1]
    assert (looped.run.engine, looped.run.worker_id) == ("openai", "loop")
    # Greedy decoding: the upstream's answer arrives unchanged, with its usage.
    assert looped.output == direct.output
    assert looped.run.output_tokens == direct.run.output_tokens
    assert looped.run.input_tokens == direct.run.input_tokens
    # The looped request was a Hearth job too, with the same answer.
    direct_listed, inner = await jobs_for(client, TINY)  # newest first
    assert direct_listed.job_id == direct.job_id
    assert [m.content for m in inner.spec.messages] == [m.content for m in conversation]
    assert inner.output == looped.output


async def test_cancelling_the_outer_job_cancels_the_upstream_request(client: AsyncClient) -> None:
    # loop-sim is not loaded yet: the job waits while the pool loads it.
    job = await client.submit("count slowly", model=LOOP_SIM, max_tokens=2000)
    kinds: list[str] = []
    async for event in client.watch(job.job_id):
        kinds.append(event.WhichOneof("kind"))
        if kinds[-1] == "tokens":
            break
    assert "waiting" in kinds and "started" in kinds

    cancelled = await client.cancel_job(job.job_id, "enough")
    assert cancelled.state == orchestrator_pb2.JOB_STATE_CANCELLED

    # The openai engine closes its HTTP stream; the front door cancels the job it made.
    (inner,) = await jobs_for(client, SIM_SLOW)
    for _ in range(100):
        inner = await client.get_job(inner.job_id)
        if inner.state != orchestrator_pb2.JOB_STATE_RUNNING:
            break
        await asyncio.sleep(0.1)
    assert inner.state == orchestrator_pb2.JOB_STATE_CANCELLED
    assert inner.run.output_tokens < 2000

"""End to end: the official ``openai`` client against orchestratord's
OpenAI-compatible HTTP API on the real stack (the five services, NATS,
PostgreSQL, the transformers engine on the tiny model, a simulated slow engine
for the stream a client leaves, memoryd's MiniLM embedder), with API keys on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from hearth.tracetree import load_job_trace
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TINY = "tiny-llama"
SIM_SLOW = "sim-slow"
API_KEY = "e2e-key-7f3a"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

T = TypeVar("T")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("stack-openai")
    keys_file = data_dir / "http-keys"
    keys_file.write_text(f"# keys of the e2e test\n{API_KEY}\n")
    config = {
        "models": [
            {"name": TINY, "path": str(tiny_model_dir), "context_length": 2048, "roles": ["default"]},
            {"name": SIM_SLOW, "engine": "sim", "context_length": 8192, "roles": ["tester"]},
        ],
        "orchestrator": {"http_api_keys_file": str(keys_file)},
        "worker": {"engine": "transformers", "model": TINY, "max_concurrency": 4},
    }
    sim_worker = {
        "engine": "sim",
        "model": SIM_SLOW,
        "worker_id": "sim-worker",
        "max_concurrency": 4,
        "sim_decode_seconds_per_step": 0.05,
        "sim_context_length": 8192,
    }
    stack = start_stack(data_dir / "stack", config, [sim_worker])
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


@pytest.fixture
async def oai(stack: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"http://{stack.http_address}/v1", api_key=API_KEY, max_retries=0, timeout=120
    ) as c:
        yield c


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not hold in time")
        await asyncio.sleep(0.1)


def test_the_stack_file_records_the_http_address(stack: Any) -> None:
    recorded = json.loads((stack.data_dir / "stack.json").read_text())
    assert recorded["http_address"] == stack.http_address
    assert stack.http_address.startswith("127.0.0.1:")


async def test_a_chat_completion_is_a_job_whose_run_record_matches_the_usage(
    oai: openai.AsyncOpenAI, client: AsyncClient, stack: Any
) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model=TINY,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hello there"},
        ],
        max_tokens=8,
        temperature=0,
        metadata={"suite": "e2e"},
    )
    completion = raw.parse()
    job_id = raw.headers["X-Hearth-Job-Id"]

    assert completion.id == f"chatcmpl-{job_id}"
    job = await client.get_job(job_id)
    assert job.state == orchestrator_pb2.JOB_STATE_COMPLETED
    assert completion.model == job.run.model == TINY
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == job.output
    assert choice.finish_reason == {"STOP": "stop", "LENGTH": "length"}[job.run.finish_reason]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == job.run.input_tokens > 0
    assert completion.usage.completion_tokens == job.run.output_tokens > 0
    assert [(m.role, m.content) for m in job.spec.messages] == [
        ("system", "Answer briefly."),
        ("user", "Hello there"),
    ]
    assert dict(job.spec.labels) == {"suite": "e2e"}

    async def trace_reaches_the_worker() -> list[Any]:
        spans = load_job_trace(stack.data_dir, job_id)
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if s.parent_id not in ids]
        done = any(s.service == "workerd" for s in spans) and len(roots) == 1
        return roots if done else []

    # The job's trace starts at the HTTP call.
    [root] = await wait_for(trace_reaches_the_worker, timeout=15)
    assert (root.service, root.name) == ("orchestratord", "POST /v1/chat/completions")


async def test_a_stream_brings_the_text_then_the_usage_of_the_run(
    oai: openai.AsyncOpenAI, client: AsyncClient
) -> None:
    stream = await oai.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Tell me about the hearth."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    job_id = chunks[0].id.removeprefix("chatcmpl-")
    job = await client.get_job(job_id)
    assert job.state == orchestrator_pb2.JOB_STATE_COMPLETED
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == job.output and text
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [{"STOP": "stop", "LENGTH": "length"}[job.run.finish_reason]]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (job.run.input_tokens, job.run.output_tokens)


async def test_models_list_the_registry(oai: openai.AsyncOpenAI) -> None:
    models = await oai.models.list()
    assert {m.id for m in models.data} == {TINY, SIM_SLOW}
    assert all(m.owned_by == "hearth" for m in models.data)
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("gpt-9")


async def test_embeddings_come_from_memoryd(oai: openai.AsyncOpenAI) -> None:
    result = await oai.embeddings.create(
        input=["the hearth is warm", "a cold night"], model="all-MiniLM-L6-v2"
    )
    assert result.model == MINILM
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert sum(x * x for x in result.data[0].embedding) == pytest.approx(1.0, abs=1e-3)  # normalised
    assert result.usage.prompt_tokens > 0

    with pytest.raises(openai.BadRequestError) as refused:
        await oai.embeddings.create(input=["fine", ""], model=MINILM)
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "input[1]"


async def test_a_bad_request_names_the_parameter(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        robot: Any = {"role": "robot", "content": "beep"}
        await oai.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}, robot])
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "messages[1].role"
    assert refused.value.body["type"] == "invalid_request_error"


async def test_a_wrong_key_is_refused(stack: Any) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"http://{stack.http_address}/v1", api_key="not-the-key", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.models.list()
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "invalid_api_key"


async def test_a_stream_the_client_closes_early_cancels_the_job(
    oai: openai.AsyncOpenAI, client: AsyncClient
) -> None:
    # The simulated engine takes 0.05 s a token: 400 tokens outlast the test.
    stream = await oai.chat.completions.create(
        model=SIM_SLOW,
        messages=[{"role": "user", "content": "a long answer please"}],
        max_tokens=400,
        stream=True,
    )
    job_id = ""
    async for chunk in stream:
        job_id = chunk.id.removeprefix("chatcmpl-")
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()

    async def ended() -> Any:
        job = await client.get_job(job_id)
        return job if job.state != orchestrator_pb2.JOB_STATE_RUNNING else None

    job = await wait_for(ended, timeout=30)
    assert job.state == orchestrator_pb2.JOB_STATE_CANCELLED
    assert job.end_message == "client disconnected"
    assert job.run.output_tokens < 400

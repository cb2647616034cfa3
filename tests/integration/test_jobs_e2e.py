"""End to end: the five services as processes, a real NATS and PostgreSQL, a
real transformers engine on a tiny model and a simulated GPU engine (sim) for
jobs whose timing a test must control."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth import errors
from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from hearth.tracetree import load_job_trace
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TERMINAL = {"completed", "failed", "cancelled"}
SIM_SLOW = "sim-slow"
TINY = "tiny-llama"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    config = {
        "models": [
            {"name": TINY, "path": str(tiny_model_dir), "context_length": 2048, "roles": ["default"]},
            {"name": SIM_SLOW, "engine": "sim", "context_length": 8192, "roles": ["tester"]},
        ],
        "orchestrator": {"max_prompt_chars": 20000},
        "worker": {"engine": "transformers", "model": TINY, "max_concurrency": 4},
    }
    sim_worker = {
        "engine": "sim",
        "model": SIM_SLOW,
        "worker_id": "sim-worker",
        "max_concurrency": 8,
        "sim_decode_seconds_per_step": 0.05,
        "sim_context_length": 8192,
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-e2e"), config, [sim_worker])
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


async def collect(client: AsyncClient, job_id: str, after: int = 0) -> list[Any]:
    return [event async for event in client.watch(job_id, after_sequence=after)]


def kinds(events: list[Any]) -> list[str]:
    return [e.WhichOneof("kind") for e in events]


async def _drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def test_submit_stream_complete(client: AsyncClient) -> None:
    job = await client.submit("Tell me about the hearth.", model=TINY, max_tokens=12)
    assert job.state == orchestrator_pb2.JOB_STATE_QUEUED
    events = await collect(client, job.job_id)

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert kinds(events)[0] == "queued" and kinds(events)[1] == "started"
    assert kinds(events)[-1] == "completed"
    assert sum(k in TERMINAL for k in kinds(events)) == 1
    token_events = [e for e in events if e.WhichOneof("kind") == "tokens"]
    assert token_events, "no tokens streamed"

    done = await client.get_job(job.job_id)
    assert done.state == orchestrator_pb2.JOB_STATE_COMPLETED
    assert done.output == "".join(e.tokens.text for e in token_events)
    run = done.run
    assert (
        run.output_tokens
        == sum(e.tokens.token_count for e in token_events)
        == events[-1].completed.output_tokens
    )
    assert 1 <= run.output_tokens <= 12
    assert run.input_tokens > 0 and run.model == TINY and run.worker_id and run.trace_id
    assert run.time_to_first_token.ToTimedelta() <= run.total_duration.ToTimedelta()
    assert done.routing_report.chosen_target == TINY
    assert done.last_sequence == events[-1].sequence


async def test_watch_resumes_after_a_sequence(client: AsyncClient) -> None:
    job = await client.submit("count slowly", model=SIM_SLOW, max_tokens=20)
    first: list[Any] = []
    async for event in client.watch(job.job_id):
        first.append(event)
        if len(first) == 4:
            break  # the watcher goes away mid-stream
    rest = await collect(client, job.job_id, after=first[-1].sequence)
    whole = first + rest
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    assert kinds(whole)[-1] == "completed"
    # After the end, a resume replays from the database exactly what follows.
    replay = await collect(client, job.job_id, after=2)
    assert [e.sequence for e in replay] == [e.sequence for e in whole[2:]]
    assert [e.SerializeToString() for e in replay] == [e.SerializeToString() for e in whole[2:]]


async def test_cancel_mid_stream_reaches_the_engine(client: AsyncClient, stack: Any) -> None:
    job = await client.submit("a long answer please", model=SIM_SLOW, max_tokens=400)
    seen: list[Any] = []
    async for event in client.watch(job.job_id):
        seen.append(event)
        if sum(k == "tokens" for k in kinds(seen)) == 2:
            cancelled = await client.cancel_job(job.job_id, reason="user changed their mind")
            assert cancelled.state == orchestrator_pb2.JOB_STATE_CANCELLED
    assert kinds(seen)[-1] == "cancelled"
    cancel_at = seen[-1].sequence
    assert all(e.sequence <= cancel_at for e in seen)
    stored = await collect(client, job.job_id)
    assert kinds(stored)[-1] == "cancelled" and sum(k in TERMINAL for k in kinds(stored)) == 1
    final = await client.get_job(job.job_id)
    assert final.output == "".join(e.tokens.text for e in stored if e.WhichOneof("kind") == "tokens")
    assert final.run.output_tokens < 400

    again = await client.cancel_job(job.job_id)  # idempotent
    assert again.state == orchestrator_pb2.JOB_STATE_CANCELLED and again.last_sequence == final.last_sequence

    async def sim_worker_idle() -> bool:
        workers = await client.list_workers()
        return any(w.info.worker_id == "sim-worker" and w.info.running == 0 for w in workers)

    await wait_for(sim_worker_idle)  # the engine aborted the generation


async def test_idempotent_submit(client: AsyncClient) -> None:
    request_id = str(uuid.uuid4())
    first = await client.submit("same request twice", model=TINY, max_tokens=4, request_id=request_id)
    second = await client.submit("same request twice", model=TINY, max_tokens=4, request_id=request_id)
    assert first.job_id == second.job_id
    await collect(client, first.job_id)


async def _job_count(client: AsyncClient) -> int:
    total, token = 0, ""
    while True:
        jobs, token = await client.list_jobs(page_size=1000, page_token=token)
        total += len(jobs)
        if not token:
            return total


@pytest.mark.parametrize(
    ("kwargs", "error", "reason", "field"),
    [
        ({"prompt": ""}, errors.InvalidArgument, "INVALID_FIELD", "spec.prompt"),
        ({"prompt": "   \n "}, errors.InvalidArgument, "INVALID_FIELD", "spec.prompt"),
        ({"max_tokens": 0}, errors.InvalidArgument, "INVALID_FIELD", "spec.max_tokens"),
        ({"max_tokens": -3}, errors.InvalidArgument, "INVALID_FIELD", "spec.max_tokens"),
        ({"max_tokens": 5000}, errors.InvalidArgument, "CONTEXT_TOO_LONG", "spec.max_tokens"),
        ({"model": "no-such-model"}, errors.NotFound, "MODEL_NOT_FOUND", None),
        ({"prompt": "x" * 20001}, errors.InvalidArgument, "PROMPT_TOO_LONG", "spec.prompt"),
        ({"request_id": "not-a-uuid"}, errors.InvalidArgument, "INVALID_FIELD", "request_id"),
        ({"temperature": 7.0}, errors.InvalidArgument, "INVALID_FIELD", "spec.temperature"),
        ({"use_memory_context": True}, errors.InvalidArgument, "INVALID_FIELD", "spec.project_id"),
    ],
)
async def test_bad_input_is_rejected_and_nothing_persisted(
    client: AsyncClient, kwargs: dict[str, Any], error: type, reason: str, field: str | None
) -> None:
    before = await _job_count(client)
    args = {"prompt": "hello", "model": TINY, "max_tokens": 8, **kwargs}
    prompt = args.pop("prompt")
    with pytest.raises(error) as caught:
        await client.submit(prompt, **args)
    assert caught.value.reason == reason
    if field:
        assert caught.value.metadata.get("field") == field
    assert await _job_count(client) == before


async def test_unknown_job_is_not_found(client: AsyncClient) -> None:
    with pytest.raises(errors.NotFound):
        await client.get_job(str(uuid.uuid4()))
    with pytest.raises(errors.InvalidArgument) as caught:
        await client.get_job("not-a-job-id")
    assert caught.value.metadata.get("field") == "job_id"


async def test_memory_context_is_used_and_the_interaction_stored(client: AsyncClient, stack: Any) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    fact = await client.memory_store("The kiln in the workshop fires at 1200 degrees.", project_id=project)
    await client.memory_store("Unrelated: the cat sleeps on the sofa.", project_id=f"other-{project}")
    job = await client.submit(
        "What temperature does the kiln fire at?",
        model=TINY,
        max_tokens=8,
        use_memory_context=True,
        store_in_memory=True,
        project_id=project,
    )
    events = await collect(client, job.job_id)
    assert kinds(events)[-1] == "completed"
    done = await client.get_job(job.job_id)
    assert fact.memory_id in list(done.run.context_memory_ids)

    async def stored() -> list[Any]:
        hits = await client.memory_query("kiln temperature", project_id=project, top_k=10)
        return [h for h in hits if h.memory.source == job.job_id]

    interaction = (await wait_for(stored))[0]
    assert "What temperature does the kiln fire at?" in interaction.memory.text

    # One trace across all five services, the NATS hop included.
    async def trace_complete() -> list[Any]:
        # Each service flushes its span file on its own schedule: wait until
        # every service's spans are on disk and the tree has closed (one root).
        spans = load_job_trace(stack.data_dir, job.job_id)
        services = {s.service for s in spans}
        wanted = {"orchestratord", "routerd", "memoryd", "pool-managerd", "workerd"}
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if s.parent_id not in ids]
        complete = wanted <= services and any(s.kind == "CONSUMER" for s in spans) and len(roots) == 1
        return spans if complete else []

    spans = await wait_for(trace_complete, timeout=15)
    assert len({s.trace_id for s in spans}) == 1
    by_id = {s.span_id: s for s in spans}

    def parent_service(span: Any) -> str:
        return by_id[span.parent_id].service if span.parent_id in by_id else ""

    for service, method in [
        ("routerd", "Route"),
        ("pool-managerd", "Place"),
        # The worker's side of the generation (its Session stream has no span).
        ("workerd", "workerd.generate"),
        ("memoryd", "GetContext"),
    ]:
        server = [s for s in spans if s.service == service and s.kind == "SERVER" and s.name.endswith(method)]
        assert server, f"no {service} {method} span"
        assert parent_service(server[0]) == "orchestratord", (
            f"{service} {method} is not a child of orchestratord"
        )
    consumers = [s for s in spans if s.kind == "CONSUMER"]
    assert any(parent_service(s) == "orchestratord" for s in consumers)
    roots = [s for s in spans if not s.parent_id or s.parent_id not in by_id]
    assert len(roots) == 1 and roots[0].service == "orchestratord"


async def test_worker_killed_mid_stream_fails_with_worker_lost(client: AsyncClient, stack: Any) -> None:
    job = await client.submit("stream for a while", model=SIM_SLOW, max_tokens=400)
    stream = client.watch(job.job_id)
    seen: list[Any] = []
    while sum(k == "tokens" for k in kinds(seen)) < 2:
        seen.append(await asyncio.wait_for(anext(stream), timeout=30))
    stack.kill("workerd-2", signal.SIGKILL)
    # The job must end FAILED with WORKER_LOST within 5 s of the kill.
    rest = await asyncio.wait_for(_drain(stream), timeout=5)
    seen += rest
    assert kinds(seen)[-1] == "failed"
    assert seen[-1].failed.reason == "WORKER_LOST"
    assert sum(k in TERMINAL for k in kinds(seen)) == 1
    # The rest of the stack keeps serving.
    other = await client.submit("still there?", model=TINY, max_tokens=4)
    assert kinds(await collect(client, other.job_id))[-1] == "completed"

    async def gone() -> bool:
        return all(w.info.worker_id != "sim-worker" for w in await client.list_workers())

    await wait_for(gone, timeout=5)
    stack.start_service("workerd-2")  # leave the stack whole for later tests

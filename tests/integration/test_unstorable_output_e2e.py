"""End to end: a model that emits NUL (and other text PostgreSQL cannot
hold) must not stall the event journal. The sim worker streams words with a
NUL in them; every job completes, its output is stored with U+FFFD in place
of the NUL, and jobs after it complete too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

NUL_MODEL = "sim-nul"
PLAIN_MODEL = "sim-plain"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    config = {
        "models": [
            {"name": NUL_MODEL, "engine": "sim", "context_length": 4096, "roles": ["default"]},
            {"name": PLAIN_MODEL, "engine": "sim", "context_length": 4096},
        ],
        "worker": {
            "engine": "sim",
            "model": NUL_MODEL,
            "sim_decode_seconds_per_step": 0.005,
            "sim_words": ["nul\x00byte", "plain"],
        },
    }
    plain = {
        "engine": "sim",
        "model": PLAIN_MODEL,
        "worker_id": "plain",
        "sim_decode_seconds_per_step": 0.005,
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-nul"), config, [plain])
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


async def run(client: AsyncClient, model: str) -> tuple[orchestrator_pb2.Job, str]:
    job = await client.submit("say something odd", model=model, max_tokens=16)
    streamed = ""
    async for event in client.watch(job.job_id):
        if event.WhichOneof("kind") == "tokens":
            streamed += event.tokens.text
    return await client.get_job(job.job_id), streamed


async def test_nul_in_model_output_is_stored_and_the_journal_keeps_going(client: AsyncClient) -> None:
    outputs = []
    for _ in range(3):
        job, streamed = await run(client, NUL_MODEL)
        assert job.state == orchestrator_pb2.JOB_STATE_COMPLETED, (job.end_reason, job.end_message)
        assert "nul" in job.output and "\x00" not in job.output
        assert "nul\ufffdbyte" in job.output or job.output.strip(" plain") == ""
        # The stored stream (replayed after the end) matches the stored output.
        assert streamed == job.output
        outputs.append(job.output)
    assert any("\ufffd" in output for output in outputs)
    # Another model's jobs are not held back by the odd one's.
    job, _ = await run(client, PLAIN_MODEL)
    assert job.state == orchestrator_pb2.JOB_STATE_COMPLETED
    assert job.run.output_tokens == 16

"""End to end: the official ``anthropic`` and ``openai`` clients against the
Anthropic Messages and OpenAI Responses APIs of the real stack (the five
services, NATS, PostgreSQL, the tiny transformers model, plus an untrusted
remote target behind a small OpenAI-compatible upstream for routing), and
the request shapes Claude Code and Codex send (tests/fixtures/)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from tests.conftest import client_for, start_stack, stop_stack
from tests.integration.test_router_e2e import FakeUpstream

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TINY = "tiny-llama"
REMOTE = "cloud-remote"
FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(delay=0.0) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, upstream: FakeUpstream
) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("stack-agents")
    for folder in (tmp_path_factory.getbasetemp(), data_dir):
        folder.chmod(0o755)
    policy = data_dir / "policy.yaml"
    # Routine work may go to the cloud first; secret work stays on the GPU.
    policy.write_text(
        yaml.safe_dump({"version": 1, "classes": {"L1": {"route": "remote_first"}, "L3": {"route": "local"}}})
    )
    config = {
        "models": [
            {
                "name": TINY,
                "path": str(tiny_model_dir),
                "context_length": 2048,
                "roles": ["default", "agent"],
            },
            {
                "name": REMOTE,
                "engine": "openai",
                "base_url": f"{upstream.url}/ok/v1",
                "upstream_model": "m",
                "context_length": 4096,
                "remote": True,
                "trusted": True,
                "roles": ["agent"],
            },
        ],
        "router": {"policy_file": str(policy)},
        "worker": {"engine": "transformers", "model": TINY, "max_concurrency": 4},
    }
    remote_worker = {"engine": "openai", "model": REMOTE, "worker_id": "remote"}
    stack = start_stack(data_dir, config, [remote_worker])
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


@pytest.fixture
async def claude(stack: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=f"http://{stack.http_address}", api_key="unused", max_retries=0, timeout=120
    ) as c:
        yield c


@pytest.fixture
async def oai(stack: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"http://{stack.http_address}/v1", api_key="unused", max_retries=0, timeout=120
    ) as c:
        yield c


async def test_messages_with_and_without_stream_are_jobs(
    claude: anthropic.AsyncAnthropic, client: AsyncClient
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model=TINY,
        max_tokens=8,
        temperature=0,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    message = raw.parse()
    job = await client.get_job(raw.headers["X-Hearth-Job-Id"])
    assert job.state == orchestrator_pb2.JOB_STATE_COMPLETED
    assert (
        message.model == TINY and message.content[0].type == "text" and message.content[0].text == job.output
    )
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        job.run.input_tokens,
        job.run.output_tokens,
    )
    assert [(m.role, m.content) for m in job.spec.messages] == [
        ("system", "Answer briefly."),
        ("user", "Hello"),
    ]

    async with claude.messages.stream(
        model=TINY, max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text and text
    assert final.stop_reason in ("end_turn", "max_tokens")

    counted = await claude.messages.count_tokens(
        model=TINY, messages=[{"role": "user", "content": "count me"}]
    )
    assert counted.input_tokens > 0


async def test_messages_with_tools_and_a_tool_result(
    claude: anthropic.AsyncAnthropic, client: AsyncClient
) -> None:
    tools: Any = [
        {
            "name": "Read",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
        }
    ]
    raw = await claude.messages.with_raw_response.create(
        model=TINY,
        max_tokens=8,
        tools=tools,
        # The tiny model passes no tool-call probe: "none" routes without a tool-capable target.
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "read it"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"file_path": "src/app.py"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"}],
            },
        ],
    )
    assert raw.parse().stop_reason in ("end_turn", "max_tokens", "tool_use")
    job = await client.get_job(raw.headers["X-Hearth-Job-Id"])
    assert list(job.spec.paths) == ["src/app.py"]
    assert [t.name for t in job.spec.tools] == ["Read"]


async def test_a_denylisted_path_keeps_an_agent_turn_local(stack: Any, client: AsyncClient) -> None:
    def turn(path: str) -> dict[str, Any]:
        return {
            "model": "claude-sonnet-4-5",
            "max_tokens": 8,
            "messages": [
                {"role": "user", "content": "show me"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": path}}
                    ],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "A=1"}]},
            ],
        }

    async with httpx.AsyncClient(
        base_url=f"http://{stack.http_address}", timeout=120, headers={"X-Hearth-Role": "agent"}
    ) as http:
        routine = await http.post("/v1/messages", json=turn("src/app.py"))
        secret = await http.post("/v1/messages", json=turn("deploy/.env"))
    assert routine.status_code == secret.status_code == 200, (routine.text, secret.text)
    routine_job = await client.get_job(routine.headers["X-Hearth-Job-Id"])
    secret_job = await client.get_job(secret.headers["X-Hearth-Job-Id"])
    assert routine_job.routing_report.chosen_target == REMOTE
    assert secret_job.routing_report.chosen_target == TINY
    assert any(rule.startswith("denylist_path:") for rule in secret_job.routing_report.matched_rules)
    assert secret_job.routing_report.data_class == 4  # DATA_CLASS_L3_SECRET


async def test_responses_three_turns_stream_and_function_calls(
    oai: openai.AsyncOpenAI, client: AsyncClient
) -> None:
    first = await oai.responses.create(
        model=TINY, input="Hello", instructions="Be brief.", max_output_tokens=6, temperature=0
    )
    assert first.status in ("completed", "incomplete") and first.usage is not None
    second = await oai.responses.create(
        model=TINY, input="And then?", previous_response_id=first.id, max_output_tokens=6
    )
    stream = await oai.responses.create(
        model=TINY, input="Last one", previous_response_id=second.id, max_output_tokens=6, stream=True
    )
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type in (
        "response.completed",
        "response.incomplete",
    )
    third = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == third.output_text
    job = await client.get_job(_job_id(third.id))
    assert [(m.role, m.content) for m in job.spec.messages] == [
        ("user", "Hello"),
        ("assistant", first.output_text),
        ("user", "And then?"),
        ("assistant", second.output_text),
        ("user", "Last one"),
    ]
    assert (await oai.responses.retrieve(third.id)).id == third.id
    await oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(first.id)

    tools: Any = [
        {
            "type": "function",
            "name": "read_file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
    ]
    answered = await oai.responses.create(
        model=TINY,
        tools=tools,
        tool_choice="none",
        max_output_tokens=6,
        input=[
            {"role": "user", "content": "read it"},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "read_file",
                "arguments": '{"path": "notes.txt"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "the notes"},
        ],
    )
    job = await client.get_job(_job_id(answered.id))
    assert [m.role for m in job.spec.messages] == ["user", "assistant", "tool"]
    assert list(job.spec.paths) == ["notes.txt"]


def _job_id(response_id: str) -> str:
    hexed = response_id.removeprefix("resp_")
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


async def test_claude_code_and_codex_requests_are_answered(stack: Any) -> None:
    claude_code = json.loads((FIXTURES / "claude_code_messages.json").read_text())
    codex = json.loads((FIXTURES / "codex_responses.json").read_text())
    # As sent, but for a short answer from the tiny model.
    claude_code["max_tokens"] = 8
    codex["max_output_tokens"] = 8
    # The tiny model passes no tool-call probe: "none" routes without a tool-capable target.
    claude_code["tool_choice"] = {"type": "none"}
    codex["tool_choice"] = "none"
    headers = {
        "anthropic-version": "2023-06-01",
        "x-api-key": "unused",
        "user-agent": "claude-cli/2.0.14 (external, cli)",
    }
    async with httpx.AsyncClient(base_url=f"http://{stack.http_address}", timeout=120) as http:
        answer = await http.post("/v1/messages", json=claude_code, headers=headers)
        assert answer.status_code == 200
        assert "event: message_stop" in answer.text and "event: error" not in answer.text, answer.text[-2000:]
        answer = await http.post("/v1/responses", json=codex, headers={"user-agent": "codex_cli_rs/0.46.0"})
        assert answer.status_code == 200
        assert "event: response.completed" in answer.text or "event: response.incomplete" in answer.text, (
            answer.text[-2000:]
        )

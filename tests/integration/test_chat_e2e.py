"""End to end: conversations, tools and the tool-call probe through the real
stack (the five services, NATS, PostgreSQL, the transformers engine on the
tiny model with its chat template)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth import errors
from hearth.chat import ChatMessage, Tool, ToolCall
from hearth.cli import app
from hearth.client import AsyncClient
from hearth.probe import CHECK_NAMES, probe_target
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

TINY = "tiny-llama"
WEATHER = Tool(
    "get_weather", "Weather in a city.", {"type": "object", "properties": {"city": {"type": "string"}}}
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    config = {
        "models": [{"name": TINY, "path": str(tiny_model_dir), "context_length": 2048, "roles": ["default"]}],
        "worker": {"engine": "transformers", "model": TINY, "max_concurrency": 4},
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-chat"), config)
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


async def test_a_conversation_runs_with_memory_context_and_is_kept_as_sent(client: AsyncClient) -> None:
    memory = await client.memory_store("The deploy target is the homelab GPU box.", "chat-project")
    conversation = [
        ChatMessage("system", "You answer briefly."),
        ChatMessage("user", "Where do we deploy?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "lookup", '{"what": "deploy"}'),)),
        ChatMessage("tool", "the homelab", tool_call_id="call_1"),
        ChatMessage("user", "Where is the deploy target again?"),
    ]

    job = await client.submit(
        "", messages=conversation, max_tokens=8, use_memory_context=True, project_id="chat-project"
    )
    events = [e async for e in client.watch(job.job_id)]
    ended = await client.get_job(job.job_id)

    assert events[-1].WhichOneof("kind") == "completed"
    assert ended.run.finish_reason in ("STOP", "LENGTH")
    assert list(ended.run.context_memory_ids) == [memory.memory_id]
    assert [(m.role, m.content) for m in ended.spec.messages] == [(m.role, m.content) for m in conversation]
    assert ended.spec.messages[2].tool_calls[0].arguments_json == '{"what": "deploy"}'
    # The chat template counted the rendered conversation, context included.
    assert ended.run.input_tokens > 20


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([ChatMessage("robot", "hi")], "spec.messages[0].role"),
        (
            [ChatMessage("user", "hi"), ChatMessage("tool", "42", tool_call_id="nope")],
            "spec.messages[1].tool_call_id",
        ),
        ([ChatMessage("user", "   ")], "spec.messages[0].content"),
    ],
)
async def test_a_bad_conversation_is_refused_naming_the_message(
    client: AsyncClient, messages: list[ChatMessage], field: str
) -> None:
    before = len((await client.list_jobs(page_size=1000))[0])

    with pytest.raises(errors.InvalidArgument) as refused:
        await client.submit("", messages=messages)

    assert refused.value.field == field
    assert len((await client.list_jobs(page_size=1000))[0]) == before


async def test_tools_go_only_to_a_target_that_passed_the_probe(client: AsyncClient) -> None:
    ask = [ChatMessage("user", "Weather in Paris?")]
    with pytest.raises(errors.FailedPrecondition) as refused:
        await client.submit("", messages=ask, tools=[WEATHER])
    assert refused.value.reason == "NO_TOOL_CAPABLE_TARGET"

    # The tiny model's worker does not offer tools, so every check fails, and
    # the result is recorded in the router's registry.
    target = await probe_target(client, TINY, timeout=60)

    assert [c.name for c in target.conformance.checks] == list(CHECK_NAMES)
    assert not target.conformance.passed
    assert all("TOOLS_NOT_SUPPORTED" in c.detail for c in target.conformance.checks)
    (listed,) = await client.list_targets()
    assert (listed.name, listed.conformance.passed) == (TINY, False)
    with pytest.raises(errors.FailedPrecondition):
        await client.submit("", messages=ask, tools=[WEATHER])
    # tool_choice "none" needs no tool-capable target.
    job = await client.submit("", messages=ask, tools=[WEATHER], tool_choice="none", max_tokens=4)
    events = [e async for e in client.watch(job.job_id)]
    assert events[-1].WhichOneof("kind") == "completed"


def test_the_cli_probes_and_lists_targets(stack: Any) -> None:
    runner = CliRunner()
    data_dir = ["--data-dir", str(stack.data_dir)]

    probed = runner.invoke(app, [*data_dir, "probe", TINY, "--timeout", "60"])
    listed = runner.invoke(app, [*data_dir, "targets", "--json"])

    assert probed.exit_code == 1, probed.output
    assert "TOOL_CALL_MADE" in probed.output and "failed" in probed.output
    assert listed.exit_code == 0, listed.output
    (target,) = json.loads(listed.stdout)
    assert target["name"] == TINY
    # Proto JSON leaves out false booleans: a failed probe has checks and no "passed".
    assert len(target["conformance"]["checks"]) == 4 and not target["conformance"].get("passed", False)

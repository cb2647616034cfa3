"""The Anthropic Messages and OpenAI Responses APIs over the fake job service
of test_openai_http: golden request -> job draft and job events -> SSE bytes,
tool-use round trips, stop sequences, paths for the router, errors in each
API's shape, stored responses and previous_response_id, the official clients."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry import trace

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta
from hearth.runtime import ServiceMetrics
from orchestratord.api.openai_http import ApiKeys, HttpMetrics
from orchestratord.api.openai_http.agent_jobs import conversation_paths, token_ceiling
from orchestratord.api.openai_http.job_answers import StopScanner
from orchestratord.api.openai_http.ports import StoredResponse
from orchestratord.domain.jobs import Completed, EventBody, Queued, Started, Tokens
from tests.unit.test_openai_http import JOB_ID, MODELS, TOOL_SCRIPT, Api, FakeJobs

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

HEX = JOB_ID.replace("-", "")


class MemoryResponses:
    """ResponseStore in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredResponse] = {}

    async def save(self, response: StoredResponse) -> None:
        self.rows[response.id] = response

    async def load(self, response_id: str, project_id: str) -> StoredResponse | None:
        found = self.rows.get(response_id)
        return found if found is not None and found.project_id == project_id else None

    async def delete(self, response_id: str, project_id: str) -> bool:
        return await self.load(response_id, project_id) is not None and self.rows.pop(response_id) is not None


def api(jobs: FakeJobs, store: MemoryResponses | None = None) -> Api:
    made = Api(jobs)
    if store is not None:
        from orchestratord.api.openai_http import create_app

        made.app = create_app(
            jobs,
            made.embeddings,
            MODELS,
            requests=made.requests,
            api_keys=ApiKeys(),
            tracer=trace.get_tracer("t"),
            metrics=HttpMetrics(ServiceMetrics("o2")),
            stored_responses=store,
        )
    return made


def events_of(body: str) -> list[tuple[str, Any]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "data" in lines:
            out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


# --- Anthropic Messages ------------------------------------------------------------

CLAUDE_TURN = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Show me the env file"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "x"},
                {"type": "text", "text": "Reading it."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/repo/.env"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "A=1"}],
                },
                {"type": "text", "text": "Now list src"},
            ],
        },
    ],
    "tools": [
        {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {}}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.5,
    "metadata": {"user_id": "user_abc"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "some_future_field": True,
}


async def test_a_claude_code_turn_becomes_one_job_with_its_paths() -> None:
    jobs = FakeJobs()
    async with api(jobs).client(**{"x-api-key": "k", "anthropic-version": "2023-06-01"}) as http:
        answer = await http.post("/v1/messages", json=CLAUDE_TURN, headers={"user-agent": "claude-cli/2.0.1"})
    assert answer.status_code == 200, answer.text
    [draft] = jobs.drafts
    assert draft.messages == (
        ChatMessage("system", "You are a coding agent."),
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Show me the env file"),
        ChatMessage(
            "assistant", "Reading it.", (ToolCall("toolu_1", "Read", '{"file_path": "/repo/.env"}'),)
        ),
        ChatMessage("tool", "A=1", tool_call_id="toolu_1"),
        ChatMessage("user", "Now list src"),
    )
    assert draft.tools == (Tool("Read", "Read a file", {"type": "object", "properties": {}}),)
    assert draft.tool_choice == "auto"
    assert draft.paths == ("/repo/.env",)
    assert draft.model == "" and draft.labels == {
        "requested_model": CLAUDE_TURN["model"],
        "user_id": "user_abc",
    }
    assert draft.agent == "claude-code" and draft.temperature == 0.5
    # 32000 does not fit tiny-llama's 2048 next to the prompt: lowered to what fits.
    assert draft.max_tokens is not None and 0 < draft.max_tokens < 2048
    body = answer.json()
    assert body == {
        "id": f"msg_{HEX}",
        "type": "message",
        "role": "assistant",
        "model": "tiny-llama",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_a_streamed_message_follows_anthropics_event_sequence() -> None:
    async with api(FakeJobs()).client() as http:
        answer = await http.post("/v1/messages", json={**CLAUDE_TURN, "stream": True})
    assert [name for name, _ in events_of(answer.text)] == [
        "ping",  # waiting for the model to load
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    events = dict(events_of(answer.text)[1:2])
    assert events["message_start"]["message"]["usage"]["input_tokens"] == 9
    deltas = [d["delta"] for n, d in events_of(answer.text) if n == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo!"}]
    assert events_of(answer.text)[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 11,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_tool_use_round_trip_through_the_anthropic_client() -> None:
    made = api(FakeJobs(TOOL_SCRIPT))
    client = anthropic.AsyncAnthropic(
        base_url="http://hearth", api_key="k", http_client=made.client(), max_retries=0
    )
    tools: Any = [
        {"name": "get_weather", "input_schema": {"type": "object"}},
        {"name": "get_time", "input_schema": {"type": "object"}},
    ]
    message = await client.messages.create(
        model="tiny-llama", max_tokens=64, messages=[{"role": "user", "content": "weather?"}], tools=tools
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {}),
    ]
    async with client.messages.stream(
        model="tiny-llama", max_tokens=64, messages=[{"role": "user", "content": "weather?"}], tools=tools
    ) as stream:
        final = await stream.get_final_message()
    assert [(b.type, getattr(b, "id", ""), getattr(b, "input", None)) for b in final.content] == [
        ("tool_use", "call_a", {"city": "Paris"}),
        ("tool_use", "call_b", {}),
    ]
    # The answer goes back as tool_result blocks: tool messages answering the calls.
    follow = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "noon", "is_error": True},
            ],
        },
    ]
    await client.messages.create(model="tiny-llama", max_tokens=64, messages=follow, tools=tools)
    draft = made.jobs.drafts[-1]
    assert [(m.role, m.content, m.tool_call_id) for m in draft.messages[2:]] == [
        ("tool", "sunny", "call_a"),
        ("tool", "[error] noon", "call_b"),
    ]
    assert draft.messages[1].tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", "{}"),
    )


async def test_count_tokens_and_errors_in_anthropics_shape() -> None:
    made = api(FakeJobs())
    client = anthropic.AsyncAnthropic(
        base_url="http://hearth", api_key="k", http_client=made.client(), max_retries=0
    )
    counted = await client.messages.count_tokens(model="x", messages=[{"role": "user", "content": "a" * 40}])
    assert counted.input_tokens == -(-len("user: " + "a" * 40 + "\n\nassistant:") // 4)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.create(model="x", max_tokens=5, messages=[{"role": "robot", "content": "hi"}])  # type: ignore[typeddict-item]
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": refused.value.body["error"]["message"]},
    }  # type: ignore[index]
    async with made.client() as http:
        missing = await http.post(
            "/v1/messages", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "invalid_request_error"


async def test_a_stop_sequence_cuts_the_answer_and_cancels_the_job() -> None:
    script: list[EventBody] = [
        Queued(0),
        Started("tiny-llama", "w1", 9),
        Tokens("one ST", 2),
        Tokens("OP two", 2),
        Completed("STOP", 4),
    ]
    jobs = FakeJobs(script)
    async with api(jobs).client() as http:
        answer = await http.post(
            "/v1/messages",
            json={
                "model": "tiny-llama",
                "max_tokens": 9,
                "stop_sequences": ["STOP"],
                "messages": [{"role": "user", "content": "go"}],
            },
        )
    body = answer.json()
    assert body["content"] == [{"type": "text", "text": "one "}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "STOP")
    assert jobs.cancels == [(JOB_ID, "stop sequence reached")]


def test_the_stop_scanner_holds_back_what_may_become_a_stop_sequence() -> None:
    scanner = StopScanner(["END"])
    assert [scanner.feed("abcE"), scanner.feed("N"), scanner.feed("x")] == ["abc", "", "ENx"]
    assert scanner.hit == ""
    scanner = StopScanner(["END"])
    assert (scanner.feed("aEN"), scanner.feed("Dz"), scanner.hit) == ("a", "", "END")


def test_paths_come_from_tool_calls_and_results() -> None:
    messages = [
        ChatMessage(
            "assistant",
            "",
            (
                ToolCall("1", "Edit", '{"file_path": "src/a.py", "old": "x"}'),
                ToolCall("2", "shell", '{"command": ["bash", "-lc", "cat .env ~/.ssh/id_rsa"]}'),
                ToolCall(
                    "3", "apply_patch", '{"input": "*** Begin Patch\\n*** Update File: secrets/prod.yaml\\n"}'
                ),
            ),
        ),
        ChatMessage("tool", "src/a.py\nconfig/.npmrc\nnot a path here", tool_call_id="1"),
    ]
    assert conversation_paths(messages) == (
        "src/a.py",
        ".env",
        "~/.ssh/id_rsa",
        "secrets/prod.yaml",
        "config/.npmrc",
    )


def test_the_token_ceiling_fits_the_largest_context() -> None:
    short = [ChatMessage("user", "hi")]
    assert token_ceiling(100, short, [], MODELS) == 100
    assert (
        token_ceiling(32000, short, [], MODELS) == 2048 - 7
    )  # "user: hi\n\nassistant:" at three characters a token
    assert (
        token_ceiling(None, short, [], MODELS) == 2048 - 7
    )  # "user: hi\n\nassistant:" at three characters a token
    assert (
        token_ceiling(500, [ChatMessage("user", "x" * 9000)], [], MODELS) == 500
    )  # no room: routing decides


# --- OpenAI Responses ----------------------------------------------------------------


async def test_a_response_is_a_job_and_previous_response_id_chains_the_conversation() -> None:
    store = MemoryResponses()
    made = api(FakeJobs(), store)
    client = made.openai()
    first = await client.responses.create(
        model="tiny-llama", input="Hi", instructions="Be brief.", max_output_tokens=20, store=True
    )
    assert first.id == f"resp_{HEX}" and first.output_text == "Hello!" and first.status == "completed"
    assert first.usage is not None and (first.usage.input_tokens, first.usage.output_tokens) == (11, 7)
    assert made.jobs.drafts[0].messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    assert made.jobs.drafts[0].max_tokens == 20
    second = await client.responses.create(model="tiny-llama", input="Again", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # Instructions do not carry over; the history does.
    assert made.jobs.drafts[1].messages == (
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "Again"),
    )
    assert (await client.responses.retrieve(first.id)).output_text == "Hello!"
    await client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.create(model="tiny-llama", input="x", previous_response_id="resp_nope")
    assert isinstance(missing.value.body, dict) and missing.value.body["param"] == "previous_response_id"
    # Another project does not see it.
    async with made.client(**{"X-Hearth-Project": "other"}) as http:
        assert (await http.get(f"/v1/responses/{second.id}")).status_code == 404


async def test_function_calls_round_trip_and_stream_as_typed_events() -> None:
    made = api(FakeJobs(TOOL_SCRIPT), MemoryResponses())
    client = made.openai()
    tools: Any = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "web_search"},
    ]
    response = await client.responses.create(model="tiny-llama", input="weather?", tools=tools)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", "{}"),
    ]
    assert made.jobs.drafts[0].tools == (Tool("get_weather", "", {"type": "object"}),)
    stream = await client.responses.create(model="tiny-llama", input="weather?", tools=tools, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    follow: Any = [
        {"role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"path": "deploy/.env"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    await client.responses.create(model="tiny-llama", input=follow, tools=tools)
    draft = made.jobs.drafts[-1]
    assert draft.messages[1] == ChatMessage(
        "assistant", "", (ToolCall("call_a", "get_weather", '{"path": "deploy/.env"}'),)
    )
    assert draft.messages[2] == ChatMessage("tool", "sunny", tool_call_id="call_a")
    assert draft.paths == ("deploy/.env",)


async def test_a_streamed_text_response_golden() -> None:
    async with api(FakeJobs(), MemoryResponses()).client() as http:
        answer = await http.post("/v1/responses", json={"model": "tiny-llama", "input": "Hi", "stream": True})
    events = events_of(answer.text)
    assert [(n, d["sequence_number"]) for n, d in events] == [
        (n, i)
        for i, n in enumerate(
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        )
    ]
    assert [d["delta"] for n, d in events if n == "response.output_text.delta"] == ["Hel", "lo!"]
    done = events[-1][1]["response"]
    assert done["output"] == [
        {
            "id": f"msg_{HEX}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        }
    ]


async def test_a_failed_job_ends_a_response_stream_with_the_error_event() -> None:
    from tests.unit.test_openai_http import FAIL_SCRIPT

    async with api(FakeJobs(FAIL_SCRIPT)).client() as http:
        answer = await http.post("/v1/responses", json={"model": "tiny-llama", "input": "Hi", "stream": True})
    name, data = events_of(answer.text)[-1]
    assert name == "error" and data["code"] == "worker_lost"
    async with api(FakeJobs(FAIL_SCRIPT)).client() as http:
        answer = await http.post(
            "/v1/messages",
            json={
                "model": "m",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
    name, data = events_of(answer.text)[-1]
    assert name == "error" and data["error"]["type"] == "overloaded_error"
    assert ToolCallDelta  # the tool scripts above carry them

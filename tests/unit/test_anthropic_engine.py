"""The anthropic engine against a scripted Messages API server in the test
(the scripted HTTP server of the openai engine's tests)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta
from hearth.errors import (
    FailedPrecondition,
    HearthError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from tests.unit.test_openai_engine import Reply, ScriptedUpstream, sse
from workerd.adapters.engines.anthropic_engine import AnthropicEngine
from workerd.domain.engine import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

API_KEY = "sk-ant-api03-test0123456789SECRET"
SERVED = ServedModel("claude", context_length=200_000, supports_tools=True, remote=True)
MESSAGES = "/v1/messages"


# --- transcripts as the Messages API streams them -----------------------------------------


def event(kind: str, **data: Any) -> str:
    return sse({"type": kind, **data}, event=kind)


def message_start(input_tokens: int = 25, cached: int = 0) -> str:
    return event(
        "message_start",
        message={
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "output_tokens": 1,
            },
        },
    )


def text_block(index: int, *pieces: str) -> list[str]:
    return [
        event("content_block_start", index=index, content_block={"type": "text", "text": ""}),
        *(
            event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
            for piece in pieces
        ),
        event("content_block_stop", index=index),
    ]


def tool_block(index: int, call_id: str, name: str, *json_pieces: str) -> list[str]:
    return [
        event(
            "content_block_start",
            index=index,
            content_block={"type": "tool_use", "id": call_id, "name": name, "input": {}},
        ),
        event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": ""}),
        *(
            event(
                "content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": piece}
            )
            for piece in json_pieces
        ),
        event("content_block_stop", index=index),
    ]


def message_end(stop_reason: str, output_tokens: int) -> list[str]:
    return [
        event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        event("message_stop"),
    ]


def text_transcript(*pieces: str, stop_reason: str = "end_turn", output_tokens: int = 7) -> list[str]:
    return [
        message_start(),
        event("ping"),
        *text_block(0, *pieces),
        *message_end(stop_reason, output_tokens),
    ]


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


MODELS = Reply(
    body={
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-5-20250929",
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z",
            }
        ],
        "has_more": False,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-sonnet-4-5-20250929",
    }
)


# --- fixtures --------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    server.script("/v1/models", MODELS)
    await server.start()
    yield server
    await server.stop()


def base_url(upstream: ScriptedUpstream) -> str:
    return f"http://127.0.0.1:{upstream.port}"


@pytest.fixture
async def engine(upstream: ScriptedUpstream) -> AsyncIterator[AnthropicEngine]:
    eng = AnthropicEngine(
        SERVED,
        base_url=base_url(upstream),
        upstream_model="claude-sonnet-4-5-20250929",
        api_key=API_KEY,
        max_retries=2,
    )
    await eng.start()
    yield eng
    await eng.cleanup()


def request(job_id: str = "j1", **kwargs: Any) -> GenerationRequest:
    values: dict[str, Any] = {"model": "claude", "prompt": "Say hello.", "max_tokens": 64}
    values.update(kwargs)
    return GenerationRequest(job_id=job_id, **values)


async def collect(engine: AnthropicEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [e async for e in engine.generate(req)]


async def failure(engine: AnthropicEngine, req: GenerationRequest) -> HearthError:
    with pytest.raises(HearthError) as caught:
        await collect(engine, req)
    return caught.value


# --- streaming ---------------------------------------------------------------------


async def test_streams_text_with_the_upstream_usage(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(MESSAGES, Reply(events=text_transcript("Hello", "! How can I", " help?")))

    events = await collect(engine, request(temperature=1.5, seed=3))

    assert events == [
        GenerationStarted(engine.count_tokens("Say hello.")),
        TokenDelta("Hello", 1),
        TokenDelta("! How can I", 1),
        TokenDelta(" help?", 1),
        GenerationFinished("stop", input_tokens=25, output_tokens=7),
    ]
    [sent] = upstream.seen(MESSAGES)
    assert sent.headers["x-api-key"] == API_KEY
    assert "anthropic-version" in sent.headers
    assert sent.body == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        "temperature": 1.0,
        "stream": True,
    }


async def test_max_tokens_is_length(engine: AnthropicEngine, upstream: ScriptedUpstream) -> None:
    upstream.script(
        MESSAGES, Reply(events=text_transcript("cut", stop_reason="max_tokens", output_tokens=64))
    )

    events = await collect(engine, request())

    assert events[-1] == GenerationFinished("length", input_tokens=25, output_tokens=64)


async def test_conversation_with_tool_use(engine: AnthropicEngine, upstream: ScriptedUpstream) -> None:
    transcript = [
        message_start(input_tokens=400, cached=100),
        *text_block(0, "Let me check both."),
        *tool_block(1, "toolu_01A", "get_weather", '{"city": ', '"Paris"}'),
        *tool_block(2, "toolu_01B", "get_time"),
        *message_end("tool_use", 58),
    ]
    upstream.script(MESSAGES, Reply(events=transcript))
    weather = Tool(
        "get_weather", "Weather now", {"type": "object", "properties": {"city": {"type": "string"}}}
    )
    conversation = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage(
            "assistant", "Checking.", tool_calls=(ToolCall("toolu_00", "get_weather", '{"city":"Oslo"}'),)
        ),
        ChatMessage("tool", "-3 C, snow", tool_call_id="toolu_00"),
        ChatMessage("user", "And Paris, and the time?"),
    )

    events = await collect(
        engine,
        request(prompt="", messages=conversation, tools=(weather, Tool("get_time")), tool_choice="required"),
    )

    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert deltas[0] == TokenDelta("Let me check both.", 1)
    assert [p for d in deltas[1:] for p in d.tool_calls] == [
        ToolCallDelta(0, "toolu_01A", "get_weather", ""),
        ToolCallDelta(0, "", "", '{"city": '),
        ToolCallDelta(0, "", "", '"Paris"}'),
        ToolCallDelta(1, "toolu_01B", "get_time", ""),
    ]
    assert events[-1] == GenerationFinished(
        "tool_calls",
        input_tokens=500,
        output_tokens=58,
        tool_calls=(
            ToolCall("toolu_01A", "get_weather", '{"city": "Paris"}'),
            ToolCall("toolu_01B", "get_time", "{}"),
        ),
    )
    [sent] = upstream.seen(MESSAGES)
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_00", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_00", "content": "-3 C, snow"},
                {"type": "text", "text": "And Paris, and the time?"},
            ],
        },
    ]
    assert sent.body["tools"] == [
        {"name": "get_weather", "description": "Weather now", "input_schema": dict(weather.parameters)},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent.body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("", None),
        ("auto", None),
        ("none", {"type": "none"}),
        ("get_time", {"type": "tool", "name": "get_time"}),
    ],
)
async def test_tool_choice_mapping(
    engine: AnthropicEngine, upstream: ScriptedUpstream, choice: str, sent: dict[str, str] | None
) -> None:
    upstream.script(MESSAGES, Reply(events=text_transcript("ok")))

    await collect(engine, request(tools=(Tool("get_time"),), tool_choice=choice))

    [seen] = upstream.seen(MESSAGES)
    assert seen.body.get("tool_choice") == sent


async def test_tool_arguments_that_are_not_an_object_are_invalid(engine: AnthropicEngine) -> None:
    bad = (
        ChatMessage("assistant", "", tool_calls=(ToolCall("t", "f", "[1, 2]"),)),
        ChatMessage("user", "go"),
    )

    with pytest.raises(InvalidArgument) as caught:
        await anext(engine.generate(request(prompt="", messages=bad)))

    assert caught.value.field == "messages[0].tool_calls[0].arguments"


# --- errors and retries ------------------------------------------------------------


async def test_529_overloaded_is_retried_then_succeeds(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        MESSAGES,
        Reply(529, {"retry-after-ms": "10"}, error_body("overloaded_error", "Overloaded")),
        Reply(429, {"retry-after": "0.01"}, error_body("rate_limit_error", "Number of requests exceeded")),
        Reply(events=text_transcript("fine")),
    )

    events = await collect(engine, request())

    assert len(upstream.seen(MESSAGES)) == 3
    assert isinstance(events[-1], GenerationFinished) and events[-1].finish_reason == "stop"


async def test_529_after_the_retries_is_upstream_overloaded(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        MESSAGES, Reply(529, {"retry-after-ms": "10"}, error_body("overloaded_error", "Overloaded"))
    )

    err = await failure(engine, request())

    assert len(upstream.seen(MESSAGES)) == 3
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_OVERLOADED"


async def test_429_after_the_retries_is_rate_limited_with_the_hint(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        MESSAGES, Reply(429, {"retry-after-ms": "20"}, error_body("rate_limit_error", "Slow down"))
    )

    err = await failure(engine, request())

    assert isinstance(err, ResourceExhausted)
    assert err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.retry_after == pytest.approx(0.02)


async def test_401_is_auth_failed_and_never_shows_the_key(
    engine: AnthropicEngine, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.script(
        MESSAGES, Reply(401, body=error_body("authentication_error", f"invalid x-api-key {API_KEY}"))
    )

    err = await failure(engine, request())

    assert len(upstream.seen(MESSAGES)) == 1
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "UPSTREAM_AUTH_FAILED"
    for text in (str(err), repr(err), json.dumps(err.metadata), caplog.text):
        assert API_KEY not in text and "SECRET" not in text


async def test_a_prompt_too_long_is_context_too_long(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        MESSAGES,
        Reply(
            400,
            body=error_body("invalid_request_error", "prompt is too long: 210554 tokens > 200000 maximum"),
        ),
    )

    err = await failure(engine, request())

    assert isinstance(err, InvalidArgument)
    assert (err.reason, err.field) == ("CONTEXT_TOO_LONG", "max_tokens")


async def test_an_overloaded_error_event_mid_stream(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        MESSAGES,
        Reply(
            events=[
                message_start(),
                *text_block(0, "par")[:2],
                sse(error_body("overloaded_error", "Overloaded"), event="error"),
            ]
        ),
    )

    events: list[GenerationEvent] = []
    with pytest.raises(Unavailable) as caught:
        async for e in engine.generate(request()):
            events.append(e)

    assert events[-1] == TokenDelta("par", 1)
    assert caught.value.reason == "UPSTREAM_OVERLOADED"


async def test_start_fails_when_the_key_is_refused(upstream: ScriptedUpstream) -> None:
    upstream.script("/v1/models", Reply(401, body=error_body("authentication_error", "invalid x-api-key")))
    eng = AnthropicEngine(SERVED, base_url=base_url(upstream), api_key=API_KEY)

    with pytest.raises(FailedPrecondition) as caught:
        await eng.start()
    await eng.cleanup()

    assert caught.value.reason == "UPSTREAM_AUTH_FAILED"
    assert base_url(upstream) in caught.value.message


# --- abort -----------------------------------------------------------------------


async def test_abort_ends_with_aborted_and_closes_the_http_stream(
    engine: AnthropicEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(MESSAGES, Reply(events=text_transcript(*["word "] * 100), delay=0.05))
    stream = engine.generate(request("slow"))
    events = [await anext(stream), await anext(stream)]

    assert await engine.abort("slow") is True
    events += [e async for e in stream]

    assert events[-1] == GenerationFinished("aborted", engine.count_tokens("Say hello."), 1)
    await asyncio.wait_for(upstream.disconnected.wait(), 5)
    assert await engine.abort("slow") is False


async def test_cleanup_is_safe_before_start_and_twice() -> None:
    eng = AnthropicEngine(SERVED, api_key=API_KEY)

    await eng.cleanup()
    await eng.cleanup()

    assert eng.models() == [SERVED]
    with pytest.raises(Unavailable):
        await anext(eng.generate(request()))

"""The openai engine against a scripted OpenAI-compatible server in the test.

The server is a few lines of asyncio HTTP/1.1: each reply is scripted (status,
headers, a JSON body or SSE events written one at a time), every request is
recorded, and a client that closes the connection mid-stream is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta
from hearth.embedded import free_port
from hearth.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    HearthError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from workerd.adapters.engines import openai_engine
from workerd.adapters.engines.api_keys import ApiKeyError, load_api_key
from workerd.adapters.engines.openai_engine import OpenAIEngine
from workerd.domain.engine import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

API_KEY = "sk-test-0123456789abcdefSECRET"
SERVED = ServedModel("chat", context_length=4096, supports_tools=True)


# --- a scripted upstream -------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer: a JSON body, or SSE events written one by one."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    events: list[str] = field(default_factory=list)
    #: Seconds before each event.
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ScriptedUpstream:
    """An HTTP/1.1 server that answers each path from its script, in order
    (the last reply of a path repeats), and records what it saw."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: list[Seen] = []
        self.disconnected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    def script(self, path: str, *replies: Reply) -> None:
        self.scripts[path] = list(replies)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path.endswith(path)]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _next_reply(self, path: str) -> Reply:
        for suffix, replies in self.scripts.items():
            if path.split("?")[0].endswith(suffix):
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return Reply(404, body={"error": {"message": f"no route {path}", "type": "not_found"}})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            }
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Seen(method, path, headers, json.loads(raw) if raw else None))
            reply = self._next_reply(path)
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            if not reply.events:
                body = json.dumps(reply.body).encode()
                head_out = (
                    f"HTTP/1.1 {reply.status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
                )
                writer.write(head_out.encode() + body)
                await writer.drain()
                return
            writer.write(
                f"HTTP/1.1 {reply.status} OK\r\ncontent-type: text/event-stream\r\n"
                f"cache-control: no-cache\r\nconnection: close\r\n{extra}\r\n".encode()
            )
            await writer.drain()
            eof = asyncio.ensure_future(reader.read())  # the client sends nothing more; b"" when it closes
            try:
                for event in reply.events:
                    if reply.delay:
                        await asyncio.wait({eof}, timeout=reply.delay)
                    if eof.done():
                        self.disconnected.set()
                        return
                    writer.write(event.encode())
                    await writer.drain()
            finally:
                eof.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def sse(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, int] | None = None
) -> str:
    """A chat.completion.chunk as OpenAI streams it with include_usage."""
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return sse(
        {
            "id": "chatcmpl-AbC123",
            "object": "chat.completion.chunk",
            "created": 1735689600,
            "model": "upstream-model",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": choices,
            "usage": usage,
        }
    )


DONE = sse("[DONE]")


def text_transcript(*pieces: str, finish: str = "stop", usage: dict[str, int] | None = None) -> list[str]:
    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in pieces]
    events.append(chunk({}, finish=finish))
    if usage is not None:
        events.append(chunk(None, usage=usage))
    events.append(DONE)
    return events


MODELS = Reply(
    body={"object": "list", "data": [{"id": "upstream-model", "object": "model", "owned_by": "me"}]}
)


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --- fixtures --------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    server.script("/models", MODELS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engine(upstream: ScriptedUpstream) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine(
        SERVED, base_url=upstream.base_url, upstream_model="upstream-model", api_key=API_KEY, max_retries=2
    )
    await eng.start()
    yield eng
    await eng.cleanup()


def request(job_id: str = "j1", **kwargs: Any) -> GenerationRequest:
    values: dict[str, Any] = {"model": "chat", "prompt": "Say hello.", "max_tokens": 16}
    values.update(kwargs)
    return GenerationRequest(job_id=job_id, **values)


async def collect(engine: OpenAIEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(req)]


async def failure(engine: OpenAIEngine, req: GenerationRequest) -> HearthError:
    with pytest.raises(HearthError) as caught:
        await collect(engine, req)
    return caught.value


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
        assert "SECRET" not in text


# --- streaming ---------------------------------------------------------------------


async def test_streams_text_and_reports_the_upstream_usage(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        "/chat/completions",
        Reply(
            events=text_transcript(
                "Hel", "lo", " there", usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            )
        ),
    )

    events = await collect(engine, request(temperature=0.7, seed=7))

    estimate = engine.count_tokens("Say hello.")
    assert events == [
        GenerationStarted(estimate),
        TokenDelta("Hel", 1),
        TokenDelta("lo", 1),
        TokenDelta(" there", 1),
        GenerationFinished("stop", input_tokens=12, output_tokens=3),
    ]
    [sent] = upstream.seen("/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.body == {
        "model": "upstream-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
        "temperature": 0.7,
        "seed": 7,
    }
    assert engine.stats().running == 0


async def test_a_stream_that_outruns_the_engine_still_lets_other_tasks_run(
    engine: OpenAIEngine, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that always finds data waiting yields to the loop once it has held it
    for the hold limit; with the limit at 0, after every chunk. (Socket reads alone
    yield once per buffer of a few hundred chunks: on a CPU shared with vLLM that was
    seconds without a heartbeat.)"""
    monkeypatch.setattr(openai_engine, "_MAX_LOOP_HOLD_SECONDS", 0.0)
    # The whole answer in one write: every read finds data waiting.
    pieces = 2_000
    upstream.script("/chat/completions", Reply(events=["".join(text_transcript(*(["w "] * pieces)))]))
    delivered = 0
    progress_seen: set[int] = set()

    async def other_task() -> None:
        while True:
            progress_seen.add(delivered)
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    try:
        async for event in engine.generate(request(max_tokens=pieces)):
            if isinstance(event, TokenDelta):
                delivered += event.token_count
    finally:
        ticker.cancel()

    assert delivered == pieces
    # The other task ran between (nearly) every two chunks, not once per socket read.
    assert len(progress_seen) > pieces / 2, len(progress_seen)


async def test_length_without_usage_counts_the_deltas(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript("a", "b", finish="length")))

    events = await collect(engine, request(prompt="x" * 40, max_tokens=2))

    assert events[0] == GenerationStarted(10)
    assert events[-1] == GenerationFinished("length", input_tokens=10, output_tokens=2)
    [sent] = upstream.seen("/chat/completions")
    assert "seed" not in sent.body and "tools" not in sent.body


async def test_conversation_with_tools_streams_and_assembles_tool_calls(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    # Two parallel calls, ids and names first, arguments split mid-token, as OpenAI streams them.
    def tc(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    events_out = [
        chunk({"role": "assistant", "content": None}),
        chunk(tc(0, id="call_a1", type="function", function={"name": "get_weather", "arguments": ""})),
        chunk(tc(0, function={"arguments": '{"ci'})),
        chunk(tc(0, function={"arguments": 'ty": "Par'})),
        chunk(tc(0, function={"arguments": 'is"}'})),
        chunk(tc(1, id="call_b2", type="function", function={"name": "get_time", "arguments": ""})),
        chunk(tc(1, function={"arguments": '{"tz": "CET"}'})),
        chunk({}, finish="tool_calls"),
        chunk(None, usage={"prompt_tokens": 80, "completion_tokens": 31, "total_tokens": 111}),
        DONE,
    ]
    upstream.script("/chat/completions", Reply(events=events_out))
    weather = Tool(
        "get_weather", "Weather now", {"type": "object", "properties": {"city": {"type": "string"}}}
    )
    conversation = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_0", "get_weather", '{"city": "Oslo"}'),)),
        ChatMessage("tool", "-3 C, snow", tool_call_id="call_0"),
        ChatMessage("user", "And Paris, and the time there?"),
    )

    events = await collect(
        engine,
        request(
            prompt="", messages=conversation, tools=(weather, Tool("get_time")), tool_choice="get_weather"
        ),
    )

    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert all(d.text == "" and d.token_count == 0 for d in deltas)
    assert [piece for d in deltas for piece in d.tool_calls] == [
        ToolCallDelta(0, "call_a1", "get_weather", ""),
        ToolCallDelta(0, "", "", '{"ci'),
        ToolCallDelta(0, "", "", 'ty": "Par'),
        ToolCallDelta(0, "", "", 'is"}'),
        ToolCallDelta(1, "call_b2", "get_time", ""),
        ToolCallDelta(1, "", "", '{"tz": "CET"}'),
    ]
    assert events[-1] == GenerationFinished(
        "tool_calls",
        input_tokens=80,
        output_tokens=31,
        tool_calls=(
            ToolCall("call_a1", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_b2", "get_time", '{"tz": "CET"}'),
        ),
    )
    [sent] = upstream.seen("/chat/completions")
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "-3 C, snow", "tool_call_id": "call_0"},
        {"role": "user", "content": "And Paris, and the time there?"},
    ]
    assert sent.body["tools"] == [weather.openai_json(), Tool("get_time").openai_json()]
    assert sent.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("choice", "sent"), [("", None), ("auto", "auto"), ("required", "required"), ("none", "none")]
)
async def test_tool_choice_mapping(
    engine: OpenAIEngine, upstream: ScriptedUpstream, choice: str, sent: str | None
) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript("ok")))

    await collect(engine, request(tools=(Tool("f"),), tool_choice=choice))

    [seen] = upstream.seen("/chat/completions")
    assert seen.body.get("tool_choice") == sent


# --- errors and retries ------------------------------------------------------------


async def test_429_with_retry_after_is_retried_then_succeeds(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        "/chat/completions",
        Reply(
            429, {"retry-after-ms": "20"}, error_body("Rate limit reached", "requests", "rate_limit_exceeded")
        ),
        Reply(events=text_transcript("fine")),
    )

    events = await collect(engine, request())

    assert len(upstream.seen("/chat/completions")) == 2
    assert events[-1] == GenerationFinished("stop", engine.count_tokens("Say hello."), 1)


async def test_429_whose_hint_is_too_long_is_not_retried_and_carries_the_hint(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    # The client reads the hint: above its 120 s ceiling it gives up at once.
    upstream.script(
        "/chat/completions", Reply(429, {"retry-after": "3600"}, error_body("Slow down", "requests"))
    )

    err = await failure(engine, request())

    assert len(upstream.seen("/chat/completions")) == 1
    assert isinstance(err, ResourceExhausted)
    assert err.reason == "UPSTREAM_RATE_LIMITED"
    assert err.retry_after == 3600


async def test_500_is_retried_max_retries_times_then_unavailable(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        "/chat/completions", Reply(500, {"retry-after-ms": "10"}, error_body("boom", "server_error"))
    )

    err = await failure(engine, request())

    assert len(upstream.seen("/chat/completions")) == 3  # the call and max_retries=2 retries
    assert isinstance(err, Unavailable)
    assert err.reason == "UPSTREAM_UNAVAILABLE"
    assert err.metadata["status"] == "500"
    assert upstream.base_url in err.message


async def test_401_is_auth_failed_and_never_shows_the_key(
    engine: OpenAIEngine, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.script(
        "/chat/completions",
        Reply(
            401,
            body=error_body(
                f"Incorrect API key provided: {API_KEY}.", "invalid_request_error", "invalid_api_key"
            ),
        ),
    )

    err = await failure(engine, request())

    assert len(upstream.seen("/chat/completions")) == 1
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "UPSTREAM_AUTH_FAILED"
    assert err.__cause__ is None and err.__context__ is None
    assert_no_key(str(err), repr(err), json.dumps(err.metadata), caplog.text)


async def test_400_about_the_context_is_context_too_long(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(1000 in the messages, 4000 in the completion). "
        "Please reduce the length of the messages or completion."
    )
    upstream.script("/chat/completions", Reply(400, body=error_body(message, "invalid_request_error")))

    err = await failure(engine, request())

    assert isinstance(err, InvalidArgument)
    assert (err.reason, err.field) == ("CONTEXT_TOO_LONG", "max_tokens")


async def test_other_400_is_upstream_rejected(engine: OpenAIEngine, upstream: ScriptedUpstream) -> None:
    upstream.script(
        "/chat/completions", Reply(400, body=error_body("temperature must be <= 2", "invalid_request_error"))
    )

    err = await failure(engine, request())

    assert isinstance(err, InvalidArgument)
    assert err.reason == "UPSTREAM_REJECTED"
    assert "temperature must be <= 2" in err.message


async def test_404_model_is_model_not_found(engine: OpenAIEngine, upstream: ScriptedUpstream) -> None:
    upstream.script(
        "/chat/completions",
        Reply(
            404,
            body=error_body(
                "The model `upstream-model` does not exist", "invalid_request_error", "model_not_found"
            ),
        ),
    )

    err = await failure(engine, request())

    assert isinstance(err, NotFound)
    assert err.reason == "MODEL_NOT_FOUND"
    assert err.metadata["model"] == "chat"


async def test_an_error_event_inside_the_stream_raises_unavailable(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        "/chat/completions",
        Reply(
            events=[
                chunk({"content": "par"}),
                sse({"error": {"message": "engine died", "type": "server_error"}}),
            ]
        ),
    )

    events: list[GenerationEvent] = []
    with pytest.raises(Unavailable) as caught:
        async for event in engine.generate(request()):
            events.append(event)

    assert events == [GenerationStarted(engine.count_tokens("Say hello.")), TokenDelta("par", 1)]
    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert "engine died" in caught.value.message


async def test_a_generation_past_its_deadline_is_upstream_timeout(upstream: ScriptedUpstream) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript(*["x"] * 50), delay=0.1))
    eng = OpenAIEngine(
        SERVED, base_url=upstream.base_url, upstream_model="upstream-model", timeout_seconds=0.5
    )
    await eng.start()
    try:
        err = await failure(eng, request())
    finally:
        await eng.cleanup()

    assert isinstance(err, DeadlineExceeded)
    assert err.reason == "UPSTREAM_TIMEOUT"


# --- validation --------------------------------------------------------------------


async def test_validation_errors_come_before_anything_is_sent(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    unknown = engine.generate(request(model="other"))
    with pytest.raises(NotFound) as not_found:
        await anext(unknown)
    too_long = engine.generate(request(prompt="x" * 16000, max_tokens=100))
    with pytest.raises(InvalidArgument) as context:
        await anext(too_long)

    assert not_found.value.reason == "MODEL_NOT_FOUND"
    assert context.value.reason == "CONTEXT_TOO_LONG"
    assert upstream.seen("/chat/completions") == []


async def test_a_duplicate_job_id_is_already_running(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript(*["x"] * 40), delay=0.05))
    first = engine.generate(request("dup"))
    await anext(first)

    with pytest.raises(AlreadyExists) as caught:
        await anext(engine.generate(request("dup")))

    assert caught.value.reason == "JOB_ALREADY_RUNNING"
    await first.aclose()


async def test_generate_before_start_is_not_ready(upstream: ScriptedUpstream) -> None:
    eng = OpenAIEngine(SERVED, base_url=upstream.base_url)

    with pytest.raises(Unavailable) as caught:
        await anext(eng.generate(request()))

    assert caught.value.reason == "ENGINE_NOT_READY"
    await eng.cleanup()
    await eng.cleanup()


# --- abort and cleanup ---------------------------------------------------------------


async def test_abort_ends_with_aborted_and_closes_the_http_stream(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript(*["tok"] * 100), delay=0.05))
    stream = engine.generate(request("slow"))
    events = [await anext(stream), await anext(stream), await anext(stream)]
    assert engine.stats().running == 1

    assert await engine.abort("slow") is True
    events += [event async for event in stream]

    assert isinstance(events[-1], GenerationFinished)
    assert events[-1].finish_reason == "aborted"
    assert events[-1].output_tokens == sum(e.token_count for e in events if isinstance(e, TokenDelta))
    await asyncio.wait_for(upstream.disconnected.wait(), 5)
    assert await engine.abort("slow") is False
    assert await engine.abort("never-ran") is False
    assert engine.stats().running == 0


async def test_abort_while_retrying_ends_with_aborted(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script(
        "/chat/completions", Reply(503, {"retry-after": "30"}, error_body("busy", "server_error"))
    )
    stream = engine.generate(request("waiting"))
    first = asyncio.ensure_future(anext(stream))
    while not upstream.seen("/chat/completions"):
        await asyncio.sleep(0.01)

    assert await engine.abort("waiting") is True
    events = [await first] + [event async for event in stream]

    estimate = engine.count_tokens("Say hello.")
    assert events == [GenerationStarted(estimate), GenerationFinished("aborted", estimate, 0)]


async def test_a_consumer_that_stops_closes_the_http_stream(
    engine: OpenAIEngine, upstream: ScriptedUpstream
) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript(*["tok"] * 100), delay=0.05))
    stream = engine.generate(request("gone"))
    await anext(stream)
    await anext(stream)

    await stream.aclose()

    await asyncio.wait_for(upstream.disconnected.wait(), 5)
    assert engine.stats().running == 0
    assert await engine.abort("gone") is False


async def test_cleanup_aborts_running_generations_and_is_safe_twice(upstream: ScriptedUpstream) -> None:
    upstream.script("/chat/completions", Reply(events=text_transcript(*["tok"] * 100), delay=0.05))
    eng = OpenAIEngine(SERVED, base_url=upstream.base_url, upstream_model="upstream-model")
    await eng.start()
    stream = eng.generate(request("running"))
    await anext(stream)
    await anext(stream)

    await eng.cleanup()
    rest = [event async for event in stream]
    await eng.cleanup()

    assert isinstance(rest[-1], GenerationFinished) and rest[-1].finish_reason == "aborted"
    await asyncio.wait_for(upstream.disconnected.wait(), 5)
    with pytest.raises(Unavailable):
        await anext(eng.generate(request("late")))


# --- start -----------------------------------------------------------------------


async def test_start_fails_clearly_when_the_upstream_cannot_be_reached() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    eng = OpenAIEngine(SERVED, base_url=base_url, api_key=API_KEY, max_retries=0, start_timeout_seconds=0)

    with pytest.raises(Unavailable) as caught:
        await eng.start()

    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert base_url in caught.value.message
    assert_no_key(str(caught.value))
    await eng.cleanup()


async def test_start_waits_for_an_upstream_that_comes_up_late() -> None:
    port = free_port()
    eng = OpenAIEngine(
        SERVED, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, start_timeout_seconds=30
    )
    starting = asyncio.create_task(eng.start())
    await asyncio.sleep(0.3)
    assert not starting.done()  # refused connections: still waiting

    late = ScriptedUpstream()
    await late.start(port)
    try:
        await asyncio.wait_for(starting, 10)
        assert late.seen("/models")
    finally:
        await eng.cleanup()
        await late.stop()


async def test_start_fails_when_the_key_is_refused(
    upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.script(
        "/models",
        Reply(401, body=error_body(f"Incorrect API key provided: {API_KEY}", "invalid_request_error")),
    )
    eng = OpenAIEngine(SERVED, base_url=upstream.base_url, api_key=API_KEY)

    with pytest.raises(FailedPrecondition) as caught:
        await eng.start()

    assert caught.value.reason == "UPSTREAM_AUTH_FAILED"
    assert upstream.base_url in caught.value.message
    assert_no_key(str(caught.value), caplog.text)
    await eng.cleanup()


async def test_start_warns_when_the_upstream_does_not_list_the_model(
    upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    eng = OpenAIEngine(SERVED, base_url=upstream.base_url, upstream_model="missing-model")
    with caplog.at_level(logging.WARNING):
        await eng.start()
    await eng.cleanup()

    assert "missing-model" in caplog.text
    assert "upstream-model" in caplog.text


def test_models_and_token_estimate() -> None:
    remote = ServedModel("cloud", 8192, supports_tools=True, remote=True)
    eng = OpenAIEngine(remote, base_url="https://api.example.com/v1")
    counted = OpenAIEngine(
        remote, base_url="https://api.example.com/v1", tokenizer=lambda text: len(text.split())
    )

    assert eng.models() == [remote]
    assert (eng.count_tokens(""), eng.count_tokens("abcd"), eng.count_tokens("abcde")) == (1, 1, 2)
    assert counted.count_tokens("one two three") == 3
    assert eng.stats().running == 0 and eng.stats().kv_cache_usage is None


# --- api keys --------------------------------------------------------------------


def test_load_api_key_prefers_the_file_over_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)

    assert load_api_key("MY_KEY", str(key_file), environ={"MY_KEY": "from-env"}) == API_KEY
    assert load_api_key("MY_KEY", "", environ={"MY_KEY": " from-env "}) == "from-env"
    assert load_api_key("", "", environ={}) is None


@pytest.mark.parametrize(
    ("env_var", "file", "environ", "named"),
    [
        ("MY_KEY", "", {}, "MY_KEY"),
        ("MY_KEY", "", {"MY_KEY": "  "}, "MY_KEY"),
        ("", "missing", {}, "missing"),
        ("", "empty", {}, "empty"),
    ],
)
def test_load_api_key_errors_name_the_source_not_the_value(
    tmp_path: Path, env_var: str, file: str, environ: dict[str, str], named: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    path = str(tmp_path / file) if file else ""

    with pytest.raises(ApiKeyError) as caught:
        load_api_key(env_var, path, environ=environ)

    assert named in str(caught.value)

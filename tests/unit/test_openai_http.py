"""The OpenAI-compatible HTTP API over a fake job service of our own (the four
methods of ChatJobs, replaying scripted events) and fake embeddings: request
mapping, SSE chunk shapes and order, usage, errors in OpenAI's shape, auth,
a client that goes away, tracing and metrics, and the server's shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hearth import errors
from hearth.chat import ToolCall, ToolCallDelta
from hearth.runtime import JOB_ID_ATTRIBUTE, ModelConfig, ServiceMetrics
from orchestratord.api.openai_http import (
    ApiKeys,
    EmbeddingBatch,
    HttpApi,
    HttpMetrics,
    JobRequests,
    create_app,
    load_api_keys,
)
from orchestratord.domain.jobs import (
    Cancelled,
    Completed,
    EventBody,
    Failed,
    JobEvent,
    JobSnapshot,
    JobSpec,
    JobState,
    Queued,
    RouteDecision,
    RunRecord,
    Started,
    Tokens,
    Waiting,
)
from orchestratord.domain.service import SubmitResult
from orchestratord.domain.validation import JobDraft

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

JOB_ID = "5f0c6a4e-8a47-4a51-9a2e-0d6f7c1b2a33"
CREATED = 1_700_000_000.5
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODELS = [
    ModelConfig(name="tiny-llama", context_length=2048, roles=["default"]),
    ModelConfig(name="org/big-model", engine="vllm"),
]
#: The run record says 11 in / 7 out; the events carry other counts, so a
#: test can tell which one usage came from.
RUN = RunRecord(
    queue_wait=0.1,
    time_to_first_token=0.2,
    total_duration=1.0,
    input_tokens=11,
    output_tokens=7,
    decode_tokens_per_second=10.0,
    worker_id="w1",
    model="tiny-llama",
    engine="transformers",
    trace_id="",
)

TEXT_SCRIPT: list[EventBody] = [
    Queued(0),
    Waiting("MODEL_LOADING", "loading tiny-llama", 2.0, "w1"),
    Started("tiny-llama", "w1", 9),
    Tokens("Hel", 1),
    Tokens("lo!", 2),
    Completed("STOP", 3),
]
TOOL_SCRIPT: list[EventBody] = [
    Queued(0),
    Started("tiny-llama", "w1", 9),
    Tokens("", 1, (ToolCallDelta(0, "call_a", "get_weather", ""),)),
    Tokens("", 1, (ToolCallDelta(0, arguments='{"city": '),)),
    Tokens("", 1, (ToolCallDelta(0, arguments='"Paris"}'), ToolCallDelta(1, "call_b", "get_time", "{}"))),
    Completed(
        "TOOL_CALLS",
        3,
        (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_time", "{}")),
    ),
]
FAIL_SCRIPT: list[EventBody] = [
    Queued(0),
    Started("tiny-llama", "w1", 9),
    Tokens("partial", 1),
    Failed("WORKER_LOST", "lost the worker: connection reset"),
]


def snapshot(job_id: str = JOB_ID, run: RunRecord | None = RUN) -> JobSnapshot:
    return JobSnapshot(
        job_id=job_id,
        spec=JobSpec(prompt="x"),
        state=JobState.QUEUED,
        request_id=None,
        created_at=CREATED,
        started_at=None,
        ended_at=None,
        output="",
        end_reason="",
        end_message="",
        run=run,
        route=RouteDecision(("tiny-llama",), {}),
        last_sequence=1,
    )


class FakeJobs:
    """ChatJobs that records submissions and cancels and replays a script.

    With ``hang`` the job never ends by itself: after the script its watch
    waits for a cancel and then ends with a cancelled event, as JobService does.
    """

    def __init__(
        self,
        script: Sequence[EventBody] = TEXT_SCRIPT,
        *,
        hang: bool = False,
        submit_error: Exception | None = None,
    ) -> None:
        self.script = list(script)
        self.hang = hang
        self.submit_error = submit_error
        self.drafts: list[JobDraft] = []
        self.cancels: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()
        self.watching = asyncio.Event()

    async def submit(self, draft: JobDraft) -> SubmitResult:
        if self.submit_error is not None:
            raise self.submit_error
        self.drafts.append(draft)
        return SubmitResult(snapshot(), deduplicated=False)

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        self.watching.set()
        sequence = 0
        for body in self.script:
            sequence += 1
            yield JobEvent(job_id, sequence, CREATED + sequence, body)
        if self.hang:
            await self.cancelled.wait()
            yield JobEvent(job_id, sequence + 1, CREATED + 99, Cancelled(self.cancels[-1][1]))

    async def cancel(self, job_id: str, reason: str = "") -> JobSnapshot:
        self.cancels.append((job_id, reason))
        self.cancelled.set()
        return snapshot(job_id)

    async def get(self, job_id: str) -> JobSnapshot:
        return snapshot(job_id)


class FakeEmbeddings:
    """memoryd's Embed: 3-dimensional vectors; an empty text is refused as memoryd refuses it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        self.calls.append(list(texts))
        for index, text in enumerate(texts):
            if not text:
                raise errors.InvalidArgument(f"inputs[{index}]", "must not be empty")
        vectors = [[0.5, -0.25, float(i)] for i in range(len(texts))]
        return EmbeddingBatch(vectors, MINILM, 3, sum(len(t) // 4 + 1 for t in texts))


class Api:
    """The app under test with its fakes, the spans it made and its metrics."""

    def __init__(
        self, jobs: FakeJobs, *, keys: Sequence[str] = (), max_request_bytes: int = 64 * 1024
    ) -> None:
        self.jobs = jobs
        self.embeddings = FakeEmbeddings()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = ServiceMetrics("orchestrator")
        self.requests = JobRequests(jobs)
        self.app = create_app(
            jobs,
            self.embeddings,
            MODELS,
            requests=self.requests,
            api_keys=ApiKeys(keys),
            tracer=provider.get_tracer("test"),
            metrics=HttpMetrics(self.metrics),
            max_request_bytes=max_request_bytes,
            created=CREATED,
        )

    def client(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://hearth", headers=headers
        )

    def openai(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://hearth/v1", api_key=api_key, max_retries=0, http_client=self.client()
        )


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], **fields}


def sse_data(body: str) -> list[Any]:
    """The data of each server-sent event: parsed JSON, or the raw text ([DONE])."""
    out: list[Any] = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- request mapping -------------------------------------------------------------


async def test_a_request_becomes_one_job_with_messages_tools_parts_and_metadata() -> None:
    api = Api(FakeJobs())
    weather_parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    request: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather in a city.",
                    "parameters": weather_parameters,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_completion_tokens": 32,
        "temperature": 0.2,
        "seed": 7,
        "metadata": {"team": "infra"},
        "user": "alice",
        "n": 1,
        "frequency_penalty": 0.5,  # unknown to Hearth: ignored, as OpenAI ignores unknown fields
    }
    async with api.client(**{"X-Hearth-Project": "proj-1", "X-Hearth-Role": "coder"}) as http:
        reply = await http.post("/v1/chat/completions", json=request)

    assert reply.status_code == 200, reply.text
    [draft] = api.jobs.drafts
    assert draft.prompt == ""
    assert [(m.role, m.content) for m in draft.messages] == [
        ("system", "Be brief."),
        ("user", "Weather\nin Paris?"),
        ("assistant", ""),
        ("tool", "sunny"),
    ]
    assert draft.messages[2].tool_calls == (ToolCall("call_1", "get_weather", "{}"),)
    assert draft.messages[3].tool_call_id == "call_1"
    assert [(t.name, t.description, dict(t.parameters)) for t in draft.tools] == [
        ("get_weather", "Weather in a city.", weather_parameters)
    ]
    assert draft.tool_choice == "get_weather"
    assert (draft.model, draft.max_tokens, draft.temperature, draft.seed) == ("tiny-llama", 32, 0.2, 7)
    assert (draft.project_id, draft.role) == ("proj-1", "coder")
    assert dict(draft.labels) == {"team": "infra", "user": "alice"}


async def test_defaults_follow_openai() -> None:
    api = Api(FakeJobs())
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert reply.status_code == 200
    [draft] = api.jobs.drafts
    assert draft.temperature == 1.0 and draft.max_tokens == 5 and draft.tool_choice == "" and not draft.tools


# --- answers -----------------------------------------------------------------------


async def test_a_completion_names_the_serving_model_and_takes_usage_from_the_run_record() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(model="", max_tokens=3))

    assert reply.status_code == 200
    assert reply.headers["X-Hearth-Job-Id"] == JOB_ID
    body = reply.json()
    assert body["id"] == f"chatcmpl-{JOB_ID}"
    assert body["object"] == "chat.completion" and body["created"] == int(CREATED)
    assert body["model"] == "tiny-llama"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


async def test_a_completion_with_tool_calls_through_the_openai_client() -> None:
    api = Api(FakeJobs(TOOL_SCRIPT))
    async with api.openai() as client:
        completion = await client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Weather?"}]
        )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", "{}"),
    ]


async def test_a_stream_sends_chunks_in_openai_order_with_usage_then_done() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT))
    async with api.client() as http:
        reply = await http.post(
            "/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})
        )

    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["X-Hearth-Job-Id"] == JOB_ID
    assert ": waiting (MODEL_LOADING)" in reply.text  # a comment, which clients skip
    *chunks, usage, done = sse_data(reply.text)
    assert done == "[DONE]"
    for chunk in chunks:
        assert chunk["id"] == f"chatcmpl-{JOB_ID}" and chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == int(CREATED) and chunk["model"] == "tiny-llama"
        assert chunk["usage"] is None  # include_usage: every chunk has the key
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


async def test_a_stream_without_include_usage_has_no_usage() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(stream=True))
    *chunks, done = sse_data(reply.text)
    assert done == "[DONE]" and all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_streamed_tool_call_deltas_are_shaped_as_openai_sends_them() -> None:
    api = Api(FakeJobs(TOOL_SCRIPT))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(stream=True))
    *chunks, done = sse_data(reply.text)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1:4] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {
            "tool_calls": [
                {"index": 0, "function": {"arguments": '"Paris"}'}},
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ]
        },
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and done == "[DONE]"

    # The official client's stream helper assembles the same calls.
    async with (
        api.openai() as client,
        client.chat.completions.stream(
            model="tiny-llama", messages=[{"role": "user", "content": "?"}]
        ) as stream,
    ):
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", "{}"),
    ]


async def test_a_job_failing_mid_stream_ends_the_stream_with_an_error_event() -> None:
    api = Api(FakeJobs(FAIL_SCRIPT))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(stream=True))
    events = sse_data(reply.text)
    assert "[DONE]" not in events
    assert events[1]["choices"][0]["delta"] == {"content": "partial"}
    assert events[-1] == {
        "error": {
            "message": "The job failed (WORKER_LOST): lost the worker: connection reset",
            "type": "server_error",
            "param": None,
            "code": "worker_lost",
        }
    }
    # The official client raises it.
    async with api.openai() as client:
        stream = await client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        texts = []
        with pytest.raises(openai.APIError, match="WORKER_LOST"):
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content)
    assert texts == ["", "partial"]


@pytest.mark.parametrize(
    ("terminal", "status", "code"),
    [
        (Failed("CONTEXT_TOO_LONG", "prompt too long"), 400, "context_length_exceeded"),
        (Failed("DEADLINE_EXCEEDED", "timed out"), 504, "deadline_exceeded"),
        (Failed("ENGINE_ERROR", "boom"), 500, "engine_error"),
        (Cancelled("by an operator"), 409, "cancelled"),
    ],
)
async def test_a_job_that_does_not_complete_answers_by_its_end_reason(
    terminal: EventBody, status: int, code: str
) -> None:
    api = Api(FakeJobs([Queued(0), Started("tiny-llama", "w1", 9), terminal]))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat())
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    assert reply.headers["X-Hearth-Job-Id"] == JOB_ID
    assert api.jobs.cancels == []  # the job had ended: nothing to cancel


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "request_fields", "status", "expected"),
    [
        (
            errors.InvalidArgument("spec.messages[2].role", "unknown role 'robot'"),
            {},
            400,
            {"type": "invalid_request_error", "param": "messages[2].role", "code": "invalid_field"},
        ),
        (
            errors.InvalidArgument("spec.max_tokens", "too long", reason="CONTEXT_TOO_LONG"),
            {"max_tokens": 9000},
            400,
            {"type": "invalid_request_error", "param": "max_tokens", "code": "context_length_exceeded"},
        ),
        (
            errors.InvalidArgument("spec.max_tokens", "must be at least 1"),
            {"max_completion_tokens": 0},
            400,
            {"type": "invalid_request_error", "param": "max_completion_tokens", "code": "invalid_field"},
        ),
        (
            errors.InvalidArgument("spec.tools[0].parameters_json", "must be a JSON Schema of type object"),
            {},
            400,
            {
                "type": "invalid_request_error",
                "param": "tools[0].function.parameters",
                "code": "invalid_field",
            },
        ),
        (
            errors.NotFound("no model 'gpt-9'", reason="MODEL_NOT_FOUND"),
            {},
            404,
            {"type": "invalid_request_error", "param": "model", "code": "model_not_found"},
        ),
        (
            errors.FailedPrecondition("no target passed the probe", reason="NO_TOOL_CAPABLE_TARGET"),
            {},
            400,
            {"type": "invalid_request_error", "param": "tools", "code": "no_tool_capable_target"},
        ),
        (
            errors.ResourceExhausted("the job queue is full", reason="QUEUE_FULL", retry_after=1.5),
            {},
            429,
            {"type": "rate_limit_error", "param": None, "code": "queue_full"},
        ),
        (
            errors.Unavailable("the router is down", reason="UNAVAILABLE"),
            {},
            503,
            {"type": "server_error", "param": None, "code": "unavailable"},
        ),
    ],
)
async def test_submit_errors_come_back_in_openai_shape(
    error: errors.HearthError, request_fields: dict[str, Any], status: int, expected: dict[str, Any]
) -> None:
    api = Api(FakeJobs(submit_error=error))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat(**request_fields))
    assert reply.status_code == status
    body = reply.json()["error"]
    assert {k: body[k] for k in ("type", "param", "code")} == expected
    assert body["message"] == error.message
    if status == 429:
        assert reply.headers["Retry-After"] == "2" and reply.headers["retry-after-ms"] == "1500"


async def test_an_unexpected_error_is_a_generic_500() -> None:
    api = Api(FakeJobs(submit_error=RuntimeError("secret database password in a message")))
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "server_error"
    assert "secret" not in reply.text


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "tiny-llama"}, "messages", "missing_required_parameter"),
        (chat(messages=[]), "messages", "invalid_value"),
        (chat(temperature="hot"), "temperature", "invalid_value"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_value"),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                        ],
                    }
                ]
            ),
            "messages[0].content[1].type",
            "unsupported_value",
        ),
        (chat(n=2), "n", "unsupported_parameter"),
        (chat(stop=["\n"]), "stop", "unsupported_parameter"),
        (chat(metadata={"team": 5}), "metadata.team", "invalid_value"),
        (chat(tools=[{"type": "retrieval"}]), "tools[0].type", "invalid_value"),
        (chat(tool_choice="sometimes"), "tool_choice", "invalid_value"),
        (chat(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
        (chat(response_format={"type": "json_object"}), "response_format", "unsupported_parameter"),
    ],
)
async def test_bad_request_bodies_are_400_naming_the_parameter(
    body: dict[str, Any], param: str, code: str
) -> None:
    api = Api(FakeJobs())
    async with api.client() as http:
        reply = await http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert reply.json()["error"]["code"] == code
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert api.jobs.drafts == []


async def test_bodies_that_are_not_json_objects_or_too_large_are_refused() -> None:
    api = Api(FakeJobs(), max_request_bytes=1000)
    async with api.client() as http:
        not_json = await http.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        not_object = await http.post("/v1/chat/completions", json=[1, 2])
        too_large = await http.post(
            "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": "x" * 2000}])
        )
        unknown = await http.get("/v1/nothing-here")
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "invalid_json")
    assert (not_object.status_code, not_object.json()["error"]["code"]) == (400, "invalid_json")
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "request_too_large")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_url")


# --- models and embeddings ----------------------------------------------------------------


async def test_models_lists_the_registry_and_retrieves_one() -> None:
    api = Api(FakeJobs())
    async with api.openai() as client:
        listed = await client.models.list()
        one = await client.models.retrieve("org/big-model")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-9")
    assert [(m.id, m.object, m.owned_by, m.created) for m in listed.data] == [
        ("tiny-llama", "model", "hearth", int(CREATED)),
        ("org/big-model", "model", "hearth", int(CREATED)),
    ]
    assert one.id == "org/big-model"
    assert missing.value.body == {
        "message": "The model 'gpt-9' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_embeddings_as_floats_and_base64() -> None:
    api = Api(FakeJobs())
    async with api.client() as http:
        floats = await http.post(
            "/v1/embeddings", json={"input": ["a b c d", "e"], "model": "all-MiniLM-L6-v2"}
        )
        packed = await http.post("/v1/embeddings", json={"input": "a b c d", "encoding_format": "base64"})

    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list" and body["model"] == MINILM
    assert [(d["object"], d["index"], d["embedding"]) for d in body["data"]] == [
        ("embedding", 0, [0.5, -0.25, 0.0]),
        ("embedding", 1, [0.5, -0.25, 1.0]),
    ]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == [0.5, -0.25, 0.0]
    assert api.embeddings.calls == [["a b c d", "e"], ["a b c d"]]

    # The official client asks for base64 and decodes it.
    async with api.openai() as client:
        result = await client.embeddings.create(input="hello", model=MINILM)
    assert result.data[0].embedding == [0.5, -0.25, 0.0]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": [[1, 2, 3]]}, 400, "input", "unsupported_value"),
        ({"input": [1, 2, 3]}, 400, "input", "unsupported_value"),
        ({"input": []}, 400, "input", "invalid_value"),
        ({"input": ["fine", ""]}, 400, "input[1]", "invalid_field"),
        ({"input": ""}, 400, "input", "invalid_field"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
        ({"input": "x", "dimensions": 128}, 400, "dimensions", "unsupported_value"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model", "model_not_found"),
    ],
)
async def test_embedding_errors_name_the_parameter(
    body: dict[str, Any], status: int, param: str, code: str
) -> None:
    api = Api(FakeJobs())
    async with api.client() as http:
        reply = await http.post("/v1/embeddings", json=body)
    assert reply.status_code == status, reply.text
    assert (reply.json()["error"]["param"], reply.json()["error"]["code"]) == (param, code)


# --- auth -----------------------------------------------------------------------------------


async def test_with_keys_configured_every_route_needs_a_valid_bearer_key() -> None:
    api = Api(FakeJobs(), keys=["k-one", "k-two"])
    async with api.client() as http:
        missing = await http.get("/v1/models")
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer k-three"})
        right = await http.get("/v1/models", headers={"Authorization": "Bearer k-two"})
        chat_wrong = await http.post(
            "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer nope"}
        )
    for reply in (missing, wrong, chat_wrong):
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert "k-three" not in wrong.text
    assert right.status_code == 200
    assert api.jobs.drafts == []  # refused before anything was submitted

    async with api.openai(api_key="k-three") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    async with api.openai(api_key="k-one") as client:
        assert len((await client.models.list()).data) == 2


async def test_without_keys_no_authorization_is_needed() -> None:
    api = Api(FakeJobs())
    async with api.client() as http:
        assert (await http.get("/v1/models")).status_code == 200


def test_keys_come_from_the_settings_and_the_keys_file(tmp_path: Any) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nfile-key\n\n  spaced-key  \n")
    keys = load_api_keys(["flag-key", ""], keys_file)
    assert len(keys) == 3
    for key in ("flag-key", "file-key", "spaced-key"):
        keys.check(f"Bearer {key}")
    assert not ApiKeys().enabled


# --- a client that goes away ---------------------------------------------------------------


async def _drive(
    api: Api, body: dict[str, Any], until_sent: int
) -> tuple[list[dict[str, Any]], asyncio.Task[None], asyncio.Event]:
    """Run one request through the raw ASGI interface; the client "goes away"
    (http.disconnect) once ``until_sent`` body messages came back, or when
    the returned event is set."""
    raw = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    request_read = False

    async def receive() -> dict[str, Any]:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if sum(m["type"] == "http.response.body" for m in sent) >= until_sent:
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("hearth", 80),
    }
    task = asyncio.create_task(api.app(scope, receive, send))
    return sent, task, gone


async def test_a_client_leaving_a_stream_cancels_the_job() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT[:4], hang=True))
    sent, task, _ = await _drive(api, chat(stream=True), until_sent=2)  # role chunk and "Hel"
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(api.jobs.cancelled.wait(), 10)
    assert api.jobs.cancels == [(JOB_ID, "client disconnected")]
    assert sent[0]["status"] == 200


async def test_a_client_leaving_while_it_waits_for_a_completion_cancels_the_job() -> None:
    api = Api(FakeJobs([Queued(0)], hang=True))
    sent, task, gone = await _drive(api, chat(), until_sent=99)
    await asyncio.wait_for(api.jobs.watching.wait(), 10)
    gone.set()
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(api.jobs.cancelled.wait(), 10)
    assert api.jobs.cancels == [(JOB_ID, "client disconnected")]
    assert sent[0]["status"] == 499
    assert (
        api.metrics.registry.get_sample_value(
            "hearth_orchestrator_http_requests_total", {"route": "/v1/chat/completions", "status": "499"}
        )
        == 1.0
    )


async def test_a_finished_request_cancels_nothing() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT))
    async with api.client() as http:
        await http.post("/v1/chat/completions", json=chat(stream=True))
        await http.post("/v1/chat/completions", json=chat())
    await api.requests.drain(1.0)
    assert api.jobs.cancels == [] and api.requests.open == 0


# --- tracing and metrics ---------------------------------------------------------------------


async def test_each_request_has_a_server_span_with_the_job_id_and_is_counted() -> None:
    api = Api(FakeJobs(TEXT_SCRIPT))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with api.client(traceparent=traceparent) as http:
        await http.post("/v1/chat/completions", json=chat())
        await http.get("/v1/models/tiny-llama")
        await http.get("/v1/models/nope")

    spans = {span.name: span for span in api.spans.get_finished_spans()}
    completion = spans["POST /v1/chat/completions"]
    assert completion.attributes is not None and completion.attributes[JOB_ID_ATTRIBUTE] == JOB_ID
    assert completion.attributes["http.response.status_code"] == 200
    # The caller's trace continues: the job's trace starts at its HTTP call.
    assert format(completion.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert "GET /v1/models/{model_id:path}" in spans
    sample = api.metrics.registry.get_sample_value
    assert (
        sample("hearth_orchestrator_http_requests_total", {"route": "/v1/chat/completions", "status": "200"})
        == 1
    )
    assert (
        sample(
            "hearth_orchestrator_http_requests_total",
            {"route": "/v1/models/{model_id:path}", "status": "404"},
        )
        == 1
    )
    assert (
        sample(
            "hearth_orchestrator_http_request_duration_seconds_count",
            {"route": "/v1/models/{model_id:path}", "status": "200"},
        )
        == 1
    )


# --- the server ---------------------------------------------------------------------------------


async def test_the_server_serves_on_a_free_port_and_ends_streams_cleanly_at_stop() -> None:
    jobs = FakeJobs(TEXT_SCRIPT[:4], hang=True)
    api = Api(jobs)
    server = HttpApi(api.app, "127.0.0.1:0", api.requests, grace_seconds=0.2)
    address = server.bind()
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            assert (await http.get("/v1/models")).status_code == 200
            async with http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as reply:
                lines = reply.aiter_lines()
                seen = []
                async for line in lines:
                    seen.append(line)
                    if "Hel" in line:
                        break
                stopping = asyncio.create_task(server.stop())
                rest = [line async for line in lines]
        await asyncio.wait_for(stopping, 10)
    finally:
        await server.stop()
        await server.stop()  # twice is fine

    events = sse_data("\n".join(rest))
    assert events[-1]["error"]["code"] == "server_shutting_down"
    assert jobs.cancels == [(JOB_ID, "orchestratord is shutting down")]

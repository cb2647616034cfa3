"""Chat completions: an OpenAI request as a Hearth job, and a job's events as
OpenAI's ``chat.completion`` object or its stream of ``chat.completion.chunk``.

A request becomes one :class:`~orchestratord.domain.validation.JobDraft`
(:func:`chat_request_from_body`). The answer is built from the job's events
(``JobService.watch``): :func:`stream_completion` turns them into server-sent
events as OpenAI sends them, :func:`collect_completion` waits for the end and
builds the whole object. Usage comes from the job's run record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta
from orchestratord.api.openai_http.errors import OpenAIError, from_job_failure
from orchestratord.api.openai_http.job_answers import (
    Begun,
    Broke,
    Discarded,
    Ended,
    Held,
    JobTicket,
    Piece,
    Usage,
    answer_events,
    closing,
    collect_answer,
    run_usage,
)
from orchestratord.api.openai_http.ports import ChatJobs
from orchestratord.api.openai_http.schemas import ChatCompletionBody, MessageBody
from orchestratord.domain.validation import JobDraft

log = logging.getLogger(__name__)

#: Headers that set job fields OpenAI's request has no place for.
PROJECT_HEADER = "X-Hearth-Project"
ROLE_HEADER = "X-Hearth-Role"

#: OpenAI's default temperature, used when a request leaves it out.
DEFAULT_TEMPERATURE = 1.0

_FINISH_REASONS = {"STOP": "stop", "LENGTH": "length", "TOOL_CALLS": "tool_calls"}
_TOOL_CHOICE_WORDS = frozenset({"auto", "none", "required"})

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, converted."""

    draft: JobDraft
    stream: bool
    include_usage: bool
    #: The name the request gave the token limit (max_tokens or
    #: max_completion_tokens), so errors about it name it that way.
    max_tokens_name: str


def chat_request_from_body(body: ChatCompletionBody, headers: Mapping[str, str]) -> ChatRequest:
    """The job a request asks for.

    Raises:
        OpenAIError: 400 naming the parameter for what Hearth cannot do (a
            non-text content part, n other than 1, stop sequences, a
            response_format other than text, logprobs) or a value of the wrong
            shape. Everything else is checked by the job's validation.
    """
    if body.n is not None and body.n != 1:
        raise _unsupported("n", "Only n=1 is supported.")
    if body.stop not in (None, "", []):
        raise _unsupported("stop", "Stop sequences are not supported yet.")
    if body.logprobs:
        raise _unsupported("logprobs", "logprobs are not supported.")
    _check_response_format(body.response_format)
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(
            400,
            "stream_options is only allowed when stream is true.",
            param="stream_options",
            code="invalid_value",
        )
    labels = _labels(body.metadata)
    if body.user and "user" not in labels:
        labels["user"] = body.user
    max_tokens_name = "max_tokens"
    max_tokens = body.max_tokens
    if body.max_completion_tokens is not None:
        max_tokens, max_tokens_name = body.max_completion_tokens, "max_completion_tokens"
    draft = JobDraft(
        messages=tuple(_message(index, message) for index, message in enumerate(body.messages)),
        tools=tuple(_tool(index, tool) for index, tool in enumerate(body.tools or ())),
        tool_choice=_tool_choice(body.tool_choice),
        model=body.model,
        role=headers.get(ROLE_HEADER, "").strip(),
        project_id=headers.get(PROJECT_HEADER, "").strip(),
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        seed=body.seed or 0,
        labels=labels,
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return ChatRequest(draft, body.stream, include_usage, max_tokens_name)


def _unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_parameter")


def _check_response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "text":
        raise _unsupported("response_format", 'Only response_format {"type": "text"} is supported.')


def _labels(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise OpenAIError(400, "metadata must be an object.", param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise OpenAIError(
                400, "metadata values must be strings.", param=f"metadata.{key}", code="invalid_value"
            )
    return dict(metadata)


def _message(index: int, message: MessageBody) -> ChatMessage:
    # "developer" is OpenAI's newer name for the system role.
    role = "system" if message.role == "developer" else message.role
    calls = []
    for number, call in enumerate(message.tool_calls or ()):
        if call.type != "function":
            raise OpenAIError(
                400,
                f"Unsupported tool call type {call.type!r}; only 'function' is supported.",
                param=f"messages[{index}].tool_calls[{number}].type",
                code="invalid_value",
            )
        calls.append(ToolCall(call.id, call.function.name, call.function.arguments))
    return ChatMessage(
        role=role,
        content=_content(index, message.content),
        tool_calls=tuple(calls),
        tool_call_id=message.tool_call_id or "",
        name=message.name or "",
    )


def _content(index: int, content: Any) -> str:
    """A message's content as text: a string as it is, a list of text parts
    joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(
            400,
            "Message content must be a string or a list of content parts.",
            param=f"messages[{index}].content",
            code="invalid_value",
        )
    texts = []
    for number, part in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        if not isinstance(part, dict):
            raise OpenAIError(400, "A content part must be an object.", param=where, code="invalid_value")
        if part.get("type") != "text":
            raise OpenAIError(
                400,
                f"Content parts of type {part.get('type')!r} are not supported; only 'text' is.",
                param=f"{where}.type",
                code="unsupported_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise OpenAIError(
                400, "A text part needs a string 'text'.", param=f"{where}.text", code="invalid_value"
            )
        texts.append(text)
    return "\n".join(texts)


def _tool(index: int, tool: Any) -> Tool:
    if tool.type != "function":
        raise OpenAIError(
            400,
            f"Unsupported tool type {tool.type!r}; only 'function' is supported.",
            param=f"tools[{index}].type",
            code="invalid_value",
        )
    if tool.function is None:
        raise OpenAIError(
            400,
            "Missing required parameter: 'function'.",
            param=f"tools[{index}].function",
            code="missing_required_parameter",
        )
    function = tool.function
    return Tool(function.name, function.description or "", dict(function.parameters or {}))


def _tool_choice(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if value in _TOOL_CHOICE_WORDS:
            return value
    elif isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
            return str(function["name"])
    raise OpenAIError(
        400,
        "tool_choice must be 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
        code="invalid_value",
    )


# --- answers -------------------------------------------------------------------


class CompletionWriter:
    """Builds the OpenAI objects of one job's answer.

    Args:
        job_id: gives the id, ``chatcmpl-<job_id>``.
        created: the job's creation time (epoch seconds).
        model: the model asked for, until the job says which one serves it.
        include_usage: stream_options.include_usage (chunks carry ``usage``).
    """

    def __init__(self, job_id: str, created: float, model: str, *, include_usage: bool = False) -> None:
        self.id = f"chatcmpl-{job_id}"
        self.created = int(created)
        self.model = model
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }

    def completion(
        self, content: str, tool_calls: list[ToolCall], finish_reason: str, usage: dict[str, int]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content if content or not tool_calls else None,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = [tool_call_json(call) for call in tool_calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage,
        }


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_delta_json(delta: ToolCallDelta, *, first: bool) -> dict[str, Any]:
    """A streamed piece of a tool call as OpenAI sends it: the first piece of
    a call carries its id, type and name; later ones only arguments."""
    if first:
        return {
            "index": delta.index,
            # The same fallback id as ToolCallAssembler, so the assembled call matches.
            "id": delta.id or f"call_{delta.index}",
            "type": "function",
            "function": {"name": delta.name, "arguments": delta.arguments},
        }
    function: dict[str, str] = {"arguments": delta.arguments}
    if delta.name:
        function["name"] = delta.name
    return {"index": delta.index, "function": function}


def finish_reason_of(reason: str) -> str:
    return _FINISH_REASONS.get(reason, reason.lower() or "stop")


def server_sent(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def usage_of(jobs: ChatJobs, job_id: str, input_tokens: int, output_tokens: int) -> dict[str, int]:
    """Usage from the job's run record (what GetJob shows), falling back to
    the counts its events carried, in OpenAI's shape."""
    return usage_json(await run_usage(jobs, job_id, input_tokens, output_tokens))


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


async def stream_completion(
    jobs: ChatJobs, ticket: JobTicket, writer: CompletionWriter
) -> AsyncGenerator[bytes, None]:
    """The job's answer as server-sent events, in OpenAI's order: a chunk with
    the role when the job starts, content and tool-call deltas, a chunk with
    the finish reason, the usage chunk (with include_usage), ``[DONE]``.

    A job that fails or is cancelled ends the stream with an error event
    (``data: {"error": {...}}``) and no ``[DONE]``. While the job waits (a
    model loading) SSE comments keep the connection busy.

    A job that falls back to its next target after part of its answer was
    sent (a fallback event with output_discarded) also ends the stream with
    an error event (code ``output_discarded``), rather than mix two answers;
    the request's end then cancels the job. A fallback before any of the
    answer was sent changes nothing for the client.
    """
    role_delta = {"role": "assistant", "content": ""}
    events = answer_events(jobs, ticket)
    async with closing(events):
        async for event in events:
            if isinstance(event, Begun):
                writer.model = event.model or writer.model
                yield server_sent(writer.chunk(role_delta))
            elif isinstance(event, Piece):
                delta: dict[str, Any] = {}
                if event.text:
                    delta["content"] = event.text
                if event.tool_calls:
                    delta["tool_calls"] = [
                        tool_call_delta_json(piece.delta, first=piece.first) for piece in event.tool_calls
                    ]
                yield server_sent(writer.chunk(delta))
            elif isinstance(event, Discarded):
                if event.after_answer:
                    yield server_sent(from_job_failure("OUTPUT_DISCARDED", event.message).body())
                    return
            elif isinstance(event, Ended):
                yield server_sent(writer.chunk({}, finish_reason_of(event.finish_reason)))
                if writer.include_usage:
                    yield server_sent(writer.usage_chunk(usage_json(event.usage)))
                yield DONE
                return
            elif isinstance(event, Broke):
                yield server_sent(event.error.body())
                return
            elif isinstance(event, Held):
                yield f": waiting ({event.reason})\n\n".encode()


async def collect_completion(jobs: ChatJobs, ticket: JobTicket, writer: CompletionWriter) -> dict[str, Any]:
    """Wait for the job's end; its answer as a ``chat.completion`` object.

    Raises:
        OpenAIError: the job failed (by its reason), was cancelled (409), or
            its events could not be read.
    """
    answer = await collect_answer(jobs, ticket, writer.model)
    writer.model = answer.model
    return writer.completion(
        answer.text, answer.tool_calls, finish_reason_of(answer.finish_reason), usage_json(answer.usage)
    )

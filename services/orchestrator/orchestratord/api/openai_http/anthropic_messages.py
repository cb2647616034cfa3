"""The Anthropic Messages API (``POST /v1/messages``) over Hearth jobs: a
request as a :class:`~orchestratord.domain.validation.JobDraft`, a job's
answer (:mod:`job_answers`) as Anthropic's ``message`` object or its stream of
server-sent events, and errors in Anthropic's shape.

The conversation maps onto Hearth's (``hearth.chat``): the top-level
``system`` and system-role entries become system messages, text blocks the
message's content, an assistant's ``tool_use`` blocks its tool calls (input
as JSON text), a user's ``tool_result`` blocks tool messages answering them
(ahead of the user's text, as Anthropic orders them). Thinking blocks are
dropped; image and document blocks become a placeholder, since no engine here
takes them. Unknown fields are ignored.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hearth.chat import ChatMessage, Tool, ToolCall
from hearth.runtime import ModelConfig
from orchestratord.api.openai_http.agent_jobs import (
    agent_of,
    conversation_paths,
    count_prompt_tokens,
    model_and_labels,
    token_ceiling,
)
from orchestratord.api.openai_http.errors import OpenAIError, from_job_failure, openai_param
from orchestratord.api.openai_http.job_answers import (
    STOP_SEQUENCE,
    Answer,
    AnswerEvent,
    Begun,
    Broke,
    Discarded,
    Ended,
    Held,
    Piece,
)
from orchestratord.api.openai_http.schemas import (
    AnthropicMessageBody,
    AnthropicToolBody,
    CountTokensBody,
    MessagesBody,
)
from orchestratord.domain.validation import JobDraft

log = logging.getLogger(__name__)

PROJECT_HEADER = "X-Hearth-Project"
ROLE_HEADER = "X-Hearth-Role"
#: Anthropic's default temperature.
DEFAULT_TEMPERATURE = 1.0
#: What an image or document block becomes.
OMITTED_ATTACHMENT = "[{kind} omitted: this server takes text only]"

_STOP_REASONS = {
    "STOP": "end_turn",
    "LENGTH": "max_tokens",
    "TOOL_CALLS": "tool_use",
    STOP_SEQUENCE: "stop_sequence",
}
#: HTTP status -> Anthropic's error type.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_SPEC_MESSAGE = re.compile(r"^spec\.messages\[(\d+)\](.*)$")


# --- errors --------------------------------------------------------------------


def anthropic_error_body(error: OpenAIError) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def anthropic_error_event(error: OpenAIError) -> bytes:
    return event_bytes("error", anthropic_error_body(error))


def event_bytes(name: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes them: ``event:`` then ``data:``."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {payload}\n\n".encode()


# --- requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A Messages request, converted."""

    draft: JobDraft
    stream: bool
    stop_sequences: tuple[str, ...]
    #: The model the request named (the answer names the one that served it).
    model: str
    #: Hearth message index -> the request part it came from, for error params.
    origins: tuple[str, ...]

    def param_of(self, field: str) -> str | None:
        """A job field as the request part it came from:
        ``spec.messages[3].content`` -> ``messages[1].content[2]``."""
        found = _SPEC_MESSAGE.match(field)
        if found and int(found.group(1)) < len(self.origins):
            return self.origins[int(found.group(1))] + (
                found.group(2) if found.group(2) in ("", ".role") else ""
            )
        if field == "spec.tool_choice":
            return "tool_choice"
        param = openai_param(field)
        return param.replace("function.parameters", "input_schema") if param else None


def messages_request_from_body(
    body: MessagesBody, headers: Mapping[str, str], models: Sequence[ModelConfig]
) -> MessagesRequest:
    """The job a Messages request asks for.

    Raises:
        OpenAIError: 400 naming the part that is not of a shape this API takes.
    """
    messages, origins = conversation(body.system, body.messages)
    tools = _tools(body.tools)
    model, labels = model_and_labels(body.model, models)
    labels.update(_labels(body.metadata))
    stop_sequences = tuple(s for s in body.stop_sequences or () if s)
    draft = JobDraft(
        messages=tuple(messages),
        tools=tuple(tools),
        tool_choice=_tool_choice(body.tool_choice) if tools or body.tool_choice else "",
        model=model,
        role=headers.get(ROLE_HEADER, "").strip(),
        project_id=headers.get(PROJECT_HEADER, "").strip(),
        agent=agent_of(headers),
        max_tokens=token_ceiling(body.max_tokens, messages, tools, models),
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        labels=labels,
        paths=conversation_paths(messages),
    )
    return MessagesRequest(draft, body.stream, stop_sequences, body.model, tuple(origins))


def count_tokens(body: CountTokensBody) -> int:
    """``input_tokens`` of /v1/messages/count_tokens: the router's estimate
    for the conversation and tools (about four characters a token; the
    serving model's tokenizer is only known once a job runs)."""
    messages, _ = conversation(body.system, body.messages)
    return count_prompt_tokens(messages, _tools(body.tools))


def conversation(system: Any, entries: Sequence[AnthropicMessageBody]) -> tuple[list[ChatMessage], list[str]]:
    """The Hearth conversation of a request, and where each message came from."""
    messages: list[ChatMessage] = []
    origins: list[str] = []
    if system is not None:
        text = _text_of(system, "system")
        if text.strip():
            messages.append(ChatMessage("system", text))
            origins.append("system")
    for index, entry in enumerate(entries):
        where = f"messages[{index}]"
        if entry.role == "system":
            messages.append(ChatMessage("system", _text_of(entry.content, f"{where}.content")))
            origins.append(where)
        elif entry.role == "assistant":
            messages.append(_assistant(entry.content, where))
            origins.append(where)
        elif entry.role == "user":
            for message, origin in _user(entry.content, where):
                messages.append(message)
                origins.append(origin)
        else:
            raise OpenAIError(
                400,
                f"Unexpected role {entry.role!r}: messages are from user, assistant or system.",
                param=f"{where}.role",
                code="invalid_value",
            )
    return messages, origins


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise OpenAIError(
            400, "content must be a string or a list of content blocks.", param=where, code="invalid_value"
        )
    return content


def _block_text(block: Mapping[str, Any], where: str) -> str | None:
    """A block's text: text blocks' text, a placeholder for attachments,
    None for blocks that carry none (thinking)."""
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise OpenAIError(
                400, "A text block needs a string 'text'.", param=f"{where}.text", code="invalid_value"
            )
        return text
    if kind in ("image", "document", "search_result"):
        return OMITTED_ATTACHMENT.format(kind=kind)
    if kind in ("thinking", "redacted_thinking"):
        return None
    raise OpenAIError(
        400,
        f"Content blocks of type {kind!r} are not supported here.",
        param=f"{where}.type",
        code="invalid_value",
    )


def _text_of(content: Any, where: str) -> str:
    texts = []
    for number, block in enumerate(_blocks(content, where)):
        text = _block_text(block, f"{where}[{number}]" if not isinstance(content, str) else where)
        if text is not None:
            texts.append(text)
    return "\n".join(texts)


def _assistant(content: Any, where: str) -> ChatMessage:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for number, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{number}]"
        if block.get("type") == "tool_use":
            calls.append(_tool_use(block, at))
        elif (text := _block_text(block, at)) is not None:
            texts.append(text)
    return ChatMessage("assistant", "\n".join(texts), tool_calls=tuple(calls))


def _tool_use(block: Mapping[str, Any], where: str) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise OpenAIError(400, "A tool_use block needs an 'id'.", param=f"{where}.id", code="invalid_value")
    if not isinstance(name, str) or not name:
        raise OpenAIError(
            400, "A tool_use block needs a 'name'.", param=f"{where}.name", code="invalid_value"
        )
    if not isinstance(arguments, dict):
        raise OpenAIError(
            400, "A tool_use input must be an object.", param=f"{where}.input", code="invalid_value"
        )
    return ToolCall(call_id, name, json.dumps(arguments, ensure_ascii=False))


def _user(content: Any, where: str) -> list[tuple[ChatMessage, str]]:
    out: list[tuple[ChatMessage, str]] = []
    texts: list[str] = []
    first_text = ""
    for number, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{number}]" if not isinstance(content, str) else f"{where}.content"
        if block.get("type") == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise OpenAIError(
                    400,
                    "A tool_result block needs a 'tool_use_id'.",
                    param=f"{at}.tool_use_id",
                    code="invalid_value",
                )
            result = _text_of(block.get("content"), f"{at}.content")
            if block.get("is_error"):
                result = f"[error] {result}"
            out.append((ChatMessage("tool", result, tool_call_id=call_id), at))
        elif (text := _block_text(block, at)) is not None:
            texts.append(text)
            first_text = first_text or at
    if texts or not out:
        out.append((ChatMessage("user", "\n".join(texts)), f"{where}.content" if not out else first_text))
    return out


def _tools(tools: Sequence[AnthropicToolBody] | None) -> list[Tool]:
    """Client tools; server tools (a versioned ``type`` such as
    web_search_20250305) run at Anthropic and are left out."""
    return [
        Tool(tool.name, tool.description or "", dict(tool.input_schema or {}))
        for tool in tools or ()
        if tool.type in (None, "custom")
    ]


def _tool_choice(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("auto", "none"):
            return str(kind)
        if kind == "any":
            return "required"
        if kind == "tool" and isinstance(value.get("name"), str) and value["name"]:
            return str(value["name"])
    raise OpenAIError(
        400,
        'tool_choice must be {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}.',
        param="tool_choice",
        code="invalid_value",
    )


def _labels(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise OpenAIError(400, "metadata must be an object.", param="metadata", code="invalid_value")
    return {str(k): v for k, v in metadata.items() if isinstance(v, str) and v}


# --- answers -------------------------------------------------------------------


def stop_reason_of(finish_reason: str) -> str:
    return _STOP_REASONS.get(finish_reason, "end_turn")


def message_id(job_id: str) -> str:
    return "msg_" + job_id.replace("-", "")


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as tool_use input (an object; text that is
    not one is kept whole under ``arguments``)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value
    log.warning("a tool call's arguments are not a JSON object; passing them as text")
    return {"arguments": arguments}


def usage_json(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_json(job_id: str, answer: Answer) -> dict[str, Any]:
    """The whole answer as Anthropic's ``message`` object."""
    content: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        content.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}
        )
    return {
        "id": message_id(job_id),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop_reason_of(answer.finish_reason),
        "stop_sequence": answer.stop_sequence or None,
        "usage": usage_json(answer.usage.input_tokens, answer.usage.output_tokens),
    }


async def stream_message(
    events: AsyncGenerator[AnswerEvent, None], job_id: str, model: str
) -> AsyncGenerator[bytes, None]:
    """The job's answer as Anthropic's stream: ``message_start`` when the job
    starts (``ping`` events while it waits, and one after the start), then per
    content block ``content_block_start``, its deltas (``text_delta``,
    ``input_json_delta``) and ``content_block_stop``, then ``message_delta``
    with the stop reason and usage and ``message_stop``. A failure ends it
    with an ``error`` event; so does a fallback after part of the answer was
    sent (it cannot be taken back)."""
    started = False
    block = -1  # the open block's index, -1: none
    block_kind = ""
    tool_blocks: dict[int, int] = {}  # tool call index -> block index
    next_block = 0
    try:
        async for event in events:
            if isinstance(event, Held):
                yield event_bytes("ping", {"type": "ping"})
                continue
            if not started and isinstance(event, Begun | Piece | Ended):
                started = True
                input_tokens = 0
                if isinstance(event, Begun):
                    model, input_tokens = event.model or model, event.input_tokens
                yield event_bytes("message_start", _message_start(job_id, model, input_tokens))
                yield event_bytes("ping", {"type": "ping"})
            if isinstance(event, Piece):
                if event.text:
                    if block_kind != "text":
                        if block >= 0:
                            yield _block_stop(block)
                        block, block_kind, next_block = next_block, "text", next_block + 1
                        yield _block_start(block, {"type": "text", "text": ""})
                    yield _delta(block, {"type": "text_delta", "text": event.text})
                for piece in event.tool_calls:
                    delta = piece.delta
                    if piece.first or delta.index not in tool_blocks:
                        if block >= 0:
                            yield _block_stop(block)
                        block, block_kind, next_block = next_block, "tool", next_block + 1
                        tool_blocks[delta.index] = block
                        call = {
                            "type": "tool_use",
                            "id": delta.id or f"call_{delta.index}",
                            "name": delta.name,
                            "input": {},
                        }
                        yield _block_start(block, call)
                    if delta.arguments:
                        yield _delta(
                            tool_blocks[delta.index],
                            {"type": "input_json_delta", "partial_json": delta.arguments},
                        )
            elif isinstance(event, Discarded) and event.after_answer:
                yield anthropic_error_event(from_job_failure("OUTPUT_DISCARDED", event.message))
                return
            elif isinstance(event, Ended):
                if not tool_blocks:
                    # An engine that gave its calls only whole, at the end.
                    for whole in event.tool_calls:
                        if block >= 0:
                            yield _block_stop(block)
                        block, block_kind, next_block = next_block, "tool", next_block + 1
                        yield _block_start(
                            block, {"type": "tool_use", "id": whole.id, "name": whole.name, "input": {}}
                        )
                        if whole.arguments:
                            yield _delta(block, {"type": "input_json_delta", "partial_json": whole.arguments})
                if block >= 0:
                    yield _block_stop(block)
                ending = {
                    "stop_reason": stop_reason_of(event.finish_reason),
                    "stop_sequence": event.stop_sequence or None,
                }
                usage = usage_json(event.usage.input_tokens, event.usage.output_tokens)
                yield event_bytes("message_delta", {"type": "message_delta", "delta": ending, "usage": usage})
                yield event_bytes("message_stop", {"type": "message_stop"})
                return
            elif isinstance(event, Broke):
                yield anthropic_error_event(event.error)
                return
    finally:
        await events.aclose()


def _message_start(job_id: str, model: str, input_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": message_id(job_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_json(input_tokens, 0),
        },
    }


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return event_bytes(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
    )


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return event_bytes("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index: int) -> bytes:
    return event_bytes("content_block_stop", {"type": "content_block_stop", "index": index})

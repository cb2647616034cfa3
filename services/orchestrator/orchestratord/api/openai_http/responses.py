"""The OpenAI Responses API (``POST /v1/responses``) over Hearth jobs: a
request (with the stored conversation its ``previous_response_id`` names) as
a :class:`~orchestratord.domain.validation.JobDraft`, and a job's answer
(:mod:`job_answers`) as a ``response`` object or its stream of typed events.

Input items map onto Hearth's conversation (``hearth.chat``): ``message``
items (and bare ``{"role", "content"}`` ones) by role (``developer`` is
system), ``function_call`` items join the assistant message before them as
its tool calls, ``function_call_output`` items are tool messages; Codex's
``custom_tool_call`` / ``local_shell_call`` and their outputs likewise (input
as ``{"input": ...}``, the shell action as the arguments). ``reasoning`` and
``item_reference`` items carry nothing a model here can use and are skipped;
``instructions`` is a system message first. Function tools are the job's
tools; hosted tools (web_search, file_search, local_shell, custom) are left
out. Unknown fields are ignored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hearth.chat import ChatMessage, Tool, ToolCall
from hearth.runtime import ModelConfig
from orchestratord.api.openai_http.agent_jobs import (
    agent_of,
    conversation_paths,
    model_and_labels,
    token_ceiling,
)
from orchestratord.api.openai_http.errors import OpenAIError, from_job_failure, openai_param
from orchestratord.api.openai_http.job_answers import (
    Answer,
    AnswerEvent,
    Begun,
    Broke,
    Discarded,
    Ended,
    Held,
    Piece,
    Usage,
)
from orchestratord.api.openai_http.ports import StoredResponse
from orchestratord.api.openai_http.schemas import ResponsesBody
from orchestratord.domain.validation import JobDraft

PROJECT_HEADER = "X-Hearth-Project"
ROLE_HEADER = "X-Hearth-Role"
DEFAULT_TEMPERATURE = 1.0
OMITTED_ATTACHMENT = "[{kind} omitted: this server takes text only]"

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text"})
_ATTACHMENTS = frozenset({"input_image", "input_file", "input_audio"})
_SKIPPED_ITEMS = frozenset({"reasoning", "item_reference", "web_search_call", "file_search_call"})
_CALL_ITEMS = frozenset({"function_call", "custom_tool_call", "local_shell_call"})
_OUTPUT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output", "local_shell_call_output"})


def response_id(job_id: str) -> str:
    return "resp_" + job_id.replace("-", "")


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A Responses request, converted."""

    draft: JobDraft
    stream: bool
    store: bool
    #: The new conversation to store with the answer: the previous
    #: response's, then this request's input (instructions left out).
    history: tuple[ChatMessage, ...]
    #: What the response object echoes back.
    echo: Mapping[str, Any]

    def param_of(self, field: str) -> str | None:
        if field.startswith("spec.messages"):
            return "input"
        if field == "spec.max_tokens":
            return "max_output_tokens"
        if field.startswith("spec.tools"):
            return "tools"
        return openai_param(field)


def responses_request_from_body(
    body: ResponsesBody,
    headers: Mapping[str, str],
    models: Sequence[ModelConfig],
    previous: StoredResponse | None,
) -> ResponsesRequest:
    """The job a Responses request asks for (``previous``: the stored
    response its previous_response_id names, already loaded).

    Raises:
        OpenAIError: 400 naming the part that is not of a shape this API takes.
    """
    _check_text_format(body.text)
    history = list(previous.messages if previous is not None else ()) + input_messages(body.input)
    if not history:
        raise OpenAIError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    messages = ([ChatMessage("system", body.instructions)] if body.instructions else []) + history
    tools = function_tools(body.tools)
    model, labels = model_and_labels(body.model, models)
    labels.update(_labels(body.metadata))
    if body.user and "user" not in labels:
        labels["user"] = body.user
    draft = JobDraft(
        messages=tuple(messages),
        tools=tuple(tools),
        tool_choice=_tool_choice(body.tool_choice) if tools or body.tool_choice else "",
        model=model,
        role=headers.get(ROLE_HEADER, "").strip(),
        project_id=headers.get(PROJECT_HEADER, "").strip(),
        agent=agent_of(headers),
        max_tokens=token_ceiling(body.max_output_tokens, messages, tools, models),
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        labels=labels,
        paths=conversation_paths(messages),
    )
    echo = {
        "model": body.model,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "temperature": draft.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": [t for t in body.tools or () if isinstance(t, dict) and t.get("type") == "function"],
        "metadata": dict(body.metadata) if isinstance(body.metadata, dict) else {},
        "user": body.user,
        "store": body.store is not False,
    }
    return ResponsesRequest(draft, body.stream, body.store is not False, tuple(history), echo)


def input_messages(value: Any) -> list[ChatMessage]:
    """The conversation of a request's ``input``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [ChatMessage("user", value)]
    if not isinstance(value, list):
        raise OpenAIError(
            400, "input must be a string or a list of items.", param="input", code="invalid_value"
        )
    out: list[ChatMessage] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise OpenAIError(400, "An input item must be an object.", param=where, code="invalid_value")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = _ROLES.get(str(item.get("role", "")))
            if role is None:
                raise OpenAIError(
                    400,
                    f"Unexpected role {item.get('role')!r}: one of user, assistant, system, developer.",
                    param=f"{where}.role",
                    code="invalid_value",
                )
            out.append(ChatMessage(role, _text_of(item.get("content"), f"{where}.content")))
        elif kind in _CALL_ITEMS:
            call = _call(item, str(kind), where)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                out[-1] = ChatMessage("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                out.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif kind in _OUTPUT_ITEMS:
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise OpenAIError(
                    400, "A call output needs a 'call_id'.", param=f"{where}.call_id", code="invalid_value"
                )
            out.append(
                ChatMessage("tool", _text_of(item.get("output"), f"{where}.output"), tool_call_id=call_id)
            )
        elif kind in _SKIPPED_ITEMS:
            continue
        else:
            raise OpenAIError(
                400,
                f"Input items of type {kind!r} are not supported.",
                param=f"{where}.type",
                code="invalid_value",
            )
    return out


def _call(item: Mapping[str, Any], kind: str, where: str) -> ToolCall:
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise OpenAIError(
            400, "A call item needs a 'call_id'.", param=f"{where}.call_id", code="invalid_value"
        )
    if kind == "local_shell_call":
        return ToolCall(call_id, "local_shell", json.dumps(item.get("action") or {}, ensure_ascii=False))
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise OpenAIError(400, "A call item needs a 'name'.", param=f"{where}.name", code="invalid_value")
    if kind == "custom_tool_call":
        return ToolCall(call_id, name, json.dumps({"input": str(item.get("input", ""))}, ensure_ascii=False))
    arguments = item.get("arguments", "")
    if not isinstance(arguments, str):
        raise OpenAIError(
            400, "arguments must be JSON text.", param=f"{where}.arguments", code="invalid_value"
        )
    return ToolCall(call_id, name, arguments)


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(
            400, "content must be a string or a list of parts.", param=where, code="invalid_value"
        )
    texts = []
    for number, part in enumerate(content):
        if not isinstance(part, dict):
            raise OpenAIError(
                400, "A content part must be an object.", param=f"{where}[{number}]", code="invalid_value"
            )
        kind = part.get("type")
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in _ATTACHMENTS:
            texts.append(OMITTED_ATTACHMENT.format(kind=str(kind).removeprefix("input_")))
        else:
            raise OpenAIError(
                400,
                f"Content parts of type {kind!r} are not supported.",
                param=f"{where}[{number}].type",
                code="invalid_value",
            )
    return "\n".join(texts)


def function_tools(tools: Sequence[Any] | None) -> list[Tool]:
    out = []
    for index, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue  # hosted and custom tools: nothing a model here can run
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise OpenAIError(
                400, "A function tool needs a 'name'.", param=f"tools[{index}].name", code="invalid_value"
            )
        parameters = tool.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise OpenAIError(
                400,
                "parameters must be a JSON Schema object.",
                param=f"tools[{index}].parameters",
                code="invalid_value",
            )
        out.append(Tool(name, str(tool.get("description") or ""), parameters))
    return out


def _tool_choice(value: Any) -> str:
    if value is None:
        return ""
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return str(value["name"])
    raise OpenAIError(
        400,
        "tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
        param="tool_choice",
        code="invalid_value",
    )


def _check_text_format(text: Any) -> None:
    if not isinstance(text, dict) or text.get("format") is None:
        return
    fmt = text["format"]
    if not isinstance(fmt, dict) or fmt.get("type") != "text":
        raise OpenAIError(
            400,
            'Only text.format {"type": "text"} is supported.',
            param="text.format",
            code="unsupported_parameter",
        )


def _labels(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise OpenAIError(
            400, "metadata must be an object of strings.", param="metadata", code="invalid_value"
        )
    return dict(metadata)


# --- answers -------------------------------------------------------------------


@dataclass(slots=True)
class ResponseWriter:
    """Builds the response objects of one job's answer."""

    job_id: str
    created: float
    echo: Mapping[str, Any]
    model: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.model = str(self.echo.get("model") or "")

    @property
    def id(self) -> str:
        return response_id(self.job_id)

    def message_item_id(self) -> str:
        return "msg_" + self.job_id.replace("-", "")

    def call_item_id(self, index: int) -> str:
        return f"fc_{self.job_id.replace('-', '')}_{index}"

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None = None,
        *,
        incomplete: str = "",
        error: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(self.created),
            "status": status,
            "error": dict(error) if error else None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            **self.echo,
            "model": self.model,
            "output": output,
            "reasoning": {"effort": None, "summary": None},
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "usage": _usage_json(usage) if usage is not None else None,
        }

    def output_items(self, text: str, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        items = []
        if text or not calls:
            items.append(self.message_item(text, "completed"))
        for index, call in enumerate(calls):
            items.append(self.call_item(index, call.id, call.name, call.arguments, "completed"))
        return items

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
        return {
            "id": self.message_item_id(),
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def call_item(self, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
        return {
            "id": self.call_item_id(index),
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }

    def final(self, answer: Answer) -> dict[str, Any]:
        self.model = answer.model or self.model
        incomplete = "max_output_tokens" if answer.finish_reason == "LENGTH" else ""
        return self.response(
            "incomplete" if incomplete else "completed",
            self.output_items(answer.text, answer.tool_calls),
            answer.usage,
            incomplete=incomplete,
        )


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def answer_message(answer: Answer) -> ChatMessage:
    """The answer as the assistant message the stored conversation ends with."""
    return ChatMessage("assistant", answer.text, tool_calls=tuple(answer.tool_calls))


def error_event(error: OpenAIError, sequence: int = 0) -> bytes:
    return _event(
        {"type": "error", "code": error.code, "message": error.message, "param": error.param}, sequence
    )


def _event(data: dict[str, Any], sequence: int) -> bytes:
    data = {**data, "sequence_number": sequence}
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {data['type']}\ndata: {payload}\n\n".encode()


async def stream_response(
    events: AsyncGenerator[AnswerEvent, None],
    writer: ResponseWriter,
    finish: Callable[[Answer, dict[str, Any]], Awaitable[None]],
) -> AsyncGenerator[bytes, None]:
    """The job's answer as the Responses API streams it: ``response.created``
    and ``response.in_progress``, then per output item
    ``response.output_item.added``, its deltas (``response.output_text.delta``
    with ``response.content_part.added``/``.done`` around them, or
    ``response.function_call_arguments.delta``), its ``.done`` events and
    ``response.output_item.done``, then ``response.completed`` with the whole
    response (after ``finish`` stored it). A failure ends the stream with an
    ``error`` event."""
    sequence = 0

    def event(data: dict[str, Any]) -> bytes:
        nonlocal sequence
        out = _event(data, sequence)
        sequence += 1
        return out

    texts: list[str] = []
    calls: dict[int, list[str]] = {}  # tool index -> [call_id, name, arguments]
    output: list[dict[str, Any]] = []
    open_item = ""  # "message", "call:<index>" or ""
    begun = writer.response("in_progress", [])
    yield event({"type": "response.created", "response": begun})
    yield event({"type": "response.in_progress", "response": begun})

    def close_item() -> list[bytes]:
        nonlocal open_item
        out: list[bytes] = []
        position = len(output)
        if open_item == "message":
            text = "".join(texts)
            item_id = writer.message_item_id()
            part = {"type": "output_text", "text": text, "annotations": []}
            common = {"item_id": item_id, "output_index": position, "content_index": 0}
            out.append(event({"type": "response.output_text.done", **common, "text": text, "logprobs": []}))
            out.append(event({"type": "response.content_part.done", **common, "part": part}))
            item = writer.message_item(text, "completed")
            out.append(event({"type": "response.output_item.done", "output_index": position, "item": item}))
            output.append(item)
        elif open_item.startswith("call:"):
            index = int(open_item.removeprefix("call:"))
            call_id, name, arguments = calls[index]
            item = writer.call_item(index, call_id, name, arguments, "completed")
            out.append(
                event(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": item["id"],
                        "output_index": position,
                        "arguments": arguments,
                    }
                )
            )
            out.append(event({"type": "response.output_item.done", "output_index": position, "item": item}))
            output.append(item)
        open_item = ""
        return out

    try:
        async for answer_event in events:
            if isinstance(answer_event, Begun):
                writer.model = answer_event.model or writer.model
            elif isinstance(answer_event, Held):
                yield f": waiting ({answer_event.reason})\n\n".encode()
            elif isinstance(answer_event, Piece):
                if answer_event.text:
                    if open_item != "message":
                        for chunk in close_item():
                            yield chunk
                        open_item = "message"
                        item = writer.message_item("", "in_progress")
                        position = len(output)
                        yield event(
                            {"type": "response.output_item.added", "output_index": position, "item": item}
                        )
                        yield event(
                            {
                                "type": "response.content_part.added",
                                "item_id": item["id"],
                                "output_index": position,
                                "content_index": 0,
                                "part": {"type": "output_text", "text": "", "annotations": []},
                            }
                        )
                    texts.append(answer_event.text)
                    yield event(
                        {
                            "type": "response.output_text.delta",
                            "item_id": writer.message_item_id(),
                            "output_index": len(output),
                            "content_index": 0,
                            "delta": answer_event.text,
                            "logprobs": [],
                        }
                    )
                for piece in answer_event.tool_calls:
                    delta = piece.delta
                    if delta.index not in calls:
                        for chunk in close_item():
                            yield chunk
                        calls[delta.index] = [delta.id or f"call_{delta.index}", delta.name, ""]
                        open_item = f"call:{delta.index}"
                        item = writer.call_item(
                            delta.index, calls[delta.index][0], delta.name, "", "in_progress"
                        )
                        yield event(
                            {"type": "response.output_item.added", "output_index": len(output), "item": item}
                        )
                    if delta.arguments:
                        calls[delta.index][2] += delta.arguments
                        yield event(
                            {
                                "type": "response.function_call_arguments.delta",
                                "item_id": writer.call_item_id(delta.index),
                                "output_index": len(output),
                                "delta": delta.arguments,
                            }
                        )
            elif isinstance(answer_event, Discarded) and answer_event.after_answer:
                yield error_event(from_job_failure("OUTPUT_DISCARDED", answer_event.message), sequence)
                return
            elif isinstance(answer_event, Ended):
                for chunk in close_item():
                    yield chunk
                tool_calls = list(answer_event.tool_calls) or [ToolCall(*calls[i]) for i in sorted(calls)]
                answer = Answer(
                    writer.model, "".join(texts), tool_calls, answer_event.finish_reason, answer_event.usage
                )
                final = writer.final(answer)
                if not calls and answer_event.tool_calls:
                    # An engine that gave its calls only whole: send their items now.
                    for item in final["output"]:
                        if item["type"] == "function_call":
                            yield event(
                                {
                                    "type": "response.output_item.added",
                                    "output_index": len(output),
                                    "item": item,
                                }
                            )
                            yield event(
                                {
                                    "type": "response.output_item.done",
                                    "output_index": len(output),
                                    "item": item,
                                }
                            )
                            output.append(item)
                try:
                    await finish(answer, final)
                except OpenAIError as err:
                    yield error_event(err, sequence)
                    return
                kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
                yield event({"type": kind, "response": final})
                return
            elif isinstance(answer_event, Broke):
                yield error_event(answer_event.error, sequence)
                return
    finally:
        await events.aclose()

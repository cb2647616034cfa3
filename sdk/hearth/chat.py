"""Conversations, tools and tool calls, as every part of Hearth sees them.

A job is either a bare prompt or a conversation: a list of
:class:`ChatMessage`, optionally with :class:`Tool` definitions the model may
call. Engines stream tool calls in pieces (:class:`ToolCallDelta`); a
:class:`ToolCallAssembler` joins the pieces into complete :class:`ToolCall`
values. The shapes follow the OpenAI chat format, which the OpenAI-compatible
front door speaks and every engine can express.

This module is pure (dataclasses and the proto conversions); the proto
messages live in ``hearth.api.chat.v1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import re2

from hearth.api.chat.v1 import chat_pb2

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
#: The checks of the tool-call conformance probe (``hearth.probe``), in order.
TOOL_CONFORMANCE_CHECKS: tuple[str, ...] = (
    "TOOL_CALL_MADE",
    "ARGUMENTS_PARSE",
    "ARGUMENTS_MATCH_SCHEMA",
    "STREAM_ASSEMBLES",
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete call of a tool by the model."""

    id: str
    name: str
    #: The arguments as the model wrote them: JSON text, not validated here.
    arguments: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolCall:
        return cls(str(data.get("id", "")), str(data.get("name", "")), str(data.get("arguments", "")))


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call; pieces with the same ``index`` join
    into one call (id and name usually come first, arguments in fragments)."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation."""

    role: str
    content: str = ""
    #: Calls an assistant message made.
    tool_calls: tuple[ToolCall, ...] = ()
    #: For a tool message: the id of the call it answers.
    tool_call_id: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.to_json() for call in self.tool_calls]
        if self.tool_call_id:
            data["tool_call_id"] = self.tool_call_id
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatMessage:
        return cls(
            role=str(data.get("role", "")),
            content=str(data.get("content") or ""),
            tool_calls=tuple(ToolCall.from_json(c) for c in data.get("tool_calls") or ()),
            tool_call_id=str(data.get("tool_call_id", "")),
            name=str(data.get("name", "")),
        )


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    #: The parameters' JSON Schema (an object schema).
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tool:
        return cls(
            str(data.get("name", "")), str(data.get("description", "")), dict(data.get("parameters") or {})
        )

    def openai_json(self) -> dict[str, Any]:
        """The tool in the OpenAI chat-completions request shape."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters) or {"type": "object", "properties": {}},
            },
        }


class ToolCallAssembler:
    """Joins streamed :class:`ToolCallDelta` pieces into complete calls.

    Feed every delta with :meth:`add`; :meth:`calls` gives the calls so far in
    index order. A call's id and name are taken from the first piece that
    carries them; argument fragments are concatenated in arrival order.
    """

    def __init__(self) -> None:
        self._ids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._arguments: dict[int, list[str]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        index = delta.index
        self._arguments.setdefault(index, [])
        if delta.id and not self._ids.get(index):
            self._ids[index] = delta.id
        if delta.name and not self._names.get(index):
            self._names[index] = delta.name
        if delta.arguments:
            self._arguments[index].append(delta.arguments)

    def extend(self, deltas: Iterable[ToolCallDelta]) -> None:
        for delta in deltas:
            self.add(delta)

    def __bool__(self) -> bool:
        return bool(self._arguments)

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(self._ids.get(i, "") or f"call_{i}", self._names.get(i, ""), "".join(self._arguments[i]))
            for i in sorted(self._arguments)
        ]


def parse_tool_parameters(text: str) -> dict[str, Any]:
    """A tool's parameters_json as a dict; ValueError when it is not a JSON
    object (or nests too deep for the parser)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("the parameters nest too deep") from None
    if not isinstance(value, dict):
        raise ValueError("the parameters must be a JSON Schema object")
    return value


def render_plain(messages: Sequence[ChatMessage]) -> str:
    """A conversation as plain text, for a model without a chat template and
    for token estimates: one ``role: content`` block per message, then the
    assistant's turn."""
    blocks = []
    for message in messages:
        text = message.content
        if message.tool_calls:
            calls = "; ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
            text = f"{text}\n[tool calls: {calls}]" if text else f"[tool calls: {calls}]"
        blocks.append(f"{message.role}: {text}")
    blocks.append("assistant:")
    return "\n\n".join(blocks)


# --- proto conversions -----------------------------------------------------


def tool_call_to_proto(call: ToolCall) -> chat_pb2.ToolCall:
    return chat_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments)


def tool_call_from_proto(message: chat_pb2.ToolCall) -> ToolCall:
    return ToolCall(message.id, message.name, message.arguments_json)


def delta_to_proto(delta: ToolCallDelta) -> chat_pb2.ToolCallDelta:
    return chat_pb2.ToolCallDelta(
        index=delta.index, id=delta.id, name=delta.name, arguments_delta=delta.arguments
    )


def delta_from_proto(message: chat_pb2.ToolCallDelta) -> ToolCallDelta:
    return ToolCallDelta(message.index, message.id, message.name, message.arguments_delta)


def message_to_proto(message: ChatMessage) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(
        role=message.role,
        content=message.content,
        tool_calls=[tool_call_to_proto(c) for c in message.tool_calls],
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def message_from_proto(message: chat_pb2.ChatMessage) -> ChatMessage:
    return ChatMessage(
        role=message.role,
        content=message.content,
        tool_calls=tuple(tool_call_from_proto(c) for c in message.tool_calls),
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def tool_to_proto(tool: Tool) -> chat_pb2.Tool:
    return chat_pb2.Tool(
        name=tool.name,
        description=tool.description,
        parameters_json=json.dumps(dict(tool.parameters), sort_keys=True) if tool.parameters else "",
    )


def tool_from_proto(message: chat_pb2.Tool) -> Tool:
    """Raises ValueError when parameters_json is not a JSON object."""
    return Tool(message.name, message.description, parse_tool_parameters(message.parameters_json))


def argument_errors(call: ToolCall, tool: Tool) -> tuple[str, str]:
    """What is wrong with a call's arguments against the tool it names, as
    (parse error, schema error), each "" when that check passes: the
    arguments must parse as a JSON object, and the object must validate
    against the tool's parameters schema. The conformance probe grades with
    this, and the dispatcher holds every job's tool calls to it."""
    try:
        arguments = json.loads(call.arguments)
        if not isinstance(arguments, dict):
            raise ValueError(f"a JSON {type(arguments).__name__}, not an object")
    except ValueError as err:
        return f"{err}: {call.arguments[:120]!r}", "the arguments do not parse"
    error = jsonschema.exceptions.best_match(_validator(tool.parameters).iter_errors(arguments))
    return "", error.message if error is not None else ""


def unsafe_pattern(pattern: str) -> str:
    """Why ``pattern`` cannot be used in a tool's schema ("" when it can): it
    must compile in RE2, which matches in time linear in the input, so no
    pattern can make a model's arguments take exponential time to check
    (backreferences and lookaround, which need backtracking, are refused)."""
    try:
        re2.compile(pattern)
    except re2.error as err:
        return f"RE2 cannot compile it in linear time: {err}"
    return ""


def _re2_pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not re2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if re2.search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


#: JSON Schema validation with RE2 for ``pattern`` and ``patternProperties``:
#: linear time whatever pattern a caller sent.
_SafeValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties},
)


def _validator(schema: Mapping[str, Any]) -> Any:
    return _SafeValidator(dict(schema))

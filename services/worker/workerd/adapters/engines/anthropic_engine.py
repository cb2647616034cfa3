"""The ``anthropic`` engine: a model behind Anthropic's Messages API, through
the official ``anthropic`` client.

One generation is one streamed ``/v1/messages`` call. The client retries 429,
408, 409, 5xx and 529 (overloaded) and connection errors up to
``max_retries`` times before the stream opens, honouring ``retry-after-ms`` /
``retry-after`` hints of up to 60 s (otherwise exponential backoff from 0.5 s,
capped at 8 s, with jitter).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final

import anthropic
import httpx

from hearth.chat import ChatMessage, ToolCall, ToolCallAssembler, ToolCallDelta
from hearth.errors import HearthError, InvalidArgument, Unavailable
from workerd.adapters.engines.remote_engine import (
    Emit,
    RemoteChatEngine,
    StreamEnded,
    StreamOpened,
    error_detail,
    upstream_status_error,
    upstream_timeout,
    upstream_unreachable,
)
from workerd.domain.engine import FinishReason, GenerationRequest, ServedModel, TokenDelta

log = logging.getLogger(__name__)

#: Sent when no key is configured (a proxy that needs none); the client insists on one.
_NO_KEY: Final = "no-key"
#: The Messages API's temperature range ends at 1.
_MAX_TEMPERATURE: Final = 1.0
_STOP_REASONS: Final[dict[str, FinishReason]] = {
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}


class AnthropicEngine(RemoteChatEngine):
    """A model behind Anthropic's Messages API (or a compatible proxy).

    start() lists the upstream's models: an unreachable upstream or a refused
    key fails it with an error naming the base URL; a model missing from the
    list (an alias such as ``claude-sonnet-4-5`` is not listed by that name)
    only gets a warning.

    Requests: system messages become the ``system`` parameter; an assistant's
    tool calls become ``tool_use`` blocks and tool messages ``tool_result``
    blocks of a user turn (consecutive turns of one role are merged, as the
    API wants them alternating); tools become ``{name, description,
    input_schema}``; tool_choice "" and "auto" leave the default, "required"
    is ``any``, "none" is ``none``, a name is ``{"type": "tool"}``. The
    temperature is capped at 1 (the API's maximum); the seed is not sent
    (the API has none).

    Stream: each ``text_delta`` is a TokenDelta counted as one token; a
    ``tool_use`` block streams as ToolCallDelta pieces whose index is the
    block's order among the tool_use blocks. ``end_turn`` and
    ``stop_sequence`` finish "stop", ``max_tokens`` "length", ``tool_use``
    "tool_calls"; the counts come from the usage of ``message_start`` and
    ``message_delta`` (cached input tokens included).

    Args:
        served: the model as Hearth names it.
        base_url: the API root without ``/v1``; empty: Anthropic's.
        upstream_model: the model's name at the upstream; defaults to ``served.name``.
        api_key: sent as ``x-api-key``.
        timeout_seconds: longest one generation may take, retries included.
        max_retries: retries of 429/5xx/529/connection errors before the first token.
        connect_timeout_seconds: longest wait for a TCP connection.
        tokenizer: counts tokens; without one a token is estimated per 4 characters.
    """

    kind = "anthropic"

    def __init__(
        self,
        served: ServedModel,
        *,
        base_url: str = "",
        upstream_model: str = "",
        api_key: str | None = None,
        timeout_seconds: float = 600.0,
        max_retries: int = 3,
        connect_timeout_seconds: float = 10.0,
        tokenizer: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(
            served, upstream_model=upstream_model, timeout_seconds=timeout_seconds, tokenizer=tokenizer
        )
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._base_url = base_url
        self._api_key = api_key or None
        self._max_retries = max_retries
        self._connect_timeout_seconds = connect_timeout_seconds
        self._client: anthropic.AsyncAnthropic | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise Unavailable("the anthropic engine is closed", reason="ENGINE_NOT_READY")
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key or _NO_KEY,
                base_url=self._base_url or None,
                timeout=httpx.Timeout(self._timeout_seconds, connect=self._connect_timeout_seconds),
                max_retries=self._max_retries,
            )
        await self._check_upstream()

    async def _list_models(self) -> list[str] | None:
        if self._client is None:
            raise Unavailable("the anthropic engine is not started", reason="ENGINE_NOT_READY")
        try:
            page = await self._client.models.list()
        except anthropic.NotFoundError:
            return None
        return [model.id for model in page.data]

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _not_ready(self) -> HearthError | None:
        problem = super()._not_ready()
        if problem is None and self._client is None:
            problem = Unavailable("the anthropic engine has not started", reason="ENGINE_NOT_READY")
        return problem

    def _upstream(self) -> str:
        return self._base_url or "https://api.anthropic.com"

    # -- one call ---------------------------------------------------------------

    def _build_params(self, request: GenerationRequest) -> dict[str, Any]:
        if request.messages:
            system, messages = anthropic_messages(request.messages)
        else:
            system, messages = "", [{"role": "user", "content": [{"type": "text", "text": request.prompt}]}]
        params: dict[str, Any] = {
            "model": self._upstream_model,
            "max_tokens": request.max_tokens,
            "messages": messages,
            "temperature": min(request.temperature, _MAX_TEMPERATURE),
            "stream": True,
        }
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": dict(tool.parameters) or {"type": "object", "properties": {}},
                }
                for tool in request.tools
            ]
            choice = anthropic_tool_choice(request.tool_choice)
            if choice is not None:
                params["tool_choice"] = choice
        return params

    async def _stream(self, params: dict[str, Any], emit: Emit) -> None:
        client = self._client
        if client is None:
            raise Unavailable("the anthropic engine has no upstream client", reason="ENGINE_NOT_READY")
        stream = await client.messages.create(**params)
        async with stream:
            emit(StreamOpened())
            tool_order: dict[int, int] = {}  # content block index -> tool call index
            assembler = ToolCallAssembler()
            stop_reason: str | None = None
            input_tokens: int | None = None
            output_tokens: int | None = None
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    usage = event.message.usage
                    input_tokens = _input_tokens(usage)
                    output_tokens = usage.output_tokens
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        index = tool_order.setdefault(event.index, len(tool_order))
                        start = json.dumps(block.input) if block.input else ""
                        piece = ToolCallDelta(index, block.id, block.name, start)
                        assembler.add(piece)
                        emit(TokenDelta("", 0, tool_calls=(piece,)))
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta" and delta.text:
                        emit(TokenDelta(delta.text, 1))
                    elif (
                        delta.type == "input_json_delta" and delta.partial_json and event.index in tool_order
                    ):
                        piece = ToolCallDelta(tool_order[event.index], arguments=delta.partial_json)
                        assembler.add(piece)
                        emit(TokenDelta("", 0, tool_calls=(piece,)))
                elif kind == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    usage_delta = event.usage
                    output_tokens = usage_delta.output_tokens
                    if usage_delta.input_tokens is not None:
                        input_tokens = _input_tokens(usage_delta)
        if stop_reason is None:
            raise Unavailable(
                f"the upstream {self._where()} ended the stream without a stop reason",
                reason="UPSTREAM_UNAVAILABLE",
                metadata={"upstream": self._where(), "model": self._served.name},
            )
        # A tool without parameters streams no input at all; its input is {}.
        calls = tuple(ToolCall(c.id, c.name, c.arguments or "{}") for c in assembler.calls())
        finish = _STOP_REASONS.get(stop_reason, "stop")
        emit(StreamEnded(finish, input_tokens, output_tokens, calls if finish == "tool_calls" else ()))

    def _map_error(self, error: Exception) -> HearthError | None:
        model = self._served.name
        upstream = self._upstream()
        if isinstance(error, anthropic.APITimeoutError | httpx.TimeoutException):
            return upstream_timeout(upstream, model)
        if isinstance(error, anthropic.APIConnectionError | httpx.TransportError):
            return upstream_unreachable(upstream, model, type(error).__name__)
        if isinstance(error, anthropic.APIStatusError):
            detail, kind = error_detail(error.body)
            return upstream_status_error(
                error.status_code,
                upstream=upstream,
                model=model,
                detail=detail,
                error_type=kind,
                headers=error.response.headers,
                secret=self._api_key,
            )
        if isinstance(error, anthropic.APIError):
            detail, kind = error_detail(error.body)
            return upstream_status_error(
                200, upstream=upstream, model=model, detail=detail, error_type=kind, secret=self._api_key
            )
        if isinstance(error, httpx.HTTPError | json.JSONDecodeError):
            return upstream_unreachable(upstream, model, f"broken stream: {type(error).__name__}")
        return None


def anthropic_messages(messages: tuple[ChatMessage, ...]) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages) in the Messages API shape.

    Raises:
        InvalidArgument: an assistant tool call's arguments are not a JSON object.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.role == "system":
            if message.content:
                system.append(message.content)
            continue
        blocks: list[dict[str, Any]] = []
        role = "assistant" if message.role == "assistant" else "user"
        if message.role == "tool":
            blocks.append(
                {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
            )
        elif message.content:
            blocks.append({"type": "text", "text": message.content})
        for number, call in enumerate(message.tool_calls if message.role == "assistant" else ()):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _tool_input(
                        call.arguments, f"messages[{position}].tool_calls[{number}].arguments"
                    ),
                }
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def anthropic_tool_choice(choice: str) -> dict[str, Any] | None:
    """Hearth's tool_choice in the Messages API shape; None leaves the default (auto)."""
    if choice in ("", "auto"):
        return None
    if choice in ("required", "any"):
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def _tool_input(arguments: str, field: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(
            field, "a tool call's arguments must be a JSON object", reason="INVALID_TOOL_CALL"
        )
    return value


def _input_tokens(usage: Any) -> int | None:
    """Prompt tokens, cached ones included (the API counts those apart)."""
    base = getattr(usage, "input_tokens", None)
    if base is None:
        return None
    cached = (getattr(usage, "cache_creation_input_tokens", None) or 0) + (
        getattr(usage, "cache_read_input_tokens", None) or 0
    )
    return int(base) + int(cached)

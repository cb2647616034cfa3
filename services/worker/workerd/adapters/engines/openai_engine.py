"""The ``openai`` engine: any OpenAI-compatible chat-completions upstream
(vLLM, llama.cpp, Ollama, a cloud API), through the official ``openai``
client.

One generation is one streamed ``/chat/completions`` call. The client retries
429, 408, 409, 5xx and connection errors up to ``max_retries`` times before
the stream opens, waiting what the upstream's ``retry-after-ms`` or
``retry-after`` header says (when between 0 and 120 s; otherwise its own
exponential backoff from 0.5 s, capped at 8 s, with jitter). Once a token has
arrived nothing is retried: a retried call would stream the text again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
import openai

from hearth.chat import ChatMessage, ToolCallAssembler, ToolCallDelta
from hearth.errors import HearthError, Unavailable
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

#: Sent when no key is configured: the client insists on one, and servers
#: started without --api-key (vLLM, llama.cpp, Ollama) ignore it.
_NO_KEY: Final = "no-key"
#: Longest a stream's reader keeps the event loop before it lets other tasks run.
_MAX_LOOP_HOLD_SECONDS: Final = 0.005


class OpenAIEngine(RemoteChatEngine):
    """A model behind an OpenAI-compatible chat-completions API.

    start() lists the upstream's models: an unreachable upstream or a refused
    key fails it with an error naming ``base_url``; an upstream that does not
    list ``upstream_model`` only gets a warning (generate() works as soon as
    the upstream serves it), and one without a models list at all (404) is
    accepted as it is.

    A prompt request is sent as one user message; a conversation as its
    messages, tool calls and tool results included. ``max_tokens`` is sent as
    ``max_tokens`` (several compatible servers reject
    ``max_completion_tokens``). Text deltas count one token each (the usual
    granularity of upstream chunks); tool-call pieces stream as
    :class:`~hearth.chat.ToolCallDelta` with a token count of 0. A stream that
    produced tool calls ends with ``"tool_calls"`` even where the upstream
    says "stop" (Ollama does).

    Args:
        served: the model as Hearth names it.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        upstream_model: the model's name at the upstream; defaults to ``served.name``.
        api_key: sent as a bearer token; None sends none that means anything.
        timeout_seconds: longest one generation may take, retries included;
            also the longest wait for any one chunk.
        max_retries: retries of 429/5xx/connection errors before the first token.
        connect_timeout_seconds: longest wait for a TCP connection.
        start_timeout_seconds: how long start() waits for an unreachable
            upstream to come up (a server starting beside the worker, a box
            on the LAN rebooting) before it gives up.
        tokenizer: counts tokens; without one a token is estimated per 4 characters.
    """

    kind = "openai"

    def __init__(
        self,
        served: ServedModel,
        *,
        base_url: str,
        upstream_model: str = "",
        api_key: str | None = None,
        timeout_seconds: float = 600.0,
        max_retries: int = 3,
        connect_timeout_seconds: float = 10.0,
        start_timeout_seconds: float = 60.0,
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
        self._start_timeout_seconds = start_timeout_seconds
        self._client: openai.AsyncOpenAI | None = None

    @property
    def base_url(self) -> str:
        return self._base_url

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise Unavailable(f"the {self.kind} engine is closed", reason="ENGINE_NOT_READY")
        await self._open_client(self._base_url)
        deadline = time.monotonic() + self._start_timeout_seconds
        while True:
            try:
                await self._check_upstream()
                return
            except Unavailable as err:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s; waiting for it to come up", err.message)
                await asyncio.sleep(1.0)

    async def _open_client(self, base_url: str) -> None:
        """Point the engine at ``base_url`` (closing a previous client)."""
        await self._close_client()
        self._base_url = base_url
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key or _NO_KEY,
            base_url=base_url,
            timeout=httpx.Timeout(self._timeout_seconds, connect=self._connect_timeout_seconds),
            max_retries=self._max_retries,
        )

    async def _list_models(self) -> list[str] | None:
        try:
            page = await self._require_client().models.list()
        except openai.NotFoundError:
            return None
        return [model.id for model in page.data]

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _not_ready(self) -> HearthError | None:
        problem = super()._not_ready()
        if problem is None and self._client is None:
            problem = Unavailable(f"the {self.kind} engine has not started", reason="ENGINE_NOT_READY")
        return problem

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise Unavailable(f"the {self.kind} engine has no upstream client", reason="ENGINE_NOT_READY")
        return self._client

    def _upstream(self) -> str:
        return self._base_url

    # -- one call ---------------------------------------------------------------

    def _build_params(self, request: GenerationRequest) -> dict[str, Any]:
        messages = (
            [openai_message(m) for m in request.messages]
            if request.messages
            else [{"role": "user", "content": request.prompt}]
        )
        params: dict[str, Any] = {
            "model": self._upstream_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            params["seed"] = request.seed
        if request.tools:
            params["tools"] = [tool.openai_json() for tool in request.tools]
            choice = openai_tool_choice(request.tool_choice)
            if choice is not None:
                params["tool_choice"] = choice
        return params

    async def _stream(self, params: dict[str, Any], emit: Emit) -> None:
        client = self._require_client()
        stream = await client.chat.completions.create(**params)
        async with stream:
            emit(StreamOpened())
            assembler = ToolCallAssembler()
            finish: str | None = None
            input_tokens: int | None = None
            output_tokens: int | None = None
            loop = asyncio.get_running_loop()
            yielded_at = loop.time()
            async for chunk in stream:
                # A fast upstream keeps the socket readable, and reading a readable
                # socket never waits: without a yield now and then one stream would
                # hold the event loop (heartbeats, cancellations, every other
                # stream) for as long as it outruns this process.
                if loop.time() - yielded_at > _MAX_LOOP_HOLD_SECONDS:
                    await asyncio.sleep(0)
                    yielded_at = loop.time()
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    input_tokens = getattr(usage, "prompt_tokens", None)
                    output_tokens = getattr(usage, "completion_tokens", None)
                for choice in chunk.choices or ():
                    if choice.index not in (0, None):
                        continue  # n is 1; a stray choice is not ours
                    delta = choice.delta
                    text = (getattr(delta, "content", None) or "") if delta is not None else ""
                    pieces = tuple(
                        _tool_call_delta(position, piece)
                        for position, piece in enumerate(getattr(delta, "tool_calls", None) or ())
                    )
                    if text or pieces:
                        assembler.extend(pieces)
                        emit(TokenDelta(text, 1 if text else 0, tool_calls=pieces))
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if finish is None:
            raise Unavailable(
                f"the upstream {self._where()} ended the stream without a finish reason",
                reason="UPSTREAM_UNAVAILABLE",
                metadata={"upstream": self._where(), "model": self._served.name},
            )
        calls = tuple(assembler.calls())
        emit(StreamEnded(_finish_reason(finish, bool(calls)), input_tokens, output_tokens, calls))

    def _map_error(self, error: Exception) -> HearthError | None:
        model = self._served.name
        if isinstance(error, openai.APITimeoutError | httpx.TimeoutException):
            return upstream_timeout(self._base_url, model)
        if isinstance(error, openai.APIConnectionError | httpx.TransportError):
            return upstream_unreachable(self._base_url, model, type(error).__name__)
        if isinstance(error, openai.APIStatusError):
            detail, kind = error_detail(error.body)
            return upstream_status_error(
                error.status_code,
                upstream=self._base_url,
                model=model,
                detail=detail,
                error_type=kind,
                headers=error.response.headers,
                secret=self._api_key,
            )
        if isinstance(error, openai.APIError):  # an error event inside the stream
            detail, kind = error_detail(error.body)
            return upstream_status_error(
                200,
                upstream=self._base_url,
                model=model,
                detail=detail,
                error_type=kind,
                secret=self._api_key,
            )
        if isinstance(error, httpx.HTTPError | json.JSONDecodeError):
            return upstream_unreachable(self._base_url, model, f"broken stream: {type(error).__name__}")
        return None


def openai_message(message: ChatMessage) -> dict[str, Any]:
    """A conversation message in the chat-completions request shape."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        data["content"] = message.content or None
        data["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        data["tool_call_id"] = message.tool_call_id
    elif message.name:
        data["name"] = message.name
    return data


def openai_tool_choice(choice: str) -> str | dict[str, Any] | None:
    """Hearth's tool_choice in the chat-completions shape; None leaves it to
    the upstream (auto)."""
    if choice == "":
        return None
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _tool_call_delta(position: int, piece: Any) -> ToolCallDelta:
    function = getattr(piece, "function", None)
    index = getattr(piece, "index", None)
    return ToolCallDelta(
        index=index if isinstance(index, int) else position,
        id=getattr(piece, "id", None) or "",
        name=(getattr(function, "name", None) or "") if function is not None else "",
        arguments=(getattr(function, "arguments", None) or "") if function is not None else "",
    )


def _finish_reason(upstream: str, made_tool_calls: bool) -> FinishReason:
    if upstream == "length":
        return "length"
    if upstream in ("tool_calls", "function_call") or made_tool_calls:
        return "tool_calls"
    return "stop"

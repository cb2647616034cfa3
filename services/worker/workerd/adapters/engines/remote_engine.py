"""What the HTTP chat-API engines (openai, vllm, anthropic) share.

:class:`RemoteChatEngine` owns the lifecycle every streamed upstream call has:
one task per generation that runs the HTTP stream and hands its events over
an asyncio queue, so that :meth:`~RemoteChatEngine.abort` can stop it at any
point (while retrying, while waiting for the next chunk) by cancelling that
task, which closes the HTTP stream. Subclasses say how a request becomes API
parameters and how one streamed call runs.

The module also maps an upstream's HTTP answers to Hearth errors
(:func:`upstream_status_error`), with messages built here: an upstream's
error text can quote the API key ("Incorrect API key provided: sk-ab...yz"),
and the client libraries' exceptions carry the request, headers included, so
neither is ever passed on or chained.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from hearth.chat import ToolCall, render_plain
from hearth.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    HearthError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from hearth.runtime.redaction import REDACTED, redact
from workerd.domain.engine import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
    check_context,
    find_model,
)

log = logging.getLogger(__name__)

#: The wait suggested to a client after a rate limit without a hint, in seconds.
DEFAULT_RETRY_AFTER_SECONDS: Final = 1.0
#: Longest upstream error text quoted in a message.
_DETAIL_CHARS: Final = 300
_CONTEXT_WORDING: Final = re.compile(
    r"context[ _]length|context[ _]window|maximum context|too long|too many tokens|prompt is too long"
    r"|max_tokens.*too large|exceeds? the (?:model'?s? )?(?:maximum|limit)",
    re.IGNORECASE,
)


# --- error mapping ------------------------------------------------------------


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The upstream's retry hint in seconds: ``retry-after-ms`` (OpenAI's
    precise variant) first, then ``retry-after`` in seconds; None without a
    usable one (HTTP-date forms are ignored)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def scrub(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` and anything secret-looking removed."""
    if secret:
        text = text.replace(secret, REDACTED)
    return redact(text)


def error_detail(body: object) -> tuple[str, str]:
    """(message, type) of an upstream error body, OpenAI's
    ``{"error": {"message", "type", "code"}}`` or Anthropic's
    ``{"type": "error", "error": {"type", "message"}}``; empty when absent."""
    if not isinstance(body, Mapping):
        return (body if isinstance(body, str) else ""), ""
    inner = body.get("error")
    source: Mapping[str, Any] = inner if isinstance(inner, Mapping) else body
    message = source.get("message")
    kind = source.get("code") or source.get("type") or ""
    return (message if isinstance(message, str) else ""), str(kind)


def upstream_status_error(
    status: int,
    *,
    upstream: str,
    model: str,
    detail: str = "",
    error_type: str = "",
    headers: Mapping[str, str] | None = None,
    secret: str | None = None,
) -> HearthError:
    """The Hearth error for an upstream's error answer (after the client's own
    retries ran out).

    * 429: ResourceExhausted ``UPSTREAM_RATE_LIMITED``, retry_after from the hint;
    * 529 or an ``overloaded_error``: Unavailable ``UPSTREAM_OVERLOADED``;
    * 401, 403: FailedPrecondition ``UPSTREAM_AUTH_FAILED`` (the upstream's
      text is left out: it may quote the key);
    * 400, 413, 422 that speak of the context: InvalidArgument on
      ``max_tokens``, ``CONTEXT_TOO_LONG``; otherwise InvalidArgument
      ``UPSTREAM_REJECTED``;
    * 404: NotFound ``MODEL_NOT_FOUND``;
    * 408, 504: DeadlineExceeded ``UPSTREAM_TIMEOUT``;
    * other 5xx: Unavailable ``UPSTREAM_UNAVAILABLE``;
    * anything else: FailedPrecondition ``UPSTREAM_REJECTED``.

    Args:
        upstream: the base URL, for people (credentials in it are redacted).
        detail: the upstream's own error text; scrubbed and shortened.
        error_type: the upstream's error type or code.
        secret: the API key, removed from anything quoted.
    """
    where = redact(upstream)
    said = scrub(detail, secret)[:_DETAIL_CHARS]
    quoted = f": {said}" if said else ""
    metadata = {"upstream": where, "status": str(status), "model": model}
    hint = retry_after_seconds(headers)
    if status == 429:
        return ResourceExhausted(
            f"the upstream {where} is rate limiting requests{quoted}",
            reason="UPSTREAM_RATE_LIMITED",
            metadata=metadata,
            retry_after=hint if hint is not None else DEFAULT_RETRY_AFTER_SECONDS,
        )
    if status == 529 or error_type == "overloaded_error":
        return Unavailable(
            f"the upstream {where} is overloaded{quoted}",
            reason="UPSTREAM_OVERLOADED",
            metadata=metadata,
            retry_after=hint if hint is not None else DEFAULT_RETRY_AFTER_SECONDS,
        )
    if status in (401, 403):
        return FailedPrecondition(
            f"the upstream {where} refused the API key (HTTP {status})",
            reason="UPSTREAM_AUTH_FAILED",
            metadata=metadata,
        )
    if status in (400, 413, 422):
        if status == 413 or error_type == "context_length_exceeded" or _CONTEXT_WORDING.search(detail):
            return InvalidArgument(
                "max_tokens",
                f"the prompt plus max_tokens do not fit the context of {model!r} at {where}{quoted}",
                reason="CONTEXT_TOO_LONG",
                **metadata,
            )
        return InvalidArgument(
            "request",
            f"the upstream {where} rejected the request{quoted}",
            reason="UPSTREAM_REJECTED",
            **metadata,
        )
    if status == 404:
        return NotFound(
            f"the upstream {where} does not serve model {model!r}{quoted}",
            reason="MODEL_NOT_FOUND",
            metadata=metadata,
        )
    if status in (408, 504):
        return DeadlineExceeded(
            f"the upstream {where} timed out (HTTP {status}){quoted}",
            reason="UPSTREAM_TIMEOUT",
            metadata=metadata,
        )
    if status >= 500 or status == 200:  # 200: an error event inside a stream
        return Unavailable(
            f"the upstream {where} failed (HTTP {status}){quoted}",
            reason="UPSTREAM_UNAVAILABLE",
            metadata=metadata,
            retry_after=hint,
        )
    return FailedPrecondition(
        f"the upstream {where} refused the request (HTTP {status}){quoted}",
        reason="UPSTREAM_REJECTED",
        metadata=metadata,
    )


def upstream_timeout(upstream: str, model: str, seconds: float | None = None) -> DeadlineExceeded:
    within = f" within {seconds:g} s" if seconds is not None else " in time"
    return DeadlineExceeded(
        f"the upstream {redact(upstream)} did not answer{within}",
        reason="UPSTREAM_TIMEOUT",
        metadata={"upstream": redact(upstream), "model": model},
    )


def upstream_unreachable(upstream: str, model: str, what: str = "") -> Unavailable:
    how = f" ({what})" if what else ""
    return Unavailable(
        f"the upstream {redact(upstream)} cannot be reached{how}",
        reason="UPSTREAM_UNAVAILABLE",
        metadata={"upstream": redact(upstream), "model": model},
    )


# --- the shared engine ------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpened:
    """The upstream accepted the call and its stream begins."""


@dataclass(frozen=True)
class StreamEnded:
    """The upstream ended the stream normally."""

    finish_reason: FinishReason
    #: The upstream's own counts, when it reported usage.
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class _TaskDone:
    """The call's task ended (queued by its done callback)."""


StreamItem: TypeAlias = StreamOpened | TokenDelta | StreamEnded | HearthError | _TaskDone
#: How a streamed call hands over what it produced.
Emit: TypeAlias = Callable[[StreamItem], None]


@dataclass(eq=False)
class _Call:
    """One running upstream call."""

    job_id: str
    queue: asyncio.Queue[StreamItem] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    #: Set by abort ("aborted") or by an interruption (the error to raise).
    stop: HearthError | str | None = None
    finished: bool = False


class RemoteChatEngine(Engine):
    """An engine whose model runs behind a streamed HTTP chat API.

    Each generation runs as one task (:meth:`_stream` inside the overall
    deadline ``timeout_seconds``); the generation's iterator reads what it
    emits. The iterator yields :class:`GenerationStarted` once the upstream
    has accepted the call (so upstream errors, retries included, surface
    before anything is yielded), with the prompt's *estimated* tokens; the
    upstream's own count, when it reports usage, is in
    :class:`GenerationFinished`. ``output_tokens`` is likewise the upstream's
    count when reported (it includes tokens spent on tool calls, which the
    deltas carry as 0), else the sum of the deltas.

    :meth:`abort`, a consumer that stops iterating, and :meth:`cleanup`
    cancel the task, which closes the HTTP stream.

    Args:
        served: the model as Hearth names it.
        upstream_model: its name at the upstream; defaults to ``served.name``.
        timeout_seconds: longest one generation may take, retries included.
        tokenizer: counts tokens; without one, :meth:`count_tokens` estimates
            a token per 4 characters (rounded up, at least 1), which is close
            for English text with BPE vocabularies and conservative for code.
    """

    def __init__(
        self,
        served: ServedModel,
        *,
        upstream_model: str = "",
        timeout_seconds: float = 600.0,
        tokenizer: Callable[[str], int] | None = None,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._served = served
        self._upstream_model = upstream_model or served.name
        self._timeout_seconds = timeout_seconds
        self._tokenizer = tokenizer
        self._calls: dict[str, _Call] = {}
        self._closed = False

    # -- what subclasses provide ---------------------------------------------------

    @abc.abstractmethod
    def _upstream(self) -> str:
        """The upstream's base URL, for messages."""

    @abc.abstractmethod
    def _build_params(self, request: GenerationRequest) -> dict[str, Any]:
        """The API call's parameters; raises InvalidArgument for a request the
        API cannot express."""

    @abc.abstractmethod
    async def _stream(self, params: dict[str, Any], emit: Emit) -> None:
        """Run one streamed call: emit StreamOpened once accepted, then
        TokenDelta pieces, then StreamEnded. Library errors may propagate;
        :meth:`_map_error` translates them."""

    @abc.abstractmethod
    async def _list_models(self) -> list[str] | None:
        """The model ids the upstream lists; None when it has no models list.
        Library errors may propagate; :meth:`_map_error` translates them."""

    def _where(self) -> str:
        """The upstream's base URL for logs and messages, credentials redacted."""
        return redact(self._upstream())

    async def _check_upstream(self) -> None:
        """Check that the upstream answers and lists the model (a missing
        model is a warning: an alias may not be listed, and a server may load
        it later). Raises the mapped error when the upstream cannot be used."""
        try:
            listed = await self._list_models()
        except Exception as err:
            mapped = self._map_error(err)
            if mapped is None:
                raise
            raise mapped from None
        if listed is None:
            log.warning(
                "the upstream %s has no models list; assuming it serves %r",
                self._where(),
                self._upstream_model,
            )
        elif self._upstream_model not in listed:
            log.warning(
                "the upstream %s does not list model %r (it lists %s); an alias is not listed, "
                "and generations fail if it does not serve it",
                self._where(),
                self._upstream_model,
                ", ".join(listed[:20]) or "none",
            )
        else:
            log.info("the upstream %s serves %r", self._where(), self._upstream_model)

    @abc.abstractmethod
    def _map_error(self, error: Exception) -> HearthError | None:
        """The Hearth error for a client-library or transport error; None for
        one it does not know (reported as INTERNAL)."""

    @abc.abstractmethod
    async def _close_client(self) -> None:
        """Close the HTTP client, if one is open."""

    async def _explain(self, error: HearthError) -> HearthError:
        """A chance to replace a call's error with a better one (the vllm
        engine: a broken stream because its server died)."""
        return error

    def _not_ready(self) -> HearthError | None:
        """Why generate() cannot run now; None when it can."""
        if self._closed:
            return Unavailable(f"the {self.kind} engine is closed", reason="ENGINE_NOT_READY")
        return None

    # -- queries ---------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        return [self._served]

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return self._tokenizer(text)
        return max(1, math.ceil(len(text) / 4))

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running())

    def _running(self) -> int:
        return sum(1 for call in self._calls.values() if not call.finished)

    def estimate_input_tokens(self, request: GenerationRequest) -> int:
        """The prompt's tokens as sent: the prompt or the rendered
        conversation, plus the tools' definitions."""
        text = request.prompt if not request.messages else render_plain(request.messages)
        if request.tools:
            text += "\n" + json.dumps([tool.openai_json() for tool in request.tools])
        return self.count_tokens(text)

    # -- lifecycle ---------------------------------------------------------------

    async def abort(self, job_id: str) -> bool:
        call = self._calls.get(job_id)
        if call is None or call.finished or call.stop is not None:
            return False
        self._stop(call, "aborted")
        return True

    async def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for call in list(self._calls.values()) if (t := self._stop(call, "aborted")) is not None]
        if tasks:
            await asyncio.wait(tasks)
        await self._close_client()

    def _interrupt(self, error: HearthError) -> int:
        """Fail every running generation with ``error``; how many there were."""
        stopped = 0
        for call in list(self._calls.values()):
            if not call.finished and call.stop is None:
                self._stop(call, error)
                stopped += 1
        return stopped

    @staticmethod
    def _stop(call: _Call, why: HearthError | str) -> asyncio.Task[None] | None:
        if call.stop is None:
            call.stop = why
        task = call.task
        if task is not None and not task.done():
            _cancel_once(task)
            return task
        return None

    # -- generation -----------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        problem = self._not_ready()
        if problem is not None:
            raise problem
        model = find_model(self.models(), request.model)
        estimate = self.estimate_input_tokens(request)
        check_context(model, estimate, request.max_tokens)
        if request.job_id in self._calls:
            raise AlreadyExists(
                f"job {request.job_id} is already generating",
                reason="JOB_ALREADY_RUNNING",
                metadata={"job_id": request.job_id},
            )
        params = self._build_params(request)
        call = _Call(request.job_id)
        self._calls[request.job_id] = call
        task = asyncio.create_task(self._run_call(params, call), name=f"{self.kind}-call-{request.job_id}")
        call.task = task
        task.add_done_callback(lambda _: call.queue.put_nowait(_TaskDone()))
        delivered = 0
        started = False
        try:
            while True:
                item = await call.queue.get()
                if call.stop is not None:
                    break
                if isinstance(item, StreamOpened):
                    started = True
                    yield GenerationStarted(estimate)
                elif isinstance(item, TokenDelta):
                    delivered += item.token_count
                    yield item
                elif isinstance(item, StreamEnded):
                    call.finished = True
                    yield GenerationFinished(
                        item.finish_reason,
                        item.input_tokens if item.input_tokens is not None else estimate,
                        item.output_tokens if item.output_tokens is not None else delivered,
                        tool_calls=item.tool_calls,
                    )
                    return
                elif isinstance(item, HearthError):
                    call.finished = True
                    raise item
                else:  # the task ended without an end: a bug in _stream
                    call.finished = True
                    raise Internal(f"the {self.kind} upstream call ended without a result")
            call.finished = True
            if isinstance(call.stop, HearthError):
                raise call.stop
            if not started:
                yield GenerationStarted(estimate)
            yield GenerationFinished("aborted", estimate, delivered)
        finally:
            call.finished = True
            if not task.done():
                _cancel_once(task)
                await asyncio.wait([task])
            if self._calls.get(request.job_id) is call:
                del self._calls[request.job_id]

    async def _run_call(self, params: dict[str, Any], call: _Call) -> None:
        emit = call.queue.put_nowait
        try:
            async with asyncio.timeout(self._timeout_seconds):
                await self._stream(params, emit)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            emit(upstream_timeout(self._upstream(), self._served.name, self._timeout_seconds))
        except HearthError as err:
            emit(await self._explain(err))
        except Exception as err:
            mapped = self._map_error(err)
            if mapped is None:
                # The type only: library exceptions may carry the request's headers.
                log.error(
                    "the %s upstream call of job %s failed: %s", self.kind, call.job_id, type(err).__name__
                )
                mapped = Internal(f"the {self.kind} upstream call failed")
            else:
                mapped = await self._explain(mapped)
                log.warning(
                    "the %s upstream call of job %s failed: %s", self.kind, call.job_id, mapped.message
                )
            emit(mapped)


def _cancel_once(task: asyncio.Task[None]) -> None:
    """Cancel an upstream call unless a cancellation is already on its way: a
    second one would land inside the first one's cleanup (closing the HTTP
    stream) and leave the connection open, the upstream still generating."""
    if not task.cancelling():
        task.cancel()

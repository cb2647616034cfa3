"""A job's events as the answer every front-door API writes: the one piece of
job plumbing the chat completions, Anthropic Messages and OpenAI Responses
endpoints share.

:func:`answer_events` watches a job (``JobService.watch``) and yields
:class:`AnswerEvent` values that no longer depend on Hearth's event kinds:
the answer began (the serving model, its input tokens), a piece of text, a
piece of a tool call, a wait, an answer thrown away by a fallback, the end
(finish reason, complete tool calls, usage from the run record) or a
failure (an :class:`OpenAIError`, which each API writes in its own shape).
:func:`collect_answer` waits for the end and returns the whole answer.

Stop sequences are applied here, since a job has no field for them: the text
is held back while it could be the start of one, cut where one appears, the
answer ends with ``finish_reason == STOP_SEQUENCE`` and the job is cancelled
through ``stop`` (it would only write text nobody reads).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hearth.chat import ToolCall, ToolCallAssembler, ToolCallDelta
from hearth.errors import HearthError
from orchestratord.api.openai_http.errors import (
    OpenAIError,
    from_hearth_error,
    from_job_failure,
    internal_error,
    job_cancelled,
)
from orchestratord.api.openai_http.ports import ChatJobs
from orchestratord.domain.jobs import Cancelled, Completed, Failed, Fallback, Started, Tokens, Waiting

log = logging.getLogger(__name__)

#: The finish reason of an answer cut at one of the request's stop sequences.
STOP_SEQUENCE = "STOP_SEQUENCE"
#: The cancel reason of a job whose answer reached a stop sequence.
STOP_SEQUENCE_REASON = "stop sequence reached"


class JobTicket:
    """The job one request created, and whether the request saw its end (a
    request that ends before its job does cancels it)."""

    __slots__ = ("ended", "job_id")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.ended = False


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Begun:
    """The job reached a target (sent once, before any piece)."""

    model: str
    input_tokens: int


@dataclass(frozen=True, slots=True)
class ToolPiece:
    """A piece of a tool call; ``first`` for the first piece of its index."""

    delta: ToolCallDelta
    first: bool


@dataclass(frozen=True, slots=True)
class Piece:
    """What one token event added: text, pieces of tool calls, or both."""

    text: str = ""
    tool_calls: tuple[ToolPiece, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """The job waits (a model loading, no free worker): keep the client busy."""

    reason: str


@dataclass(frozen=True, slots=True)
class Discarded:
    """The target failed and the next one answers afresh. ``after_answer``:
    pieces of the thrown-away answer were already yielded (a stream cannot
    take them back; a collector starts over)."""

    after_answer: bool
    message: str


@dataclass(frozen=True, slots=True)
class Ended:
    #: STOP, LENGTH, TOOL_CALLS or STOP_SEQUENCE.
    finish_reason: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    #: The stop sequence that ended the answer, "" for any other end.
    stop_sequence: str = ""


@dataclass(frozen=True, slots=True)
class Broke:
    """The job failed, was cancelled by someone else, or its events could not be read."""

    error: OpenAIError


AnswerEvent = Begun | Piece | Held | Discarded | Ended | Broke


@dataclass(slots=True)
class Answer:
    """A whole answer (:func:`collect_answer`)."""

    model: str
    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    stop_sequence: str = ""


@dataclass(slots=True)
class StopScanner:
    """Cuts streamed text at the first of ``sequences``.

    :meth:`feed` returns the text that is safe to send now; a tail that could
    still become a stop sequence is held back until the next piece (or
    :meth:`flush` at the end).
    """

    sequences: Sequence[str]
    _held: str = ""
    hit: str = ""
    _longest: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.sequences = [s for s in self.sequences if s]
        self._longest = max((len(s) for s in self.sequences), default=0)

    def feed(self, text: str) -> str:
        if not self.sequences:
            return text
        buffer = self._held + text
        cut = -1
        for sequence in self.sequences:
            at = buffer.find(sequence)
            if at != -1 and (cut == -1 or at < cut):
                cut, self.hit = at, sequence
        if cut != -1:
            self._held = ""
            return buffer[:cut]
        keep = 0
        for size in range(min(self._longest - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self.sequences):
                keep = size
                break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


async def run_usage(jobs: ChatJobs, job_id: str, input_tokens: int, output_tokens: int) -> Usage:
    """Usage from the job's run record (what GetJob shows), falling back to
    the counts its events carried."""
    try:
        run = (await jobs.get(job_id)).run
    except HearthError as err:
        log.warning("job %s: no run record for usage (%s); using its events' counts", job_id, err.reason)
        run = None
    if run is not None:
        input_tokens, output_tokens = run.input_tokens, run.output_tokens
    return Usage(input_tokens, output_tokens)


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[Any]) -> AsyncIterator[AsyncIterator[Any]]:
    """Close an event iterator when the reader leaves it early (a client gone)."""
    try:
        yield events
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


async def answer_events(
    jobs: ChatJobs,
    ticket: JobTicket,
    *,
    stop_sequences: Sequence[str] = (),
    stop: Callable[[JobTicket, str], None] | None = None,
) -> AsyncGenerator[AnswerEvent, None]:
    """The job's answer, event by event, ending with :class:`Ended` or
    :class:`Broke` (the job's end is marked on ``ticket`` first).

    ``stop`` cancels the job when its text reached a stop sequence (the
    request's ``JobRequests.abandon``); without it the job runs on unread.
    """
    begun = False
    answered = False
    first_pieces: set[int] = set()
    input_tokens = 0
    tokens_seen = 0
    scanner = StopScanner(stop_sequences)
    try:
        async with closing(jobs.watch(ticket.job_id)) as events:
            async for event in events:
                body = event.body
                if isinstance(body, Started):
                    input_tokens = body.input_tokens
                    if not begun:
                        begun = True
                        yield Begun(body.model, body.input_tokens)
                elif isinstance(body, Tokens):
                    if not begun:
                        begun = True
                        yield Begun("", input_tokens)
                    tokens_seen += body.token_count
                    text = scanner.feed(body.text) if body.text else ""
                    calls = []
                    for delta in body.tool_calls:
                        calls.append(ToolPiece(delta, first=delta.index not in first_pieces))
                        first_pieces.add(delta.index)
                    if text or calls:
                        answered = True
                        yield Piece(text, tuple(calls))
                    if scanner.hit:
                        if stop is not None:
                            stop(ticket, STOP_SEQUENCE_REASON)
                        ticket.ended = True
                        # The run record is written when the cancelled job ends: count the events.
                        yield Ended(STOP_SEQUENCE, (), Usage(input_tokens, tokens_seen), scanner.hit)
                        return
                elif isinstance(body, Fallback):
                    if body.output_discarded:
                        message = (
                            f"the target {body.from_target} failed ({body.cause}) after the answer began"
                        )
                        yield Discarded(answered, message)
                        answered = False
                        first_pieces.clear()
                        scanner = StopScanner(stop_sequences)
                elif isinstance(body, Completed):
                    ticket.ended = True
                    if not begun:
                        yield Begun("", input_tokens)
                    if rest := scanner.flush():
                        yield Piece(rest)
                    usage = await run_usage(jobs, ticket.job_id, input_tokens, body.output_tokens)
                    yield Ended(body.finish_reason, tuple(body.tool_calls), usage)
                    return
                elif isinstance(body, Failed):
                    ticket.ended = True
                    yield Broke(from_job_failure(body.reason, body.message))
                    return
                elif isinstance(body, Cancelled):
                    ticket.ended = True
                    yield Broke(job_cancelled(body.reason))
                    return
                elif isinstance(body, Waiting):
                    yield Held(body.reason)
        log.error("job %s: its event stream ended without a terminal event", ticket.job_id)
        yield Broke(internal_error())
    except HearthError as err:
        yield Broke(from_hearth_error(err))


async def collect_answer(
    jobs: ChatJobs,
    ticket: JobTicket,
    model: str,
    *,
    stop_sequences: Sequence[str] = (),
    stop: Callable[[JobTicket, str], None] | None = None,
) -> Answer:
    """Wait for the job's end; its whole answer (``model``: the one asked
    for, until the job names the one that serves it).

    Raises:
        OpenAIError: the job failed (by its reason), was cancelled (409), or
            its events could not be read.
    """
    texts: list[str] = []
    pieces = ToolCallAssembler()
    events = answer_events(jobs, ticket, stop_sequences=stop_sequences, stop=stop)
    async with closing(events):
        async for event in events:
            if isinstance(event, Begun):
                model = event.model or model
            elif isinstance(event, Piece):
                texts.append(event.text)
                pieces.extend(piece.delta for piece in event.tool_calls)
            elif isinstance(event, Discarded):
                texts.clear()
                pieces = ToolCallAssembler()
            elif isinstance(event, Ended):
                calls = list(event.tool_calls) or pieces.calls()
                return Answer(
                    model, "".join(texts), calls, event.finish_reason, event.usage, event.stop_sequence
                )
            elif isinstance(event, Broke):
                raise event.error
    raise internal_error()

"""The engine interface: what workerd needs from an inference engine.

An :class:`Engine` knows nothing about gRPC, NATS or the worker around it. It
loads a model, turns a :class:`GenerationRequest` into a stream of
:class:`GenerationEvent`, aborts a running generation on request and releases
everything on cleanup. The worker owns transport, admission, registration and
shutdown; the engine owns the model.

Engines: ``transformers`` (in-process Hugging Face model), ``sim`` (a timing
model of a GPU engine, for load tests), ``vllm`` (a ``vllm serve`` child
process), ``openai`` and ``anthropic`` (HTTP clients of a chat API) and
``cli`` (a command-line agent run once per job). The HTTP engines map onto the
same calls: start() checks the upstream, generate() is one streamed
completion, abort() closes that HTTP stream, count_tokens() estimates, stats()
reports what the upstream says about its load.

A request carries either a prompt or a conversation (``messages``), and may
offer tools; an engine that can call tools streams them as
:class:`~hearth.chat.ToolCallDelta` pieces on :class:`TokenDelta` and ends with
``finish_reason="tool_calls"`` and the assembled calls.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta, render_plain
from hearth.errors import InvalidArgument, NotFound

FinishReason = Literal["stop", "length", "aborted", "tool_calls"]


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as the engine sees it."""

    #: The job this generation belongs to; the key for :meth:`Engine.abort`.
    job_id: str
    #: A model the engine serves (see :meth:`Engine.models`).
    model: str
    #: The full prompt, context included; empty when ``messages`` is set.
    prompt: str
    #: Upper bound on generated tokens; at least 1.
    max_tokens: int
    #: 0 means greedy decoding; above 0, sampling at this temperature.
    temperature: float = 0.0
    #: Seed for sampling; None leaves it to the engine (not reproducible).
    seed: int | None = None
    #: The conversation, when the job is one (then ``prompt`` is empty).
    messages: tuple[ChatMessage, ...] = ()
    #: Functions the model may call.
    tools: tuple[Tool, ...] = ()
    #: auto (also when empty), none, required, or a tool's name.
    tool_choice: str = ""


@dataclass(frozen=True)
class GenerationStarted:
    """First event of every generation: the prompt is accepted and counted."""

    input_tokens: int


@dataclass(frozen=True)
class TokenDelta:
    """New text. ``token_count`` tokens produced it (one or more: an engine
    may coalesce tokens, and a token that ends inside a multi-byte character
    carries its count over to the delta that completes it)."""

    text: str
    token_count: int
    #: Pieces of tool calls produced with (or instead of) the text.
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True)
class GenerationFinished:
    """Last event of every generation that was not broken off by an error.

    ``output_tokens`` is the sum of the ``token_count`` of the deltas yielded
    (an end-of-sequence token is not counted)."""

    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    #: The complete tool calls (finish_reason "tool_calls").
    tool_calls: tuple[ToolCall, ...] = ()


GenerationEvent = GenerationStarted | TokenDelta | GenerationFinished


@dataclass(frozen=True)
class ServedModel:
    """A model an engine serves."""

    name: str
    #: Longest prompt plus completion, in tokens.
    context_length: int
    #: Whether the engine can make tool calls with this model.
    supports_tools: bool = False
    #: Whether the model runs on a remote API rather than local hardware.
    remote: bool = False


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, cheap to take."""

    #: Sequences being generated now.
    running: int = 0
    #: Sequences accepted but waiting for a batch slot.
    waiting: int = 0
    #: Fraction (0..1) of the KV cache in use, where the engine knows it.
    kv_cache_usage: float | None = None


class Engine(abc.ABC):
    """An inference engine serving one or more models.

    Lifecycle guarantees, which every implementation honours and callers may
    rely on:

    * ``await start()`` loads the model and must complete before
      :meth:`generate` is called; it raises when the engine cannot serve.
      Heavy work happens in start(), never in the constructor.
    * ``await cleanup()`` releases everything (model, executor, tasks, child
      processes). It runs even if start() failed or never ran, and a second
      call is a no-op. Generations still running end with
      ``GenerationFinished("aborted")``.
    * :meth:`generate` yields exactly one :class:`GenerationStarted`, then
      zero or more :class:`TokenDelta`, then exactly one
      :class:`GenerationFinished`, unless it raises. Validation errors are
      raised on the first iteration, before anything is yielded:
      :class:`~hearth.errors.NotFound` (``MODEL_NOT_FOUND``) for a model it
      does not serve, and :class:`~hearth.errors.InvalidArgument` on
      ``max_tokens`` (``CONTEXT_TOO_LONG``) when the prompt's tokens plus
      ``max_tokens`` exceed the model's context length.
    * ``await abort(job_id)`` returns True when it stopped a running
      generation, False for an unknown or finished job (cancellation races
      completion; that is not an error). After a True abort, the generation's
      iterator yields no more tokens and ends with
      ``GenerationFinished("aborted")``; abort does not wait for that.
    * A consumer that stops iterating early (``aclose()`` or cancellation of
      its task) frees the generation's resources just as abort would.
    * Job ids are unique among running generations; generate() raises
      :class:`~hearth.errors.AlreadyExists` (``JOB_ALREADY_RUNNING``) for a
      duplicate.
    """

    #: The engine kind, as configured and reported: transformers, sim, vllm,
    #: openai, anthropic, cli.
    kind: ClassVar[str] = ""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model(s) and get ready to generate."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream one generation (see the class docstring for the event order)."""

    @abc.abstractmethod
    async def abort(self, job_id: str) -> bool:
        """Stop the running generation of ``job_id``; False when there is none."""

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """Release everything; safe after a failed start and safe twice."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """The engine's current load."""

    @abc.abstractmethod
    def models(self) -> list[ServedModel]:
        """The models this engine serves (known before start())."""

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as this engine's tokenizer counts them (after start())."""


def prompt_text(request: GenerationRequest) -> str:
    """The request as one text: the prompt, or the conversation rendered
    plainly (for engines without a chat template, and for token estimates)."""
    return request.prompt or render_plain(request.messages)


def find_model(models: Sequence[ServedModel], name: str) -> ServedModel:
    """The served model called ``name``; NotFound (``MODEL_NOT_FOUND``) otherwise."""
    for model in models:
        if model.name == name:
            return model
    served = ", ".join(m.name for m in models)
    raise NotFound(
        f"model {name!r} is not served here (served: {served})",
        reason="MODEL_NOT_FOUND",
        metadata={"model": name, "served": served},
    )


def check_context(model: ServedModel, input_tokens: int, max_tokens: int) -> None:
    """Raise InvalidArgument on ``max_tokens`` (``CONTEXT_TOO_LONG``) when the
    prompt plus the completion cannot fit in the model's context."""
    if input_tokens + max_tokens > model.context_length:
        raise InvalidArgument(
            "max_tokens",
            f"the prompt's {input_tokens} tokens plus max_tokens {max_tokens} exceed the context length "
            f"{model.context_length} of {model.name!r}",
            reason="CONTEXT_TOO_LONG",
            input_tokens=str(input_tokens),
            max_tokens=str(max_tokens),
            context_length=str(model.context_length),
            model=model.name,
        )

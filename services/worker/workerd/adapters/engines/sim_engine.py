"""The ``sim`` engine: a SIMULATOR of a GPU inference engine.

It runs no model and needs no GPU. It reproduces the timing of one: a prefill
cost per prompt token, a fixed decode step, a bounded batch with continuous
batching and a FIFO wait for a slot, so that load, scale and chaos tests of
the whole stack behave as they would against a real engine. The text it
streams is deterministic pseudo-words, or, for a scripted model (a test
double for end-to-end tests), the scripted replies in turn: each streamed as
written, one whitespace-led piece per token, finishing "stop" (or "length"
when max_tokens cuts it), then failing with the step's reason if it names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal

from hearth.errors import AlreadyExists, Internal, Unavailable
from workerd.domain.engine import (
    Engine,
    EngineStats,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
    check_context,
    find_model,
    prompt_text,
)

log = logging.getLogger(__name__)

_WORDS: Final = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
    "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim "
    "id est laborum"
).split()


class _End:
    """Queue marker: the scheduler produced the last token."""


class _Aborted:
    """Queue marker: abort() or cleanup() stopped the sequence."""


_END: Final = _End()
_ABORTED: Final = _Aborted()

_QueueItem = str | _End | _Aborted


class _Sequence:
    """One simulated sequence: the scheduler's view and the consumer's queue."""

    __slots__ = (
        "aborted",
        "done",
        "input_tokens",
        "job_id",
        "max_tokens",
        "pieces",
        "produced",
        "queue",
        "ready_at",
        "rng",
        "words",
    )

    def __init__(
        self,
        job_id: str,
        input_tokens: int,
        max_tokens: int,
        seed: int,
        words: tuple[str, ...],
        pieces: list[str] | None = None,
    ) -> None:
        self.job_id = job_id
        self.words = words
        #: A scripted reply's tokens (None: pseudo-words); the sequence ends
        #: when they run out.
        self.pieces = pieces
        if pieces is not None:
            max_tokens = min(max_tokens, len(pieces))
        self.input_tokens = input_tokens
        self.max_tokens = max_tokens
        self.rng = random.Random(f"{seed}:{job_id}")
        self.queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self.produced = 0
        self.ready_at = 0.0
        # done: the scheduler must not touch it any more (finished, aborted or
        # its consumer went away). aborted: stopped by abort()/cleanup().
        self.done = False
        self.aborted = False

    def next_token(self) -> str:
        if self.pieces is not None:
            return self.pieces[self.produced]
        return " " + self.rng.choice(self.words)


class SimEngine(Engine):
    """A simulator of a GPU engine with continuous batching, for tests without a GPU.

    One scheduler task, owned by the engine (started in start(), stopped in
    cleanup()), runs the batch: every ``decode_seconds_per_step`` each active
    sequence whose prefill is done gets one token. At most ``max_batch``
    sequences are active; the rest wait in FIFO order and join as slots free
    up. A sequence that joins first spends ``input_tokens *
    prefill_seconds_per_token`` in prefill; prefill runs beside the decode
    steps (as with chunked prefill), so arrivals do not stall the batch.

    Prompt tokens are counted by whitespace split. Tokens are pseudo-words
    (" lorem") from a RNG seeded by (seed, job_id): the same request yields the
    same text. A sequence always runs to ``max_tokens`` (finish "length")
    unless aborted. Each request has one asyncio.Queue; a slow consumer gets
    the tokens waiting for it coalesced into one TokenDelta, so hundreds of
    concurrent sequences cost one task plus one queue each.

    ``kv_cache_usage`` in stats() is simulated: tokens held by active
    sequences over ``max_batch * context_length``.

    Args:
        model: the model name it claims to serve.
        context_length: prompt plus completion limit, in (whitespace) tokens.
        prefill_seconds_per_token: simulated prefill cost per prompt token.
        decode_seconds_per_step: simulated time of one decode step of the batch.
        max_batch: most sequences decoded together.
        load_seconds: simulated model load time, spent in start().
        script: (reply, fail reason) of the generations in turn, the last
            repeating; empty: pseudo-words. A test double, not a simulation.
    """

    kind = "sim"

    def __init__(
        self,
        model: str = "sim",
        *,
        context_length: int = 8192,
        prefill_seconds_per_token: float = 0.00002,
        decode_seconds_per_step: float = 0.01,
        max_batch: int = 256,
        load_seconds: float = 0.0,
        words: tuple[str, ...] = (),
        script: Sequence[tuple[str, str]] = (),
    ) -> None:
        if context_length < 1 or max_batch < 1:
            raise ValueError("context_length and max_batch must be at least 1")
        if prefill_seconds_per_token < 0 or decode_seconds_per_step < 0 or load_seconds < 0:
            raise ValueError("simulated times must not be negative")
        self._load_seconds = load_seconds
        self._words = words or tuple(_WORDS)
        self._script = tuple(script)
        self._scripted = 0
        self._model = ServedModel(model, context_length)
        self._prefill_seconds_per_token = prefill_seconds_per_token
        self._decode_seconds_per_step = decode_seconds_per_step
        self._max_batch = max_batch
        self._sequences: dict[str, _Sequence] = {}
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._state: Literal["new", "loading", "running", "closed"] = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"the sim engine cannot start when {self._state}")
        self._state = "loading"
        if self._load_seconds:
            await asyncio.sleep(self._load_seconds)
        if self._state != "loading":  # cleanup() ran while it loaded
            raise RuntimeError("the sim engine was cleaned up while loading")
        self._state = "running"
        self._scheduler = asyncio.create_task(self._run_batches(), name="sim-engine-scheduler")
        log.info(
            "sim engine (a simulator, no model) serving %r: context %d, max batch %d, %.4fs per step",
            self._model.name,
            self._model.context_length,
            self._max_batch,
            self._decode_seconds_per_step,
        )

    async def cleanup(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        task, self._scheduler = self._scheduler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for seq in list(self._sequences.values()):
            self._stop(seq)
        self._waiting.clear()
        self._active.clear()

    def models(self) -> list[ServedModel]:
        return [self._model]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stats(self) -> EngineStats:
        active = [s for s in self._active if not s.done]
        held = sum(s.input_tokens + s.produced for s in active)
        return EngineStats(
            running=len(active),
            waiting=sum(1 for s in self._waiting if not s.done),
            kv_cache_usage=min(1.0, held / (self._max_batch * self._model.context_length)),
        )

    async def abort(self, job_id: str) -> bool:
        seq = self._sequences.get(job_id)
        if seq is None or seq.done:
            return False
        self._stop(seq)
        return True

    def _stop(self, seq: _Sequence) -> None:
        if not seq.done:
            seq.done = True
            seq.aborted = True
            seq.queue.put_nowait(_ABORTED)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._state != "running":
            raise Unavailable(f"the sim engine is {self._state}, not running", reason="ENGINE_NOT_READY")
        model = find_model(self.models(), request.model)
        input_tokens = self.count_tokens(prompt_text(request))
        check_context(model, input_tokens, request.max_tokens)
        if request.job_id in self._sequences:
            raise AlreadyExists(
                f"job {request.job_id} is already generating",
                reason="JOB_ALREADY_RUNNING",
                metadata={"job_id": request.job_id},
            )
        pieces: list[str] | None = None
        fail = ""
        if self._script:
            reply, fail = self._script[min(self._scripted, len(self._script) - 1)]
            self._scripted += 1
            pieces = _pieces(reply)
        seq = _Sequence(
            request.job_id, input_tokens, request.max_tokens, request.seed or 0, self._words, pieces
        )
        self._sequences[seq.job_id] = seq
        self._waiting.append(seq)
        self._wakeup.set()
        delivered = 0
        try:
            yield GenerationStarted(input_tokens)
            if pieces is not None and not pieces:
                seq.done = True
                seq.queue.put_nowait(_END)
            while True:
                item = await seq.queue.get()
                # Checked after every wait and every yield: once aborted, no
                # token (even one already queued) reaches the consumer.
                if seq.aborted:
                    break
                texts: list[str] = []
                next_item: _QueueItem | None = item
                while isinstance(next_item, str):
                    texts.append(next_item)
                    next_item = None if seq.queue.empty() else seq.queue.get_nowait()
                ended = isinstance(next_item, _End)
                if texts:
                    delivered += len(texts)
                    yield TokenDelta("".join(texts), len(texts))
                    if seq.aborted:
                        break
                if ended:
                    if fail:
                        raise Internal(f"scripted failure after {delivered} tokens", reason=fail)
                    scripted_out = pieces is not None and delivered >= len(pieces)
                    yield GenerationFinished("stop" if scripted_out else "length", input_tokens, delivered)
                    return
            yield GenerationFinished("aborted", input_tokens, delivered)
        finally:
            seq.done = True
            if self._sequences.get(seq.job_id) is seq:
                del self._sequences[seq.job_id]

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._active and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._admit(loop.time())
            await asyncio.sleep(self._decode_seconds_per_step)
            self._decode_step(loop.time())

    def _admit(self, now: float) -> None:
        while self._waiting and len(self._active) < self._max_batch:
            seq = self._waiting.popleft()
            if seq.done:
                continue
            seq.ready_at = now + seq.input_tokens * self._prefill_seconds_per_token
            self._active.append(seq)

    def _decode_step(self, now: float) -> None:
        still_active: list[_Sequence] = []
        for seq in self._active:
            if seq.done:
                continue
            if seq.ready_at <= now:
                seq.queue.put_nowait(seq.next_token())
                seq.produced += 1
                if seq.produced >= seq.max_tokens:
                    seq.done = True
                    seq.queue.put_nowait(_END)
                    continue
            still_active.append(seq)
        self._active = still_active


def _pieces(reply: str) -> list[str]:
    """A scripted reply as tokens: each a run of whitespace and the word
    after it (trailing whitespace joins the last), so they join back to the
    reply exactly."""
    pieces = re.findall(r"\s*\S+", reply)
    tail = reply[len("".join(pieces)) :]
    if tail and pieces:
        pieces[-1] += tail
    elif tail:
        pieces = [tail]
    return pieces

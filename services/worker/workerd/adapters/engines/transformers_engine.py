"""The ``transformers`` engine: a Hugging Face causal LM in this process.

The embedded default: it runs any local Hugging Face folder (config, weights,
tokenizer) on the CPU or a CUDA device, with a hand-written decode loop over
the KV cache. It batches nothing: concurrent generations interleave step by
step on one executor thread. For throughput, use the vllm engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from hearth.chat import render_plain
from hearth.errors import AlreadyExists, Unavailable
from workerd.domain.detokenizer import IncrementalDetokenizer
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

T = TypeVar("T")


@dataclass
class _Generation:
    """A running generation. Its tensors are touched only on the executor
    thread; the flags only on the event loop."""

    job_id: str
    temperature: float
    generator: torch.Generator | None
    detokenizer: IncrementalDetokenizer
    past: Any = None
    last_token: int = -1
    aborted: bool = False
    finished: bool = False


@dataclass(frozen=True)
class _Step:
    """What one forward step produced."""

    end_of_sequence: bool
    text: str
    token_count: int


class TransformersEngine(Engine):
    """A Hugging Face model loaded in-process (CPU or CUDA).

    start() loads the tokenizer and the model from ``path`` (a local folder;
    nothing is downloaded) on a dedicated single-thread executor, so torch is
    never entered by two threads at once and the event loop stays free. Each
    generation is a loop of forward steps with the KV cache: the prompt in one
    prefill step, then one token per step, greedy when ``temperature`` is 0,
    else sampled with a ``torch.Generator`` seeded from the request's seed.
    Every step is its own executor job, so concurrent generations interleave
    step by step, and the abort flag is checked between steps. Text is
    streamed through an :class:`IncrementalDetokenizer`, so a multi-byte
    character split over tokens arrives whole. A generation stops at an
    end-of-sequence token ("stop") or at ``max_tokens`` ("length").

    Args:
        model: the name and context length it serves (from the models config).
        path: the model folder.
        device: "cpu", "cuda", "cuda:N", or "auto" (cuda when available).
    """

    kind = "transformers"

    def __init__(
        self, model: ServedModel, path: Path | str, *, device: str = "auto", cpu_threads: int = 1
    ) -> None:
        self._model_info = model
        self._cpu_threads = cpu_threads
        self._path = Path(path)
        self._requested_device = device
        self._device: torch.device | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._generations: dict[str, _Generation] = {}
        self._state: Literal["new", "starting", "running", "closed"] = "new"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"the transformers engine cannot start when {self._state}")
        self._state = "starting"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workerd-torch")
        await self._on_executor(self._load)
        if self._state == "starting":
            self._state = "running"

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self._path.is_dir():
            raise FileNotFoundError(f"model folder {self._path} does not exist")
        device = _resolve_device(self._requested_device)
        if device.type == "cpu":
            # torch's intra-op threads spin while they wait; on a machine whose
            # cores are shared with the other services, more threads than the
            # model can use make every step many times slower.
            torch.set_num_threads(self._cpu_threads)
        tokenizer = AutoTokenizer.from_pretrained(self._path, local_files_only=True)
        # Checkpoint dtype on GPUs (usually bf16); float32 on CPUs, where half
        # precision is slow or unsupported.
        dtype: Any = "auto" if device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(self._path, local_files_only=True, dtype=dtype)
        model.to(device)
        model.eval()
        eos: set[int] = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(i) for i in source)
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit < self._model_info.context_length:
            log.warning(
                "model %r is configured with context_length %d but supports %d positions",
                self._model_info.name,
                self._model_info.context_length,
                limit,
            )
        self._device, self._tokenizer, self._model, self._eos_ids = device, tokenizer, model, frozenset(eos)
        log.info(
            "transformers engine loaded %r from %s on %s (%s)",
            self._model_info.name,
            self._path,
            device,
            next(model.parameters()).dtype,
        )

    async def cleanup(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        for generation in self._generations.values():
            generation.aborted = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # Queued behind any step in flight; the aborted generations submit no more.
            await asyncio.get_running_loop().run_in_executor(executor, self._unload)
        finally:
            executor.shutdown(wait=False)

    def _unload(self) -> None:
        self._model = None
        self._tokenizer = None
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.empty_cache()

    # -- queries -----------------------------------------------------------

    def models(self) -> list[ServedModel]:
        return [self._model_info]

    def count_tokens(self, text: str) -> int:
        tokenizer = self._require_running()[0]
        return len(tokenizer(text)["input_ids"])

    def stats(self) -> EngineStats:
        return EngineStats(running=sum(1 for g in self._generations.values() if not g.finished))

    async def abort(self, job_id: str) -> bool:
        generation = self._generations.get(job_id)
        if generation is None or generation.finished or generation.aborted:
            return False
        generation.aborted = True
        return True

    # -- generation --------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        tokenizer, _ = self._require_running()
        model = find_model(self.models(), request.model)
        prompt_ids: list[int] = await self._on_executor(functools.partial(self._encode_request, request))
        input_tokens = len(prompt_ids)
        check_context(model, input_tokens, request.max_tokens)
        self._require_running()  # cleanup() may have begun while the prompt was encoded
        if request.job_id in self._generations:
            raise AlreadyExists(
                f"job {request.job_id} is already generating",
                reason="JOB_ALREADY_RUNNING",
                metadata={"job_id": request.job_id},
            )
        generation = _Generation(
            job_id=request.job_id,
            temperature=request.temperature,
            generator=self._sampling_generator(request),
            detokenizer=IncrementalDetokenizer(
                functools.partial(tokenizer.decode, skip_special_tokens=True), prompt_ids
            ),
        )
        self._generations[request.job_id] = generation
        delivered = 0
        finish: FinishReason = "length"
        try:
            yield GenerationStarted(input_tokens)
            step_fn: Callable[[], _Step] = functools.partial(self._prefill, generation, prompt_ids)
            produced = 0
            while not generation.aborted:
                if self._state != "running":  # cleanup() aborts what it finds running
                    generation.aborted = True
                    break
                step = await self._on_executor(step_fn)
                if generation.aborted:
                    break
                if step.end_of_sequence:
                    finish = "stop"
                    break
                produced += 1
                if step.token_count:
                    delivered += step.token_count
                    yield TokenDelta(step.text, step.token_count)
                if produced >= request.max_tokens:
                    break
                step_fn = functools.partial(self._decode, generation)
            if not generation.aborted:
                text, count = generation.detokenizer.flush()
                if count:
                    delivered += count
                    yield TokenDelta(text, count)
            if generation.aborted:
                finish = "aborted"
            generation.finished = True
            yield GenerationFinished(finish, input_tokens, delivered)
        finally:
            generation.finished = True
            generation.past = None  # frees the KV cache now, not at the next GC
            if self._generations.get(request.job_id) is generation:
                del self._generations[request.job_id]

    def _sampling_generator(self, request: GenerationRequest) -> torch.Generator | None:
        if request.temperature <= 0:
            return None
        generator = torch.Generator(device=self._device or "cpu")
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.seed)
        return generator

    # -- executor-thread work ---------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])

    def _encode_request(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids. A conversation goes through the model's
        chat template (which adds its own special tokens), or is rendered
        plainly when the tokenizer has none."""
        if not request.messages:
            return self._encode(request.prompt)
        tokenizer = self._tokenizer
        if not getattr(tokenizer, "chat_template", None):
            return self._encode(render_plain(request.messages))
        text = tokenizer.apply_chat_template(
            [m.to_json() for m in request.messages], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefill(self, generation: _Generation, prompt_ids: list[int]) -> _Step:
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self._device)
            out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1)
            generation.past = out.past_key_values
            return self._take_token(generation, out.logits[:, -1, :])

    def _decode(self, generation: _Generation) -> _Step:
        with torch.inference_mode():
            ids = torch.tensor([[generation.last_token]], device=self._device)
            out = self._model(
                input_ids=ids, past_key_values=generation.past, use_cache=True, logits_to_keep=1
            )
            generation.past = out.past_key_values
            return self._take_token(generation, out.logits[:, -1, :])

    def _take_token(self, generation: _Generation, logits: torch.Tensor) -> _Step:
        if generation.generator is None:
            token = int(torch.argmax(logits, dim=-1).item())
        else:
            probs = torch.softmax(logits.float() / generation.temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generation.generator).item())
        generation.last_token = token
        if token in self._eos_ids:
            return _Step(True, "", 0)
        text, count = generation.detokenizer.push(token)
        return _Step(False, text, count)

    # -- plumbing ----------------------------------------------------------

    def _require_running(self) -> tuple[Any, Any]:
        if self._state != "running" or self._tokenizer is None:
            raise Unavailable(
                f"the transformers engine is {self._state}, not running", reason="ENGINE_NOT_READY"
            )
        return self._tokenizer, self._model

    async def _on_executor(self, fn: Callable[[], T]) -> T:
        executor = self._executor
        if executor is None:
            raise Unavailable("the transformers engine is closed", reason="ENGINE_NOT_READY")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except RuntimeError as err:
            if "shutdown" in str(err):  # cleanup() raced this call
                raise Unavailable("the transformers engine is closed", reason="ENGINE_NOT_READY") from err
            raise


def _resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available")
    return device

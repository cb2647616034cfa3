"""The transformers engine, on the random tiny Llama (CPU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from hearth.errors import InvalidArgument, Unavailable
from workerd.adapters.engines.transformers_engine import TransformersEngine
from workerd.domain import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)

pytestmark = pytest.mark.unit

CONTEXT_LENGTH = 128
PROMPT = "The hearth was the centre of the old house."


@pytest.fixture
def tiny_model(tiny_model_dir: Path) -> Path:
    """The session's tiny model (tests/conftest.py): built once, shared."""
    return tiny_model_dir


@pytest.fixture
async def engine(tiny_model: Path) -> AsyncIterator[TransformersEngine]:
    transformers = TransformersEngine(ServedModel("tiny", CONTEXT_LENGTH), tiny_model, device="cpu")
    await transformers.start()
    yield transformers
    await transformers.cleanup()


def request(job_id: str, max_tokens: int = 12, **kw: object) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, model="tiny", prompt=PROMPT, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


async def collect(engine: TransformersEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(req)]


def deltas(events: list[GenerationEvent]) -> list[TokenDelta]:
    return [e for e in events if isinstance(e, TokenDelta)]


async def test_streams_tokens_up_to_max_tokens(engine: TransformersEngine) -> None:
    events = await collect(engine, request("j1", max_tokens=12))

    input_tokens = engine.count_tokens(PROMPT)
    assert events[0] == GenerationStarted(input_tokens=input_tokens)
    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    # Greedy on these seeded random weights runs to the limit (no end-of-sequence token).
    assert finished == GenerationFinished("length", input_tokens=input_tokens, output_tokens=12)
    assert sum(d.token_count for d in deltas(events)) == 12
    assert "".join(d.text for d in deltas(events))


async def test_greedy_is_deterministic_and_seeded_sampling_reproducible(engine: TransformersEngine) -> None:
    greedy = [await collect(engine, request(f"g{i}", max_tokens=10)) for i in range(2)]
    sampled = [
        await collect(engine, request(f"s{i}", max_tokens=10, temperature=1.0, seed=7)) for i in range(2)
    ]

    assert greedy[0][1:] == greedy[1][1:]
    assert sampled[0][1:] == sampled[1][1:]
    assert sampled[0][1:-1] != greedy[0][1:-1]


async def test_abort_mid_stream(engine: TransformersEngine) -> None:
    stream = engine.generate(request("j1", max_tokens=100))
    started = await anext(stream)
    first = await anext(stream)
    assert isinstance(started, GenerationStarted)
    assert isinstance(first, TokenDelta)

    assert await engine.abort("j1") is True
    rest = [event async for event in stream]

    assert rest == [GenerationFinished("aborted", started.input_tokens, first.token_count)]
    assert await engine.abort("j1") is False
    assert engine.stats().running == 0


async def test_concurrent_generations_interleave(engine: TransformersEngine) -> None:
    order: list[str] = []

    async def run(job_id: str) -> None:
        async for event in engine.generate(request(job_id, max_tokens=15)):
            order.append(f"{job_id}:{type(event).__name__}")

    await asyncio.gather(run("a"), run("b"))

    # Steps alternate on the one executor thread: b streams before a is done.
    assert order.index("b:TokenDelta") < order.index("a:GenerationFinished")
    assert order.count("a:GenerationFinished") == order.count("b:GenerationFinished") == 1


async def test_prompt_plus_max_tokens_over_context_is_rejected(engine: TransformersEngine) -> None:
    input_tokens = engine.count_tokens(PROMPT)

    with pytest.raises(InvalidArgument) as caught:
        await anext(engine.generate(request("j1", max_tokens=CONTEXT_LENGTH - input_tokens + 1)))

    assert caught.value.reason == "CONTEXT_TOO_LONG"
    assert caught.value.field == "max_tokens"
    assert caught.value.metadata["context_length"] == str(CONTEXT_LENGTH)


async def test_cleanup_twice_then_generate_is_unavailable(tiny_model: Path) -> None:
    transformers = TransformersEngine(ServedModel("tiny", CONTEXT_LENGTH), tiny_model, device="cpu")
    await transformers.start()
    await transformers.cleanup()
    await transformers.cleanup()

    with pytest.raises(Unavailable) as caught:
        await anext(transformers.generate(request("j1")))

    assert caught.value.reason == "ENGINE_NOT_READY"


async def test_start_fails_on_a_missing_folder_and_cleanup_still_runs(tmp_path: Path) -> None:
    transformers = TransformersEngine(ServedModel("tiny", CONTEXT_LENGTH), tmp_path / "missing", device="cpu")

    with pytest.raises(FileNotFoundError):
        await transformers.start()
    await transformers.cleanup()
    await transformers.cleanup()

    assert transformers.stats().running == 0


async def test_cleanup_aborts_a_running_generation(tiny_model: Path) -> None:
    transformers = TransformersEngine(ServedModel("tiny", CONTEXT_LENGTH), tiny_model, device="cpu")
    await transformers.start()
    stream = transformers.generate(request("j1", max_tokens=100))
    await anext(stream)
    await anext(stream)

    await transformers.cleanup()
    rest = [event async for event in stream]

    assert len(rest) == 1
    assert isinstance(rest[0], GenerationFinished)
    assert rest[0].finish_reason == "aborted"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_generates_on_cuda(tiny_model: Path) -> None:
    transformers = TransformersEngine(ServedModel("tiny", CONTEXT_LENGTH), tiny_model, device="cuda")
    await transformers.start()
    try:
        events = await collect(transformers, request("j1", max_tokens=8, temperature=0.8, seed=1))
    finally:
        await transformers.cleanup()

    finished = events[-1]
    assert isinstance(finished, GenerationFinished)
    assert finished.output_tokens == sum(d.token_count for d in deltas(events))
    assert finished.finish_reason in ("length", "stop")

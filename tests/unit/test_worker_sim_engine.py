"""The sim engine: a simulator of a GPU engine with continuous batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hearth.errors import InvalidArgument, NotFound
from workerd.adapters.engines.sim_engine import SimEngine
from workerd.domain import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    TokenDelta,
)

pytestmark = pytest.mark.unit


@pytest.fixture
async def engine() -> AsyncIterator[SimEngine]:
    sim = SimEngine("sim", decode_seconds_per_step=0.001, context_length=64, max_batch=8)
    await sim.start()
    yield sim
    await sim.cleanup()


def request(
    job_id: str, max_tokens: int = 5, prompt: str = "one two three", seed: int | None = None
) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, model="sim", prompt=prompt, max_tokens=max_tokens, seed=seed)


async def collect(sim: SimEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in sim.generate(req)]


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_runs_to_max_tokens_with_finish_length(engine: SimEngine) -> None:
    events = await collect(engine, request("j1", max_tokens=7))

    assert events[0] == GenerationStarted(input_tokens=3)
    assert events[-1] == GenerationFinished("length", input_tokens=3, output_tokens=7)
    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert sum(d.token_count for d in deltas) == 7
    assert len(text_of(events).split()) == 7


async def test_same_seed_and_job_give_the_same_text(engine: SimEngine) -> None:
    first = text_of(await collect(engine, request("j1", max_tokens=10, seed=42)))
    again = text_of(await collect(engine, request("j1", max_tokens=10, seed=42)))
    other_seed = text_of(await collect(engine, request("j1", max_tokens=10, seed=43)))

    assert first == again
    assert first != other_seed


async def test_abort_ends_with_aborted_and_no_more_tokens(engine: SimEngine) -> None:
    stream = engine.generate(request("j1", max_tokens=60))
    await anext(stream)
    first = await anext(stream)
    assert isinstance(first, TokenDelta)
    # Let tokens pile up in the queue: none of them may be delivered after abort.
    await asyncio.sleep(0.02)

    assert await engine.abort("j1") is True
    rest = [event async for event in stream]

    assert rest == [GenerationFinished("aborted", input_tokens=3, output_tokens=first.token_count)]
    assert await engine.abort("j1") is False
    assert engine.stats().running == 0


async def test_abort_of_unknown_or_finished_job_is_false(engine: SimEngine) -> None:
    await collect(engine, request("done", max_tokens=2))

    assert await engine.abort("done") is False
    assert await engine.abort("never-seen") is False


async def test_sequences_over_max_batch_wait_for_a_slot() -> None:
    sim = SimEngine("sim", decode_seconds_per_step=0.001, max_batch=2)
    await sim.start()
    order: list[str] = []
    a_streaming = asyncio.Event()

    async def run(job_id: str, max_tokens: int) -> None:
        async for event in sim.generate(request(job_id, max_tokens=max_tokens)):
            if isinstance(event, TokenDelta):
                order.append(f"{job_id}:token")
                if job_id == "a":
                    a_streaming.set()
            elif isinstance(event, GenerationFinished):
                order.append(f"{job_id}:finished")

    try:
        tasks = [asyncio.create_task(run(job, 3)) for job in ("a", "b")]
        await asyncio.sleep(0)  # a and b are queued first, in this order
        tasks.append(asyncio.create_task(run("c", 3)))
        await asyncio.sleep(0)
        await a_streaming.wait()
        stats = sim.stats()
        await asyncio.gather(*tasks)
    finally:
        await sim.cleanup()

    assert (stats.running, stats.waiting) == (2, 1)
    first_c_token = order.index("c:token")
    assert order.index("a:finished") < first_c_token
    assert order.index("b:finished") < first_c_token


async def test_prompt_plus_max_tokens_over_context_is_rejected(engine: SimEngine) -> None:
    too_long = " ".join(["word"] * 60)

    with pytest.raises(InvalidArgument) as caught:
        await anext(engine.generate(request("j1", max_tokens=5, prompt=too_long)))

    assert caught.value.reason == "CONTEXT_TOO_LONG"
    assert caught.value.field == "max_tokens"
    assert engine.stats().waiting == 0


async def test_unknown_model_is_not_found(engine: SimEngine) -> None:
    req = GenerationRequest(job_id="j1", model="gpt-9", prompt="hi", max_tokens=1)

    with pytest.raises(NotFound) as caught:
        await anext(engine.generate(req))

    assert caught.value.reason == "MODEL_NOT_FOUND"


async def test_cleanup_aborts_running_generations_and_is_idempotent() -> None:
    sim = SimEngine("sim", decode_seconds_per_step=0.001)
    await sim.start()
    stream = sim.generate(request("j1", max_tokens=1000))
    await anext(stream)

    await sim.cleanup()
    await sim.cleanup()
    rest = [event async for event in stream]

    assert isinstance(rest[-1], GenerationFinished)
    assert rest[-1].finish_reason == "aborted"


async def test_cleanup_without_start_is_a_no_op() -> None:
    sim = SimEngine("sim")

    await sim.cleanup()
    await sim.cleanup()

    assert sim.stats().running == 0


async def test_a_slow_consumer_gets_coalesced_deltas(engine: SimEngine) -> None:
    stream = engine.generate(request("j1", max_tokens=20))
    await anext(stream)
    await asyncio.sleep(0.1)  # the whole completion is produced meanwhile

    events = [event async for event in stream]

    deltas = [e for e in events if isinstance(e, TokenDelta)]
    assert len(deltas) < 20
    assert sum(d.token_count for d in deltas) == 20
    assert events[-1] == GenerationFinished("length", input_tokens=3, output_tokens=20)


async def test_sustains_512_concurrent_sequences() -> None:
    sim = SimEngine("sim", decode_seconds_per_step=0.005, max_batch=256)
    await sim.start()
    try:
        results = await asyncio.gather(*(collect(sim, request(f"j{i}", max_tokens=8)) for i in range(512)))
    finally:
        await sim.cleanup()

    finished = [events[-1] for events in results]
    assert all(f == GenerationFinished("length", input_tokens=3, output_tokens=8) for f in finished)

"""ModelSet: loading, unloading, idle unloading and the VRAM preflight of a
worker's models, with the sim engine and a fake engine of our own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearth.errors import FailedPrecondition, NotFound, Unavailable
from hearth.runtime import load_settings
from workerd.__main__ import model_spec
from workerd.adapters.engines.sim_engine import SimEngine
from workerd.config import Settings
from workerd.domain import (
    Engine,
    EngineStats,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
)
from workerd.domain.model_set import DEFAULT_LOAD_ESTIMATE_SECONDS, ModelSet, ModelSpec
from workerd.domain.worker_status import GpuStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

GIB = 1024**3


class FakeEngine(Engine):
    """An engine whose start() can be held at a gate or made to fail, and
    whose generations run until aborted or cleaned up."""

    kind = "fake"

    def __init__(self, name: str, *, gate: asyncio.Event | None = None, fail: str = "") -> None:
        self.name = name
        self.gate = gate
        self.fail = fail
        self.started = False
        self.cleaned = 0
        self.stopped: dict[str, asyncio.Event] = {}
        self.load = EngineStats()

    async def start(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError(self.fail)
        self.started = True

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        stop = self.stopped.setdefault(request.job_id, asyncio.Event())
        yield GenerationStarted(1)
        await stop.wait()
        yield GenerationFinished("aborted", 1, 0)

    async def abort(self, job_id: str) -> bool:
        stop = self.stopped.get(job_id)
        if stop is None or stop.is_set():
            return False
        stop.set()
        return True

    async def cleanup(self) -> None:
        self.cleaned += 1
        for stop in self.stopped.values():
            stop.set()

    def stats(self) -> EngineStats:
        return self.load

    def models(self) -> list[ServedModel]:
        return [ServedModel(self.name, 1024)]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class Factory:
    """Builds FakeEngines and remembers them; ``gate`` and ``fail`` apply to the next builds."""

    def __init__(self) -> None:
        self.built: list[FakeEngine] = []
        self.gate: asyncio.Event | None = None
        self.fail = ""

    def __call__(self, name: str) -> Engine:
        engine = FakeEngine(name, gate=self.gate, fail=self.fail)
        self.built.append(engine)
        return engine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(name: str, *, vram_gib: float = 0, estimate: float | None = None) -> ModelSpec:
    return ModelSpec(ServedModel(name, 1024), int(vram_gib * GIB), load_estimate_seconds=estimate)


def gpu(free_gib: float) -> GpuStatus:
    return GpuStatus(
        present=True, name="RTX 5090", memory_total_bytes=32 * GIB, memory_free_bytes=int(free_gib * GIB)
    )


def model_set(
    factory: Factory,
    *specs: ModelSpec,
    free_gib: float = 32,
    clock: Clock | None = None,
    **options: object,
) -> ModelSet:
    return ModelSet(
        specs or (spec("a"), spec("b")),
        factory,
        read_gpu=lambda: gpu(free_gib),
        clock=clock or Clock(),
        **options,  # type: ignore[arg-type]
    )


def request(job_id: str, model: str, max_tokens: int = 5) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, model=model, prompt="one two", max_tokens=max_tokens)


async def settle() -> None:
    """Let every ready task run (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_load_is_idempotent_and_concurrent_callers_share_one_load() -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    changes: list[str] = []
    models = model_set(factory, on_change=lambda: changes.append("changed"))

    first = asyncio.create_task(models.load("a"))
    second = asyncio.create_task(models.load("a"))
    await settle()
    assert models.state("a") == "loading"
    factory.gate.set()
    statuses = await asyncio.gather(first, second)
    again = await models.load("a")

    assert [s.state for s in (*statuses, again)] == ["loaded"] * 3
    assert len(factory.built) == 1 and factory.built[0].started
    assert models.engine_for("a") is factory.built[0]
    assert changes == ["changed", "changed"]  # loading, loaded
    await models.cleanup()


async def test_not_loadable_is_model_not_found_and_unloaded_is_model_not_loaded() -> None:
    models = model_set(Factory())

    with pytest.raises(NotFound) as unknown:
        models.engine_for("gpt-9")
    with pytest.raises(Unavailable) as unloaded:
        models.engine_for("b")
    with pytest.raises(NotFound):
        await models.load("gpt-9")

    assert unknown.value.reason == "MODEL_NOT_FOUND"
    assert unknown.value.metadata["model"] == "gpt-9"
    assert unloaded.value.reason == "MODEL_NOT_LOADED"
    assert unloaded.value.metadata["model"] == "b"
    assert unloaded.value.metadata["state"] == "unloaded"


async def test_unload_refuses_new_generations_at_once_and_waits_for_running_ones() -> None:
    factory = Factory()
    models = model_set(factory)
    await models.load("a")
    engine = factory.built[0]

    with models.generation("a", "job-1"):
        unloading = asyncio.create_task(models.unload("a"))
        await settle()
        assert models.state("a") == "unloading"
        with pytest.raises(Unavailable) as refused:
            with models.generation("a", "job-2"):
                pass
        assert not unloading.done() and engine.cleaned == 0
        assert [m.running for m in models.describe()] == [1, 0]
    status = await unloading

    assert refused.value.reason == "MODEL_NOT_LOADED"
    assert refused.value.metadata["state"] == "unloading"
    assert status.state == "unloaded" and engine.cleaned == 1
    assert (await models.unload("a")).state == "unloaded"  # unloading twice is fine


async def test_force_unload_aborts_the_running_generation() -> None:
    models = ModelSet(
        [spec("a")],
        lambda name: SimEngine(name, decode_seconds_per_step=0.001, max_batch=4),
        read_gpu=GpuStatus,
    )
    await models.load("a")
    events: list[GenerationEvent] = []

    async def generate() -> None:
        with models.generation("a", "long-1") as engine:
            async for event in engine.generate(request("long-1", "a", max_tokens=5000)):
                events.append(event)

    running = asyncio.create_task(generate())
    while len(events) < 2:
        await asyncio.sleep(0.005)
    await models.unload("a", force=True)
    await running

    finished = events[-1]
    assert isinstance(finished, GenerationFinished) and finished.finish_reason == "aborted"
    assert models.state("a") == "unloaded"
    await models.cleanup()


async def test_a_failed_load_keeps_the_error_and_a_later_load_can_succeed() -> None:
    factory = Factory()
    factory.fail = "no weights in /models/a"
    models = model_set(factory)

    with pytest.raises(Unavailable) as failed:
        await models.load("a")
    status = models.describe()[0]
    assert failed.value.reason == "ENGINE_ERROR"
    assert failed.value.metadata == {"model": "a", "error": "no weights in /models/a"}
    assert (status.state, status.error) == ("failed", "no weights in /models/a")
    assert factory.built[0].cleaned == 1
    with pytest.raises(Unavailable) as not_loaded:
        models.engine_for("a")
    assert not_loaded.value.metadata["state"] == "failed"

    factory.fail = ""
    assert (await models.load("a")).state == "loaded"
    assert models.describe()[0].error == ""
    await models.cleanup()


async def test_unloading_a_failed_model_clears_it() -> None:
    factory = Factory()
    factory.fail = "boom"
    models = model_set(factory)
    with pytest.raises(Unavailable):
        await models.load("a")

    status = await models.unload("a")

    assert (status.state, status.error) == ("unloaded", "")


async def test_the_vram_preflight_refuses_a_model_that_does_not_fit() -> None:
    factory = Factory()
    models = model_set(factory, spec("big", vram_gib=24), spec("small", vram_gib=4), free_gib=20)

    with pytest.raises(FailedPrecondition) as refused:
        await models.load("big")
    loaded = await models.load("small")

    assert refused.value.reason == "INSUFFICIENT_VRAM"
    assert refused.value.metadata["model"] == "big"
    assert refused.value.metadata["needed_mib"] == str(24 * 1024)
    assert models.state("big") == "unloaded"
    assert [e.name for e in factory.built] == ["small"]  # nothing was built for the refused one
    assert loaded.vram_estimate_bytes == 4 * GIB
    await models.cleanup()


async def test_the_preflight_counts_loads_under_way_and_the_reserve() -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    models = model_set(factory, spec("a", vram_gib=6), spec("b", vram_gib=6), free_gib=10)
    loading = asyncio.create_task(models.load("a"))
    await settle()

    with pytest.raises(FailedPrecondition) as refused:
        await models.load("b")  # 10 GiB free, 6 of them promised to a
    factory.gate.set()
    await loading
    reserved = model_set(Factory(), spec("a", vram_gib=6), free_gib=10, reserve_bytes=5 * GIB)
    with pytest.raises(FailedPrecondition) as short:
        await reserved.load("a")

    assert refused.value.reason == short.value.reason == "INSUFFICIENT_VRAM"
    assert short.value.metadata["reserve_mib"] == str(5 * 1024)
    await models.cleanup()


async def test_unknown_vram_or_no_gpu_skips_the_preflight() -> None:
    no_size = model_set(Factory(), spec("a"), free_gib=0)
    no_gpu = ModelSet([spec("a", vram_gib=64)], Factory(), read_gpu=GpuStatus)

    assert (await no_size.load("a")).state == "loaded"
    assert (await no_gpu.load("a")).state == "loaded"
    await no_size.cleanup()
    await no_gpu.cleanup()


async def test_idle_models_are_unloaded_but_the_last_used_one_stays() -> None:
    clock = Clock()
    factory = Factory()
    models = model_set(factory, spec("a"), spec("b"), spec("c"), clock=clock, idle_unload_seconds=60)
    for name in ("a", "b", "c"):
        await models.load(name)
        clock.now += 1
    with models.generation("c", "job-1"):
        clock.now += 120
        # c runs a generation: not idle. a and b are; c is loaded, so both go.
        assert sorted(await models.unload_idle()) == ["a", "b"]
    assert [m.state for m in models.describe()] == ["unloaded", "unloaded", "loaded"]

    clock.now += 59
    assert await models.unload_idle() == []  # c was last used 59 s ago
    clock.now += 120
    assert await models.unload_idle() == []  # idle, but the last one loaded
    assert models.state("c") == "loaded"
    await models.cleanup()


async def test_without_keep_one_loaded_every_idle_model_goes() -> None:
    clock = Clock()
    models = model_set(Factory(), clock=clock, idle_unload_seconds=5, keep_one_loaded=False)
    await models.load("a")
    await models.load("b")
    clock.now += 5

    assert sorted(await models.unload_idle()) == ["a", "b"]


async def test_the_idle_loop_unloads_in_the_background() -> None:
    clock = Clock()
    models = model_set(
        Factory(), clock=clock, idle_unload_seconds=30, idle_check_seconds=0.01, keep_one_loaded=False
    )
    await models.load("a")
    await models.start()
    await models.start()  # twice is fine
    clock.now += 31

    async with asyncio.timeout(2):
        while models.state("a") != "unloaded":
            await asyncio.sleep(0.01)
    await models.stop()
    await models.stop()


async def test_abort_finds_the_engine_running_the_job() -> None:
    factory = Factory()
    models = model_set(factory)
    await models.load("a")
    await models.load("b")
    engine_b = factory.built[1]
    events: list[GenerationEvent] = []

    async def generate() -> None:
        with models.generation("b", "job-b") as engine:
            async for event in engine.generate(request("job-b", "b")):
                events.append(event)

    running = asyncio.create_task(generate())
    await settle()
    assert await models.abort("job-b") is True
    await running
    assert await models.abort("job-b") is False

    assert "job-b" in engine_b.stopped
    assert isinstance(events[-1], GenerationFinished) and events[-1].finish_reason == "aborted"
    await models.cleanup()


async def test_stats_sum_the_engines_and_describe_reports_estimates() -> None:
    factory = Factory()
    clock = Clock()
    models = model_set(
        factory,
        spec("a"),
        spec("b", vram_gib=8),
        spec("c", estimate=0.5),
        ModelSpec(ServedModel("remote", 200_000, supports_tools=True, remote=True)),
        clock=clock,
    )
    factory.gate = asyncio.Event()
    loading = asyncio.create_task(models.load("a"))
    await settle()
    clock.now += 3.5
    factory.gate.set()
    await loading
    factory.gate = None
    await models.load("c")
    factory.built[0].load = EngineStats(running=2, waiting=1, kv_cache_usage=0.25)
    factory.built[1].load = EngineStats(running=1, waiting=0, kv_cache_usage=0.5)

    stats = models.stats()
    estimates = {m.name: m.load_estimate_seconds for m in models.describe()}
    remote = models.describe()[3]

    assert stats == EngineStats(running=3, waiting=1, kv_cache_usage=0.5)
    assert estimates == {"a": 3.5, "b": 2.0 + 8.0, "c": 0.0, "remote": 1.0}
    assert (remote.supports_tools, remote.remote, remote.context_length) == (True, True, 200_000)
    assert models.names() == ["a", "b", "c", "remote"]
    assert DEFAULT_LOAD_ESTIMATE_SECONDS == model_set(Factory()).describe()[0].load_estimate_seconds
    await models.cleanup()


async def test_cleanup_cleans_every_engine_and_refuses_later_loads() -> None:
    factory = Factory()
    models = model_set(factory)
    await models.load("a")
    factory.gate = asyncio.Event()
    loading = asyncio.create_task(models.load("b"))
    await settle()

    await models.cleanup()
    await models.cleanup()

    assert [e.cleaned >= 1 for e in factory.built] == [True, True]
    assert [m.state for m in models.describe()] == ["unloaded", "unloaded"]
    with pytest.raises(Unavailable) as stopped:
        await loading
    assert stopped.value.reason == "WORKER_STOPPING"
    with pytest.raises(Unavailable):
        await models.load("a")


async def test_the_sim_engine_serves_only_once_its_simulated_load_is_over() -> None:
    engine = SimEngine("s", load_seconds=0.05, decode_seconds_per_step=0.001)
    starting = asyncio.create_task(engine.start())
    await settle()

    with pytest.raises(Unavailable) as loading:
        async for _ in engine.generate(request("early", "s")):
            pass
    await starting
    events = [event async for event in engine.generate(request("later", "s", max_tokens=2))]
    await engine.cleanup()

    assert loading.value.reason == "ENGINE_NOT_READY"
    assert isinstance(events[-1], GenerationFinished) and events[-1].output_tokens == 2


def test_the_worker_settings_give_one_spec_per_loadable_model(tmp_path: Path) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text("models:\n  - name: b\n    vram_mib: 2048\n")
    flags = [
        "--config",
        str(config),
        "--engine",
        "sim",
        "--model",
        "a",
        "--loadable-models",
        '["b", "a", "b"]',
    ]
    reserves = ["--gpu-reserve-mib", "100", "--vllm-reserve-mib", "300"]
    settings = load_settings(Settings, [*flags, "--sim-load-seconds", "0.5", *reserves])

    specs = [model_spec(settings, name) for name in settings.loadable()]

    assert [s.name for s in specs] == ["a", "b"]  # the configured model first, no repeats
    assert [s.vram_bytes for s in specs] == [0, 2048 * 1024 * 1024]
    assert [s.load_estimate_seconds for s in specs] == [0.5, 0.5]
    assert settings.preflight_reserve_bytes() == 300 * 1024 * 1024


def test_a_loadable_model_outside_the_models_list_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text(f"models:\n  - name: a\n    path: {tmp_path}\nworker:\n  model: a\n")

    with pytest.raises(SystemExit) as refused:
        load_settings(Settings, ["--config", str(config), "--loadable-models", '["x"]'])

    assert "worker.loadable_models: 'x' is not in models: (a)" in str(refused.value)

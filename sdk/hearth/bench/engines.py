"""`hearth bench engines`: a real engine through the stack against the same
engine called directly, as ratios measured in one run.

For each device (the CPU, and CUDA when torch sees a GPU), the transformers
engine serves the same model twice: in this process ("direct") and behind the
whole stack (orchestratord, routerd, pool-managerd, workerd, memoryd, NATS,
PostgreSQL) driven through the SDK. Decoding is greedy with the same prompts,
so both ways generate the same tokens; the report checks that they did.
Rounds alternate direct and stack so that drift (thermal, other load) falls
on both alike. Reported per device:

- tokens per second over sequential requests (the sum of tokens over the sum
  of request times, submit to last token), direct and through the stack, and
  their ratio (target: at least 0.97);
- the same with ``streams`` concurrent requests;
- time to first token p50, direct and through the stack, and what the stack
  adds.

The model is a random Llama built on the fly (``--model-size``: ``small``,
GPT-2 small's shape, by default; ``tiny`` for the test model) unless
``--model PATH`` names a Hugging Face folder; its text is noise, its timing
is real.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hearth.bench.harness import run_bench
from hearth.bench.stats import percentile

MODEL = "bench-model"
#: Random Llama shapes (hidden size, layers, heads) for --model-size.
MODEL_SIZES = {"tiny": (64, 2, 4), "small": (768, 12, 12)}
PROMPTS = (
    "Write a short note about the queue and the workers.",
    "Summarise what the orchestrator does with a job.",
    "List three things a homelab GPU stack should log.",
    "Explain time to first token to a new engineer.",
)


@dataclass(frozen=True)
class EnginesBenchConfig:
    #: Tokens each request generates at most.
    max_tokens: int = 128
    #: Sequential requests per round and way.
    requests: int = 8
    #: Concurrent requests in the concurrent measurement.
    streams: int = 4
    #: Rounds, alternating direct and stack.
    rounds: int = 3
    #: A Hugging Face model folder; None builds a random Llama of ``model_size``.
    model_path: str | None = None
    #: tiny (64 wide, 2 layers: about a millisecond a token on a CPU, so the
    #: stack's fixed cost per request dominates) or small (GPT-2 small's shape,
    #: a realistic cost per token).
    model_size: str = "small"
    #: Devices to measure; None means cpu, plus cuda when available.
    devices: tuple[str, ...] | None = None
    cpu_threads: int = 1


@dataclass
class Measurement:
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan


@dataclass
class DeviceReport:
    device: str
    direct_tokens_per_second: float
    stack_tokens_per_second: float
    ratio: float
    concurrent_direct_tokens_per_second: float
    concurrent_stack_tokens_per_second: float
    concurrent_ratio: float
    ttft_direct_p50_ms: float
    ttft_stack_p50_ms: float
    ttft_added_p50_ms: float
    #: The stack generated exactly the direct engine's text for every prompt.
    same_output: bool
    tokens_measured: int


@dataclass
class EnginesBenchReport:
    config: dict[str, Any]
    devices: list[DeviceReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the two ways -----------------------------------------------------------------


async def _direct_one(engine: Any, prompt: str, max_tokens: int, into: Measurement) -> None:
    from workerd.domain.engine import GenerationFinished, GenerationRequest, TokenDelta

    request = GenerationRequest(str(uuid.uuid4()), MODEL, prompt, max_tokens)
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    async for event in engine.generate(request):
        if isinstance(event, TokenDelta):
            if first is None:
                first = time.perf_counter() - started
            text.append(event.text)
        elif isinstance(event, GenerationFinished):
            into.tokens += event.output_tokens
    into.seconds += time.perf_counter() - started
    if first is not None:
        into.ttft.append(first)
    into.outputs.append("".join(text))


async def _stack_one(client: Any, prompt: str, max_tokens: int, into: Measurement) -> None:
    started = time.perf_counter()
    job = await client.submit(prompt, model=MODEL, max_tokens=max_tokens)
    first: float | None = None
    text: list[str] = []
    async for event in client.watch(job.job_id):
        kind = event.WhichOneof("kind")
        if kind == "tokens":
            if first is None:
                first = time.perf_counter() - started
            text.append(event.tokens.text)
        elif kind == "completed":
            into.tokens += event.completed.output_tokens
        elif kind in ("failed", "cancelled"):
            raise RuntimeError(f"bench job {job.job_id} ended {kind}: {event}")
    into.seconds += time.perf_counter() - started
    if first is not None:
        into.ttft.append(first)
    into.outputs.append("".join(text))


async def _sequential(run_one: Any, target: Any, config: EnginesBenchConfig, into: Measurement) -> None:
    for i in range(config.requests):
        await run_one(target, PROMPTS[i % len(PROMPTS)], config.max_tokens, into)


async def _concurrent(run_one: Any, target: Any, config: EnginesBenchConfig, into: Measurement) -> None:
    # Wall time of the batch: every stream's tokens over the time they all took.
    batch = Measurement()
    started = time.perf_counter()
    await asyncio.gather(
        *(run_one(target, PROMPTS[i % len(PROMPTS)], config.max_tokens, batch) for i in range(config.streams))
    )
    into.tokens += batch.tokens
    into.seconds += time.perf_counter() - started


# -- one device -------------------------------------------------------------------


def _stack_config(model_path: str, device: str, config: EnginesBenchConfig) -> dict[str, Any]:
    return {
        "models": [{"name": MODEL, "path": model_path, "context_length": 2048, "roles": ["default"]}],
        "worker": {
            "engine": "transformers",
            "model": MODEL,
            "device": device,
            "cpu_threads": config.cpu_threads,
            "max_concurrency": max(8, config.streams),
        },
        "log_level": "warning",
        "trace_to_files": False,
    }


async def _measure_device(
    device: str, model_path: str, config: EnginesBenchConfig, data_dir: Path, progress: Any
) -> DeviceReport:
    from hearth.stack import Stack, StackOptions
    from workerd.adapters.engines.transformers_engine import TransformersEngine
    from workerd.domain.engine import ServedModel

    engine = TransformersEngine(
        ServedModel(MODEL, 2048), model_path, device=device, cpu_threads=config.cpu_threads
    )
    log = (data_dir / f"stack-{device}.log").open("w")
    stack = Stack(
        StackOptions(
            data_dir=data_dir / f"stack-{device}",
            config=_stack_config(model_path, device, config),
            log_sink=log,
        )
    )
    progress(f"{device}: starting the engine and the stack")
    await engine.start()
    await asyncio.to_thread(stack.start)
    direct, stack_seq = Measurement(), Measurement()
    direct_conc, stack_conc = Measurement(), Measurement()
    try:
        async with stack.client() as client:
            # Warm up both ways (first CUDA kernels, channels, caches).
            await _sequential(_direct_one, engine, config, Measurement())
            await _sequential(_stack_one, client, config, Measurement())
            for round_index in range(config.rounds):
                progress(f"{device}: round {round_index + 1} of {config.rounds}")
                await _sequential(_direct_one, engine, config, direct)
                await _sequential(_stack_one, client, config, stack_seq)
                await _concurrent(_direct_one, engine, config, direct_conc)
                await _concurrent(_stack_one, client, config, stack_conc)
    finally:
        await asyncio.to_thread(stack.stop)
        await engine.cleanup()
        log.close()
    ms = 1000.0
    ttft_direct = percentile(direct.ttft, 50) * ms
    ttft_stack = percentile(stack_seq.ttft, 50) * ms
    return DeviceReport(
        device=device,
        direct_tokens_per_second=direct.tokens_per_second,
        stack_tokens_per_second=stack_seq.tokens_per_second,
        ratio=stack_seq.tokens_per_second / direct.tokens_per_second,
        concurrent_direct_tokens_per_second=direct_conc.tokens_per_second,
        concurrent_stack_tokens_per_second=stack_conc.tokens_per_second,
        concurrent_ratio=stack_conc.tokens_per_second / direct_conc.tokens_per_second,
        ttft_direct_p50_ms=ttft_direct,
        ttft_stack_p50_ms=ttft_stack,
        ttft_added_p50_ms=ttft_stack - ttft_direct,
        same_output=direct.outputs == stack_seq.outputs,
        tokens_measured=direct.tokens + stack_seq.tokens + direct_conc.tokens + stack_conc.tokens,
    )


def default_devices() -> tuple[str, ...]:
    import torch

    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


async def _measure(config: EnginesBenchConfig, data_dir: Path, progress: Any) -> EnginesBenchReport:
    from hearth.tinymodel import build_tiny_llama

    shape = MODEL_SIZES[config.model_size]
    model_path = config.model_path or str(
        build_tiny_llama(
            data_dir / f"{config.model_size}-model", hidden_size=shape[0], layers=shape[1], heads=shape[2]
        )
    )
    report = EnginesBenchReport(config=asdict(config))
    for device in config.devices or default_devices():
        report.devices.append(await _measure_device(device, model_path, config, data_dir, progress))
    return report


def run_engines_bench(
    config: EnginesBenchConfig, data_dir: Path | None = None, progress: Any = None
) -> EnginesBenchReport:
    """Run the benchmark; stacks and the tiny model live in data_dir (a temp dir by default)."""
    return run_bench(
        lambda folder, say: _measure(config, folder, say), data_dir, progress, prefix="hearth-bench-engines-"
    )

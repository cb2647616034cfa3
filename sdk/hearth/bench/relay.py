"""`hearth bench relay`: what the stack adds on top of the engine.

Runs the sim engine (a timing model of a GPU engine) twice in one run: called
directly in this process ("engine alone"), and behind the whole stack
(orchestratord, routerd, pool-managerd, workerd, memoryd, NATS, PostgreSQL),
driven through the SDK like any client. Reports:

- time to first token added by the stack: p50 and p99 of (stack - engine),
  from sequential single jobs;
- tokens per second relayed with 1, 64 and 512 concurrent streams, against the
  engine alone with the same streams, as a ratio;
- orchestratord CPU seconds per 1,000 tokens relayed;
- errors (streams that did not complete).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hearth.bench.harness import run_bench
from hearth.bench.stats import percentile

MODEL = "sim-bench"


@dataclass(frozen=True)
class RelayBenchConfig:
    """Parameters of one run. The sim timing stands for a mid-size model on
    one consumer GPU: 20 ms per decode step (50 tokens/s per stream). Streams
    are 256 tokens, an ordinary answer; the stack's fixed cost per job (submit,
    route, place, persist) weighs more on shorter ones, so the report says
    which length it measured."""

    ttft_samples: int = 200
    ttft_warmup: int = 20
    concurrency: tuple[int, ...] = (1, 64, 512)
    tokens_per_stream: int = 256
    decode_seconds_per_step: float = 0.02
    ttft_decode_seconds_per_step: float = 0.005
    max_batch: int = 1024


@dataclass
class ThroughputRow:
    streams: int
    engine_tokens_per_second: float
    stack_tokens_per_second: float
    ratio: float
    errors: int
    orchestrator_cpu_seconds_per_1k_tokens: float


@dataclass
class RelayBenchReport:
    config: dict[str, Any]
    ttft_engine_p50_ms: float = math.nan
    ttft_engine_p99_ms: float = math.nan
    ttft_stack_p50_ms: float = math.nan
    ttft_stack_p99_ms: float = math.nan
    ttft_added_p50_ms: float = math.nan
    ttft_added_p99_ms: float = math.nan
    throughput: list[ThroughputRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- engine alone -------------------------------------------------------------


async def _engine_ttft(engine: Any, samples: int) -> list[float]:
    from workerd.domain.engine import GenerationRequest, TokenDelta

    out: list[float] = []
    for _ in range(samples):
        request = GenerationRequest(str(uuid.uuid4()), MODEL, "how fast is the first token", 1)
        started = time.perf_counter()
        async for event in engine.generate(request):
            if isinstance(event, TokenDelta):
                out.append(time.perf_counter() - started)
    return out


async def _engine_throughput(engine: Any, streams: int, tokens: int) -> tuple[float, int]:
    from workerd.domain.engine import GenerationRequest, TokenDelta

    async def one() -> int:
        request = GenerationRequest(str(uuid.uuid4()), MODEL, "stream tokens please", tokens)
        count = 0
        async for event in engine.generate(request):
            if isinstance(event, TokenDelta):
                count += event.token_count
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts) / (time.perf_counter() - started), sum(1 for c in counts if c != tokens)


def _sim_engine(decode_seconds_per_step: float, max_batch: int) -> Any:
    from workerd.adapters.engines.sim_engine import SimEngine

    return SimEngine(MODEL, decode_seconds_per_step=decode_seconds_per_step, max_batch=max_batch)


# -- through the stack --------------------------------------------------------


async def _stack_ttft(client: Any, samples: int) -> list[float]:
    out: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        job = await client.submit("how fast is the first token", model=MODEL, max_tokens=1)
        async for event in client.watch(job.job_id):
            if event.WhichOneof("kind") == "tokens":
                out.append(time.perf_counter() - started)
    return out


async def _stack_throughput(client: Any, streams: int, tokens: int) -> tuple[float, int]:
    async def one() -> int:
        job = await client.submit("stream tokens please", model=MODEL, max_tokens=tokens)
        count = 0
        ended = ""
        async for event in client.watch(job.job_id):
            kind = event.WhichOneof("kind")
            if kind == "tokens":
                count += event.tokens.token_count
            elif kind in ("completed", "failed", "cancelled"):
                ended = kind
        return count if ended == "completed" else -1

    started = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    good = [r for r in results if isinstance(r, int) and r >= 0]
    errors = sum(1 for r in results if not isinstance(r, int) or r != tokens)
    return sum(good) / elapsed, errors


def _stack_config(config: RelayBenchConfig, decode_seconds_per_step: float) -> dict[str, Any]:
    most = max(config.concurrency)
    return {
        "models": [{"name": MODEL, "engine": "sim", "context_length": 8192, "roles": ["default"]}],
        "orchestrator": {"max_running": most * 2, "max_queued": most * 4},
        "worker": {
            "engine": "sim",
            "model": MODEL,
            "max_concurrency": most * 2,
            "sim_decode_seconds_per_step": decode_seconds_per_step,
            "sim_max_batch": config.max_batch,
        },
        "log_level": "warning",
        "trace_to_files": False,
    }


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def _measure(config: RelayBenchConfig, data_dir: Path, progress: Any) -> RelayBenchReport:
    from hearth.stack import Stack, StackOptions

    report = RelayBenchReport(config=asdict(config))

    def run_stack(decode_seconds_per_step: float, subdir: str) -> Stack:
        log = (data_dir / f"{subdir}.log").open("w")
        stack = Stack(
            StackOptions(
                data_dir=data_dir / subdir,
                config=_stack_config(config, decode_seconds_per_step),
                log_sink=log,
            )
        )
        stack.start()
        return stack

    # 1. Time to first token, sequential single jobs, the same sim timing both ways.
    progress("time to first token: engine alone")
    engine = _sim_engine(config.ttft_decode_seconds_per_step, config.max_batch)
    await engine.start()
    await _engine_ttft(engine, config.ttft_warmup)
    engine_ttft = await _engine_ttft(engine, config.ttft_samples)
    await engine.cleanup()

    progress("time to first token: through the stack")
    stack = await asyncio.to_thread(run_stack, config.ttft_decode_seconds_per_step, "ttft")
    try:
        async with stack.client() as client:
            await _stack_ttft(client, config.ttft_warmup)
            stack_ttft = await _stack_ttft(client, config.ttft_samples)
    finally:
        await asyncio.to_thread(stack.stop)
    ms = 1000.0
    report.ttft_engine_p50_ms = percentile(engine_ttft, 50) * ms
    report.ttft_engine_p99_ms = percentile(engine_ttft, 99) * ms
    report.ttft_stack_p50_ms = percentile(stack_ttft, 50) * ms
    report.ttft_stack_p99_ms = percentile(stack_ttft, 99) * ms
    report.ttft_added_p50_ms = report.ttft_stack_p50_ms - report.ttft_engine_p50_ms
    report.ttft_added_p99_ms = report.ttft_stack_p99_ms - report.ttft_engine_p99_ms

    # 2. Throughput at each concurrency, engine alone then the stack.
    stack = await asyncio.to_thread(run_stack, config.decode_seconds_per_step, "throughput")
    try:
        orchestrator = psutil.Process(stack.process("orchestratord").pid)
        async with stack.client() as client:
            await _stack_throughput(client, 8, 8)  # warm up channels and caches
            for streams in config.concurrency:
                progress(f"{streams} streams: engine alone")
                engine = _sim_engine(config.decode_seconds_per_step, config.max_batch)
                await engine.start()
                engine_rate, _ = await _engine_throughput(engine, streams, config.tokens_per_stream)
                await engine.cleanup()
                progress(f"{streams} streams: through the stack")
                cpu_before = _cpu_seconds(orchestrator)
                stack_rate, errors = await _stack_throughput(client, streams, config.tokens_per_stream)
                cpu = _cpu_seconds(orchestrator) - cpu_before
                tokens = streams * config.tokens_per_stream
                report.throughput.append(
                    ThroughputRow(
                        streams=streams,
                        engine_tokens_per_second=engine_rate,
                        stack_tokens_per_second=stack_rate,
                        ratio=stack_rate / engine_rate if engine_rate else math.nan,
                        errors=errors,
                        orchestrator_cpu_seconds_per_1k_tokens=cpu / tokens * 1000.0,
                    )
                )
    finally:
        await asyncio.to_thread(stack.stop)
    return report


def run_relay_bench(
    config: RelayBenchConfig, data_dir: Path | None = None, progress: Any = None
) -> RelayBenchReport:
    """Run the relay benchmark; the stacks live in data_dir (a temp dir by default)."""
    return run_bench(
        lambda folder, say: _measure(config, folder, say), data_dir, progress, prefix="hearth-bench-"
    )

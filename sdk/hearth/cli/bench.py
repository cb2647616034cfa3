"""`hearth bench ...`: benchmarks that report ratios measured in one run."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks: the stack against the engine alone, as ratios in one run.")


class _Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


_R = TypeVar("_R", bound=_Report)


def _run_bench(
    run: Callable[[Callable[[str], None]], _R], as_json: bool, console: Console | None = None
) -> _R | None:
    """``run(progress)`` with its progress on stderr (``console``, else a new
    one). With ``as_json`` the report goes to stdout as JSON and the answer is
    None: nothing is left to print. Otherwise the report, for a table."""
    stderr = console or Console(stderr=True)
    report = run(lambda msg: stderr.print(f"[dim]bench: {msg}[/dim]"))
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return None
    return report


@bench_app.command("relay")
def relay(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    samples: Annotated[int, typer.Option(help="Sequential jobs for time to first token.")] = 200,
    tokens: Annotated[int, typer.Option(help="Tokens per stream for the throughput runs.")] = 256,
    streams: Annotated[str, typer.Option(help="Comma-separated stream counts.")] = "1,64,512",
    keep_dir: Annotated[Path | None, typer.Option(help="Keep the stacks' data and logs here.")] = None,
) -> None:
    """Time to first token and token rate through the stack against the sim engine alone."""
    from hearth.bench.relay import RelayBenchConfig, run_relay_bench

    config = RelayBenchConfig(
        ttft_samples=samples,
        tokens_per_stream=tokens,
        concurrency=tuple(int(s) for s in streams.split(",") if s.strip()),
    )
    report = _run_bench(lambda progress: run_relay_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    out = Console()
    ttft = Table(title="Time to first token (ms), sequential jobs")
    for column in ("", "engine alone", "through the stack", "added by the stack"):
        ttft.add_column(column, justify="right")
    ttft.add_row(
        "p50",
        f"{report.ttft_engine_p50_ms:.2f}",
        f"{report.ttft_stack_p50_ms:.2f}",
        f"{report.ttft_added_p50_ms:.2f}",
    )
    ttft.add_row(
        "p99",
        f"{report.ttft_engine_p99_ms:.2f}",
        f"{report.ttft_stack_p99_ms:.2f}",
        f"{report.ttft_added_p99_ms:.2f}",
    )
    out.print(ttft)
    rate = Table(title=f"Tokens per second, {tokens} tokens per stream")
    for column in (
        "streams",
        "engine alone",
        "through the stack",
        "ratio",
        "errors",
        "orchestratord CPU s / 1k tokens",
    ):
        rate.add_column(column, justify="right")
    for row in report.throughput:
        rate.add_row(
            str(row.streams),
            f"{row.engine_tokens_per_second:.0f}",
            f"{row.stack_tokens_per_second:.0f}",
            f"{row.ratio:.3f}",
            str(row.errors),
            f"{row.orchestrator_cpu_seconds_per_1k_tokens:.3f}",
        )
    out.print(rate)


@bench_app.command("engines")
def engines(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    max_tokens: Annotated[int, typer.Option(help="Tokens each request generates at most.")] = 128,
    requests: Annotated[int, typer.Option(help="Sequential requests per round and way.")] = 8,
    streams: Annotated[int, typer.Option(help="Concurrent requests in the concurrent run.")] = 4,
    rounds: Annotated[int, typer.Option(help="Rounds, alternating direct and stack.")] = 3,
    model: Annotated[
        Path | None, typer.Option(help="A Hugging Face model folder (default: the tiny random model).")
    ] = None,
    model_size: Annotated[
        str, typer.Option(help="Random model when --model is not given: small (GPT-2 small's shape) or tiny.")
    ] = "small",
    device: Annotated[
        list[str] | None,
        typer.Option(help="cpu or cuda; repeat for both (default: cpu, and cuda if present)."),
    ] = None,
    keep_dir: Annotated[Path | None, typer.Option(help="Keep the stacks' data and logs here.")] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="transformers (in process against the stack) or vllm (a real vLLM server: "
            "the SDK and the OpenAI front door against it called directly)."
        ),
    ] = "transformers",
    vllm_streams: Annotated[str, typer.Option(help="vllm: comma-separated concurrent streams.")] = "1,16,64",
    vllm_tokens: Annotated[str, typer.Option(help="vllm: comma-separated tokens per stream.")] = "64,256",
    vllm_arg: Annotated[
        list[str] | None,
        typer.Option(help="vllm: an argument for the vLLM server (repeat), e.g. --enforce-eager."),
    ] = None,
    vllm_nice: Annotated[int, typer.Option(min=0, max=19, help="vllm: worker.vllm_nice for the server.")] = 0,
) -> None:
    """Tokens per second and time to first token of a real engine, through the
    stack against the engine called directly: transformers (--requests,
    --streams, --max-tokens, --device, --model-size) or vllm (--vllm-streams,
    --vllm-tokens, --rounds, --model)."""
    if engine == "vllm":
        _vllm_engines(as_json, rounds, model, keep_dir, vllm_streams, vllm_tokens, vllm_arg or [], vllm_nice)
        return
    if engine != "transformers":
        raise typer.BadParameter(f"{engine!r}: transformers or vllm", param_hint="--engine")
    from hearth.bench.engines import EnginesBenchConfig, run_engines_bench

    config = EnginesBenchConfig(
        max_tokens=max_tokens,
        requests=requests,
        streams=streams,
        rounds=rounds,
        model_path=str(model) if model else None,
        model_size=model_size,
        devices=tuple(device) if device else None,
    )
    report = _run_bench(lambda progress: run_engines_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    table = Table(
        title=f"transformers engine, {max_tokens} tokens per request: through the stack / called directly",
        caption=f"tok/s: tokens per second, sequential and with {streams} concurrent requests; "
        "TTFT: time to first token p50, ms",
    )
    for column in (
        "device",
        "direct tok/s",
        "stack tok/s",
        "ratio",
        "conc. direct",
        "conc. stack",
        "conc. ratio",
        "TTFT direct",
        "TTFT stack",
        "same text",
    ):
        table.add_column(column, justify="right")
    for row in report.devices:
        table.add_row(
            row.device,
            f"{row.direct_tokens_per_second:.0f}",
            f"{row.stack_tokens_per_second:.0f}",
            f"{row.ratio:.3f}",
            f"{row.concurrent_direct_tokens_per_second:.0f}",
            f"{row.concurrent_stack_tokens_per_second:.0f}",
            f"{row.concurrent_ratio:.3f}",
            f"{row.ttft_direct_p50_ms:.1f}",
            f"{row.ttft_stack_p50_ms:.1f}",
            "yes" if row.same_output else "NO",
        )
    Console().print(table)


def _vllm_engines(
    as_json: bool,
    rounds: int,
    model: Path | None,
    keep_dir: Path | None,
    streams: str,
    tokens: str,
    vllm_args: list[str],
    vllm_nice: int,
) -> None:
    from hearth.bench.engines_vllm import (
        ADDED_TTFT_P50_TARGET_MS,
        HEARTH_PROCESSES,
        RATIO_TARGET,
        VllmBenchConfig,
        run_vllm_engines_bench,
    )

    config = VllmBenchConfig(
        streams=tuple(int(s) for s in streams.split(",") if s.strip()),
        tokens=tuple(int(t) for t in tokens.split(",") if t.strip()),
        rounds=rounds,
        model_path=str(model) if model else None,
        vllm_args=tuple(vllm_args),
        vllm_nice=vllm_nice,
    )
    report = _run_bench(lambda progress: run_vllm_engines_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    out = Console()
    out.print(
        f"vLLM through Hearth against vLLM called directly (the official openai client), {report.cpus} CPUs. "
        "sdk: gRPC submit + watch; http: the OpenAI front door. "
        f"Targets: ratio >= {RATIO_TARGET} at 16 and 64 streams, added TTFT p50 <= "
        f"{ADDED_TTFT_P50_TARGET_MS:g} ms at 16 streams.\nvLLM: {' '.join(report.vllm_command)}",
        markup=False,
    )
    rates = Table(title="Tokens per second")
    for column in ("streams", "tokens", "direct", "sdk", "http", "sdk ratio", "http ratio", "errors"):
        rates.add_column(column, justify="right")
    ttft = Table(title="Time to first token (ms): direct, and what the stack adds")
    for column in ("streams", "tokens", "p50", "p99", "sdk +p50", "sdk +p99", "http +p50", "http +p99"):
        ttft.add_column(column, justify="right")
    for cell in report.cells:
        ways = cell.ways
        size = (str(cell.streams), str(cell.tokens_per_stream))
        rates.add_row(
            *size,
            *(f"{ways[w].tokens_per_second:.0f}" for w in ("direct", "sdk", "openai_http")),
            f"{cell.ratio['sdk']:.3f}",
            f"{cell.ratio['openai_http']:.3f}",
            str(sum(way.errors for way in ways.values())),
        )
        ttft.add_row(
            *size,
            f"{ways['direct'].ttft_p50_ms:.1f}",
            f"{ways['direct'].ttft_p99_ms:.1f}",
            *(
                f"{added[w]:.1f}"
                for w in ("sdk", "openai_http")
                for added in (cell.added_ttft_p50_ms, cell.added_ttft_p99_ms)
            ),
        )
    out.print(rates)
    out.print(ttft)
    processes = (*HEARTH_PROCESSES, "vllm")
    cpu = Table(title="CPU seconds per 1,000 tokens, by process, while each way ran")
    for column in (
        "streams",
        "tokens",
        "way",
        *({"orchestratord": "orch", "pool-managerd": "pool"}.get(p, p.removesuffix("d")) for p in processes),
    ):
        cpu.add_column(column, justify="right")
    for cell in report.cells:
        for name, way in cell.ways.items():
            cpu.add_row(
                str(cell.streams),
                str(cell.tokens_per_stream),
                "http" if name == "openai_http" else name,
                *(f"{way.cpu_seconds_per_1k_tokens.get(p, math.nan):.3f}" for p in processes),
            )
    out.print(cpu)


@bench_app.command("memory")
def memory(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sizes: Annotated[str, typer.Option(help="Comma-separated collection sizes, each filled on the last.")] = (
        "10000,100000"
    ),
    queries: Annotated[int, typer.Option(min=1, help="Queries per size and mode.")] = 200,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Memories per Store call.")] = 64,
    top_k: Annotated[int, typer.Option(min=1, max=100, help="Results per query.")] = 10,
    cpu_threads: Annotated[int, typer.Option(min=1, help="torch threads of both embedders.")] = 1,
    keep_dir: Annotated[Path | None, typer.Option(help="Keep memoryd's data and log here.")] = None,
) -> None:
    """Store rate and query latency of memoryd through the SDK against
    qdrant-client and the same embedder called directly, as ratios."""
    from hearth.bench.memory import QUERY_P50_TARGET, STORE_RATE_TARGET, MemoryBenchConfig, run_memory_bench

    config = MemoryBenchConfig(
        sizes=tuple(int(s) for s in sizes.split(",") if s.strip()),
        queries=queries,
        batch=batch,
        top_k=top_k,
        cpu_threads=cpu_threads,
    )
    report = _run_bench(lambda progress: run_memory_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    table = Table(
        title="memoryd through the SDK / qdrant-client + embedder called directly",
        caption=f"targets: store rate ratio >= {STORE_RATE_TARGET}, query p50 ratio <= {QUERY_P50_TARGET}; "
        "latencies in ms",
    )
    for column in (
        "memories",
        "store/s direct",
        "store/s stack",
        "rate ratio",
        "dense p50 direct",
        "dense p50 stack",
        "p50 ratio",
        "dense p99 ratio",
        "hybrid p50 direct",
        "hybrid p50 stack",
        "p50 ratio ",
        "hybrid p99 ratio",
        "top-1 agree",
    ):
        table.add_column(column, justify="right")

    def verdict(value: float, ok: bool) -> str:
        return f"{value:.3f}" if ok else f"[red]{value:.3f}[/red]"

    for row in report.sizes:
        table.add_row(
            str(row.size),
            f"{row.store_direct_per_second:.0f}",
            f"{row.store_stack_per_second:.0f}",
            verdict(row.store_ratio, row.store_meets_target),
            f"{row.dense.direct_p50_ms:.1f}",
            f"{row.dense.stack_p50_ms:.1f}",
            verdict(row.dense.p50_ratio, row.dense.meets_target),
            f"{row.dense.p99_ratio:.3f}",
            f"{row.hybrid.direct_p50_ms:.1f}",
            f"{row.hybrid.stack_p50_ms:.1f}",
            verdict(row.hybrid.p50_ratio, row.hybrid.meets_target),
            f"{row.hybrid.p99_ratio:.3f}",
            f"{row.dense_top1_agreement:.2f}",
        )
    Console().print(table)


@bench_app.command("memory-recall")
def memory_recall(
    dataset: Annotated[
        Path, typer.Option(exists=True, help="A folder of LoCoMo-layout JSON files (or one such file).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    top_k: Annotated[str, typer.Option(help="Comma-separated k of recall@k.")] = "5,10,20",
    rerank_url: Annotated[
        str, typer.Option(help="A TEI /rerank server for the hybrid+rerank column; empty: none.")
    ] = "",
    cpu_threads: Annotated[int, typer.Option(min=1, help="torch threads of memoryd's embedder.")] = 1,
    keep_dir: Annotated[Path | None, typer.Option(help="Keep memoryd's data and log here.")] = None,
) -> None:
    """Evidence recall@k on conversation QA (LoCoMo layout, categories 1-4):
    dense-only, hybrid and hybrid+rerank side by side."""
    from hearth.bench.locomo import DatasetError
    from hearth.bench.memory import RECALL_COLUMNS, RecallBenchConfig, run_recall_bench

    config = RecallBenchConfig(
        dataset=dataset,
        top_ks=tuple(int(k) for k in top_k.split(",") if k.strip()),
        rerank_url=rerank_url,
        cpu_threads=cpu_threads,
    )
    console = Console(stderr=True)
    try:
        report = _run_bench(
            lambda progress: run_recall_bench(config, keep_dir, progress=progress), as_json, console
        )
    except DatasetError as err:
        console.print(f"error: DATASET_INVALID: {err}", markup=False)
        raise typer.Exit(2) from None
    if report is None:
        return
    table = Table(
        title=f"Evidence recall@k: {report.conversations} conversations, {report.memories} turns, "
        f"{report.questions} questions (categories 1-4)",
    )
    table.add_column("k / category", justify="left")
    for column in RECALL_COLUMNS:
        table.add_column(column, justify="right")

    def cell(column: str, category: str | None, k: int) -> str:
        found = report.columns[column]
        if not found.available:
            return found.note.split(":")[0]
        values = found.recall if category is None else (found.by_category or {}).get(category, {})
        value = (values or {}).get(str(k))
        return "-" if value is None else f"{value:.3f}"

    ks = sorted(set(config.top_ks))
    for k in ks:
        table.add_row(f"recall@{k}", *(cell(c, None, k) for c in RECALL_COLUMNS))
    names = report.config.get("category_names", {})
    for category, count in report.questions_by_category.items():
        label = f"  {names.get(int(category), category)} ({count} q)"
        table.add_row(f"{label} @{ks[-1]}", *(cell(c, category, ks[-1]) for c in RECALL_COLUMNS))
    Console().print(table)
    for column in RECALL_COLUMNS:
        if not report.columns[column].available:
            console.print(f"{column}: {report.columns[column].note}", markup=False)


@bench_app.command("router")
def router(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Workers in the snapshot.")] = 1000,
    targets: Annotated[int, typer.Option(min=5, help="Targets the workers serve.")] = 100,
    requests: Annotated[int, typer.Option(min=10, help="Timed decisions in process.")] = 20_000,
    grpc_requests: Annotated[int, typer.Option(min=10, help="Timed Route calls over gRPC.")] = 3_000,
    in_process_only: Annotated[bool, typer.Option("--in-process-only", help="Skip the gRPC run.")] = False,
    keep_dir: Annotated[Path | None, typer.Option(help="Keep routerd's data and logs here.")] = None,
) -> None:
    """Routing decision latency (p50, p99, max), in process and over gRPC, with a snapshot of
    WORKERS workers over TARGETS targets, against the targets of issue #4."""
    from hearth.bench.router import RouterBenchConfig, report_rows, run_router_bench

    config = RouterBenchConfig(
        workers=workers,
        targets=targets,
        requests=requests,
        grpc_requests=grpc_requests,
        warmup=min(2_000, max(10, requests // 10)),
        grpc_warmup=min(300, max(10, grpc_requests // 10)),
        in_process_only=in_process_only,
    )
    report = _run_bench(lambda progress: run_router_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    load = ", ".join(f"{value:.1f}" for value in report.load_average)
    table = Table(
        title=f"Routing decision latency (ms): {workers} workers, {targets} targets",
        caption=f"{report.cpus} CPUs, load average {load} (before, after); wall time includes waiting "
        "for a CPU, CPU time is route()'s own",
    )
    table.add_column("measured")
    for column in ("samples", "p50", "p99", "max", "p99 target", ""):
        table.add_column(column, justify="right")
    for label, latency, target in report_rows(report):
        ok = latency.p99_ms <= target
        table.add_row(
            label,
            str(latency.samples),
            f"{latency.p50_ms:.3f}",
            f"{latency.p99_ms:.3f}" if ok else f"[red]{latency.p99_ms:.3f}[/red]",
            f"{latency.max_ms:.3f}",
            f"<= {target:g}",
            "meets" if ok else "[red]misses[/red]",
        )
    Console().print(table)


@bench_app.command("tasks")
def tasks(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    count: Annotated[int, typer.Option("--tasks", min=10, help="Tasks in the project's DAG.")] = 1000,
    parallel: Annotated[int, typer.Option(min=1, max=64, help="Tasks running at once.")] = 8,
    candidates: Annotated[int, typer.Option(min=5, help="Candidate items per bundle.")] = 200,
    bundles: Annotated[int, typer.Option(min=1, help="Bundles assembled.")] = 200,
    keep_dir: Annotated[Path | None, typer.Option(help="Keep the stack's data and logs here.")] = None,
) -> None:
    """Scheduling overhead per task (ready to job start) for a DAG of TASKS tasks through the
    stack, and context assembly time for bundles of CANDIDATES items, against the targets of
    issue #10."""
    from hearth.bench.tasks import BUNDLE_TARGET_MS, SCHEDULING_TARGET_MS, TasksBenchConfig, run_tasks_bench

    config = TasksBenchConfig(tasks=count, parallelism=parallel, candidates=candidates, bundles=bundles)
    report = _run_bench(lambda progress: run_tasks_bench(config, keep_dir, progress=progress), as_json)
    if report is None:
        return
    table = Table(
        title=f"Work: {report.tasks_done} of {count} tasks done ({report.links} requires links), "
        f"{parallel} at once, in {report.project_seconds:.1f} s",
        caption="scheduling: from the job end that let a task start to its job starting on the worker "
        "(memory tier off)",
    )
    table.add_column("measured (ms)")
    for column in ("p50", "p99", "max", "mean", "target"):
        table.add_column(column, justify="right")
    rows = [
        ("scheduling overhead per task", report.overhead, f"p50 <= {SCHEDULING_TARGET_MS:g}"),
        ("  trigger -> run recorded", report.trigger_to_run, ""),
        ("  run recorded -> job created", report.run_to_job, ""),
        ("  job created -> job started", report.job_to_start, ""),
        ("engine (job start -> end)", report.engine, ""),
        (f"run's bundle of {candidates}, estimate", report.bundle_estimate, f"p99 <= {BUNDLE_TARGET_MS:g}"),
        (f"run's bundle of {candidates}, tokenizer", report.bundle_tokenizer, f"p99 <= {BUNDLE_TARGET_MS:g}"),
        (f"preview of {candidates}, tokenizer", report.preview_tokenizer, "(every item counted)"),
    ]
    for label, spans, target in rows:
        table.add_row(
            label,
            f"{spans.p50_ms:.2f}",
            f"{spans.p99_ms:.2f}",
            f"{spans.max_ms:.2f}",
            f"{spans.mean_ms:.2f}",
            target,
        )
    Console().print(table)
    verdict = "meets" if report.scheduling_meets_target else "misses"
    Console().print(
        f"scheduling {verdict} its target; bundles {'meet' if report.bundle_meets_target else 'miss'} theirs"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

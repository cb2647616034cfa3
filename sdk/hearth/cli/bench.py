"""`hearth bench ...`: benchmarks that report ratios measured in one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(help="Benchmarks: the stack against the engine alone, as ratios in one run.")


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
    console = Console(stderr=True)
    report = run_relay_bench(config, keep_dir, progress=lambda msg: console.print(f"[dim]bench: {msg}[/dim]"))
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
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
) -> None:
    """Tokens per second and time to first token of the transformers engine,
    through the stack against the engine called directly."""
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
    console = Console(stderr=True)
    report = run_engines_bench(
        config, keep_dir, progress=lambda msg: console.print(f"[dim]bench: {msg}[/dim]")
    )
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
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


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

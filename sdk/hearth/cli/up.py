"""`hearth up`: the whole stack on this machine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hearth.stack import Stack, StackOptions, load_config_file, run_until_signal


def up(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="hearth.yaml; default: none (embedded everything)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="State folder; default: the global --data-dir.")
    ] = None,
    raw_logs: Annotated[bool, typer.Option("--raw-logs", help="Relay JSON log lines as they are.")] = False,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Also start a local Prometheus (when installed) that scrapes every service with the "
            "scrape config and alert rules of deploy/observability.",
        ),
    ] = False,
) -> None:
    """Start NATS, Postgres and the five services; stop cleanly on Ctrl-C or SIGTERM.

    NATS and Postgres are private (started here) unless `nats_url` and
    `orchestrator.database_url` are set in the config; Qdrant runs in local mode
    unless `memory.qdrant_url` is set; embeddings are computed locally unless
    `memory.tei_url` is set. Every service serves Prometheus /metrics on a port
    of its own; the addresses are printed once the stack is healthy.
    """
    from hearth.cli.session import CliSession

    stack = Stack(
        StackOptions(
            data_dir=data_dir or CliSession.of(ctx).data_dir,
            config=load_config_file(config),
            log_sink=sys.stderr,
            pretty_logs=not raw_logs,
            prometheus=metrics,
        )
    )

    def ready() -> None:
        for note in stack.notes:
            typer.secho(note, fg=typer.colors.YELLOW, err=True)
        lines = ready_lines(stack)
        typer.secho(lines[0], fg=typer.colors.GREEN, err=True)
        for line in lines[1:]:
            typer.secho(line, err=True)

    try:
        code = run_until_signal(stack, ready)
    except (RuntimeError, TimeoutError) as err:
        typer.secho(f"hearth: failed to start: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.secho("hearth: stopped", err=True)
    raise typer.Exit(code)


def ready_lines(stack: Stack) -> list[str]:
    """What `hearth up` says once the stack is healthy: the services, the orchestrator, the
    OpenAI-compatible API, each service's /metrics, and the local Prometheus when one runs."""
    services = ", ".join(f"{name} {addr}" for name, addr in stack.addresses.items() if name != "workers")
    lines = [
        f"hearth: all services healthy ({services})",
        f'hearth: orchestrator at {stack.addresses["orchestratord"]}; try `hearth run "hello"`. '
        "Ctrl-C stops.",
    ]
    if stack.http_address:
        lines.append(f"hearth: OpenAI-compatible API at http://{stack.http_address}/v1")
    for name, address in stack.metrics_addresses.items():
        lines.append(f"hearth: metrics of {name} at http://{address}/metrics")
    if stack.prometheus is not None:
        lines.append(
            f"hearth: Prometheus at {stack.prometheus.url} (scrape config and alert rules of "
            "deploy/observability; its data in "
            f"{stack.prometheus.folder})"
        )
    return lines


def register(app: typer.Typer) -> None:
    app.command("up")(up)

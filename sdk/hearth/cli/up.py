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
) -> None:
    """Start NATS, Postgres and the five services; stop cleanly on Ctrl-C or SIGTERM.

    NATS and Postgres are private (started here) unless `nats_url` and
    `orchestrator.database_url` are set in the config; Qdrant runs in local mode
    unless `memory.qdrant_url` is set; embeddings are computed locally unless
    `memory.tei_url` is set.
    """
    from hearth.cli.session import CliSession

    stack = Stack(
        StackOptions(
            data_dir=data_dir or CliSession.of(ctx).data_dir,
            config=load_config_file(config),
            log_sink=sys.stderr,
            pretty_logs=not raw_logs,
        )
    )

    def ready() -> None:
        for note in stack.notes:
            typer.secho(note, fg=typer.colors.YELLOW, err=True)
        services = ", ".join(f"{name} {addr}" for name, addr in stack.addresses.items() if name != "workers")
        typer.secho(f"hearth: all services healthy ({services})", fg=typer.colors.GREEN, err=True)
        typer.secho(
            f'hearth: orchestrator at {stack.addresses["orchestratord"]}; try `hearth run "hello"`. '
            "Ctrl-C stops.",
            err=True,
        )
        if stack.http_address:
            typer.secho(f"hearth: OpenAI-compatible API at http://{stack.http_address}/v1", err=True)

    try:
        code = run_until_signal(stack, ready)
    except (RuntimeError, TimeoutError) as err:
        typer.secho(f"hearth: failed to start: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.secho("hearth: stopped", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("up")(up)

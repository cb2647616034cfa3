"""The ``hearth`` command line: ``hearth status``, ``run``, ``jobs``,
``workers``, ``memory``, ``trace``, ``tasks``, ``context``, ``project``,
``runs``, ``plan``, ``roles``, ``stats``, ``events`` (and ``up`` and
``bench`` when installed).

Every command module exposes ``register(app)``. Commands find the stack with
:meth:`hearth.client.AsyncClient.from_env`: the ``HEARTH_<SERVICE>_ADDRESS``
variables, then ``<data-dir>/stack.json``. A command reads its
:class:`~hearth.cli.session.CliSession` (the global options) with
``CliSession.of(ctx)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from hearth.cli import (
    context,
    events,
    jobs,
    memory,
    models,
    plan,
    probe,
    project,
    roles,
    route,
    run,
    runs,
    stats,
    status,
    targets,
    tasks,
    trace,
    workers,
)
from hearth.cli.session import CliSession
from hearth.client import DEFAULT_DATA_DIR

app = typer.Typer(
    name="hearth",
    help="Hearth: run prompts and projects of tasks on your own GPU stack; "
    "see its jobs, workers, memory, runs and traces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar="HEARTH_DATA_DIR",
            help="The stack's data dir (stack.json, traces/).",
            show_default=True,
        ),
    ] = Path(DEFAULT_DATA_DIR),
) -> None:
    """Service addresses come from HEARTH_ORCHESTRATOR_ADDRESS, HEARTH_POOL_ADDRESS,
    HEARTH_MEMORY_ADDRESS and HEARTH_ROUTER_ADDRESS, else from <data-dir>/stack.json."""
    ctx.obj = CliSession(data_dir=data_dir)


for _module in (
    status,
    run,
    jobs,
    workers,
    memory,
    trace,
    probe,
    targets,
    models,
    route,
    tasks,
    context,
    project,
    runs,
    plan,
    roles,
    stats,
    events,
):
    _module.register(app)

# `hearth up` and `hearth bench` live in their own modules, which may be absent.
for _name in ("hearth.cli.up", "hearth.cli.bench", "hearth.cli.doctor"):
    try:
        _optional = importlib.import_module(_name)
    except ImportError as _err:
        if _err.name != _name:
            raise
    else:
        _optional.register(app)


def main() -> None:
    """The ``hearth`` console script."""
    app(prog_name="hearth")


__all__ = ["app", "main"]

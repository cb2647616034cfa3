"""``hearth trace JOB_ID``: a job's spans from every service, as a tree."""

from __future__ import annotations

from typing import Annotated

import typer

from hearth.cli.render import to_json
from hearth.cli.session import EXIT_FAILED, CliSession
from hearth.tracetree import TRACES_DIR, load_job_trace, render_tree


def register(app: typer.Typer) -> None:
    app.command("trace")(trace_command)


def trace_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the spans as a JSON list.")] = False,
) -> None:
    """Print a job's trace, read from <data-dir>/traces/*.jsonl. Exits 1 when no span is found."""
    session = CliSession.of(ctx)
    spans = load_job_trace(session.data_dir, job_id)
    if as_json:
        session.out.print(to_json([span.to_dict() for span in spans]), markup=False, soft_wrap=True)
    elif spans:
        session.out.print(render_tree(spans), markup=False, highlight=False, soft_wrap=True)
    if not spans:
        session.err.print(
            f"no spans found for job {job_id} in {session.data_dir / TRACES_DIR}; "
            "span files are flushed every 200 ms, so wait a second and try again",
            markup=False,
        )
        raise typer.Exit(EXIT_FAILED)

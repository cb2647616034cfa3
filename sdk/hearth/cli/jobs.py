"""``hearth jobs list|get|cancel``."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.cli.render import format_time, job_details, message_to_dict, shorten, styled_state, to_json
from hearth.cli.session import CliSession
from hearth.client import JOB_STATE_NAMES, AsyncClient, job_state_name

_MAX_PAGE = 1000

StateChoice = enum.Enum("StateChoice", {name: name for name in JOB_STATE_NAMES}, type=str)  # type: ignore[misc]

jobs_app = typer.Typer(help="List, inspect and cancel jobs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def list_command(
    ctx: typer.Context,
    state: Annotated[StateChoice | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many jobs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of jobs.")] = False,
) -> None:
    """Jobs, newest first."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        jobs: list[orchestrator_pb2.Job] = []
        token = ""
        while len(jobs) < limit:
            page, token = await client.list_jobs(
                page_size=min(limit - len(jobs), _MAX_PAGE),
                page_token=token,
                state=state.value if state is not None else None,
            )
            jobs.extend(page)
            if not token:
                break
        jobs = jobs[:limit]
        if as_json:
            session.out.print(to_json([message_to_dict(job) for job in jobs]), markup=False)
            return 0
        table = Table("job", "state", "model", "created", "tokens", "prompt", box=box.SIMPLE_HEAD)
        for job in jobs:
            tokens = str(job.run.output_tokens) if job.HasField("run") else "-"
            table.add_row(
                job.job_id,
                styled_state(job.state),
                job.run.model or job.spec.model or "-",
                format_time(job.create_time),
                tokens,
                Text(shorten(job.spec.prompt, 40)),
            )
        session.out.print(table)
        if token:
            session.err.print(f"(more than {limit}; use --limit)", markup=False)
        return 0

    session.execute(command)


@jobs_app.command("get")
def get_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """One job: state, timings, routing, prompt and output."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        job = await client.get_job(job_id)
        if as_json:
            session.out.print(to_json(message_to_dict(job)), markup=False)
            return 0
        width = max(len(label) for label, _ in job_details(job))
        for label, value in job_details(job):
            session.out.print(f"{label:<{width}}  {value}", markup=False, highlight=False)
        return 0

    session.execute(command)


@jobs_app.command("cancel")
def cancel_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    reason: Annotated[str, typer.Option("--reason", help="Kept with the job.")] = "",
) -> None:
    """Cancel a queued or running job (a job that has ended is left as it is)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        job = await client.cancel_job(job_id, reason or "cancelled from the CLI")
        session.out.print(f"job {job.job_id} {job_state_name(job.state)}", markup=False)
        return 0

    session.execute(command)

"""``hearth stats``: usage and cost from the run records.

Counts the task runs and plan attempts (each one job): jobs, failed jobs and
the failure rate, tokens in and out, cost, and the mean and 95th percentile
time to first token, per day, month (UTC), role or model, and in total.
Prompts and outputs never appear.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.render import to_json
from hearth.cli.session import CliSession
from hearth.client import STATS_GROUPING_NAMES, AsyncClient

GroupChoice = enum.Enum("GroupChoice", {n: n for n in STATS_GROUPING_NAMES}, type=str)  # type: ignore[misc]


def register(app: typer.Typer) -> None:
    app.command("stats")(stats_command)


def row_dict(row: tasks_pb2.StatsRow) -> dict[str, Any]:
    """A row as ``--json`` prints it (numbers as numbers; no time to first token: null)."""
    timed = row.timed_jobs > 0
    return {
        "key": row.key,
        "jobs": row.jobs,
        "failed": row.failed,
        "failure_rate": row.failure_rate,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost": row.cost,
        "timed_jobs": row.timed_jobs,
        "mean_time_to_first_token_seconds": row.mean_time_to_first_token_seconds if timed else None,
        "p95_time_to_first_token_seconds": row.p95_time_to_first_token_seconds if timed else None,
    }


def stats_table(response: tasks_pb2.StatsResponse, label: str) -> Table:
    table = Table(
        label, "jobs", "failed", "rate", "tokens in", "tokens out", "cost", "ttft mean", "ttft p95",
        box=box.SIMPLE_HEAD,
    )  # fmt: skip
    for row in [*response.rows, response.total]:
        timed = row.timed_jobs > 0
        table.add_row(
            "total" if row is response.total else row.key,
            str(row.jobs),
            str(row.failed),
            f"{row.failure_rate:.1%}",
            str(row.input_tokens),
            str(row.output_tokens),
            f"{row.cost:.4f}",
            f"{row.mean_time_to_first_token_seconds * 1000:.0f} ms" if timed else "-",
            f"{row.p95_time_to_first_token_seconds * 1000:.0f} ms" if timed else "-",
        )
    return table


def stats_command(
    ctx: typer.Context,
    project: Annotated[str, typer.Option("--project", "-p", help="Only this project's runs.")] = "",
    agent: Annotated[str, typer.Option("--agent", "-a", help="Only the runs this agent started.")] = "",
    by: Annotated[
        GroupChoice | None, typer.Option("--by", help="Group by day, month (UTC), role or model.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {rows, total} as JSON.")] = False,
) -> None:
    """Jobs, tokens in and out, cost, time to first token and failure rate of the
    task runs and plan attempts, from the run records (never prompts or outputs)."""
    session = CliSession.of(ctx)
    grouping = by.value if by is not None else "none"

    async def command(client: AsyncClient) -> int:
        response = await client.stats(project_id=project, agent=agent, group_by=grouping)
        if as_json:
            payload = {
                "group_by": grouping,
                "rows": [row_dict(r) for r in response.rows],
                "total": row_dict(response.total),
            }
            session.out.print(to_json(payload), markup=False)
            return 0
        session.out.print(stats_table(response, grouping if grouping != "none" else "all"))
        return 0

    session.execute(command)


__all__ = ["register", "row_dict", "stats_table"]

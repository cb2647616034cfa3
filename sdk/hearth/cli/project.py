"""``hearth project run``: run a project's tasks as jobs until none is ready.

Progress goes to stderr: a live table of the project's tasks and their states
on a terminal (redrawn on every change), one line per change otherwise. The
summary goes to stdout: how many tasks are done, failed, blocked and not run,
and the failed and blocked ones with their reasons.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping
from typing import Annotated

import typer
from rich import box
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.session import EXIT_FAILED, CliSession
from hearth.cli.task_views import execute, json_line, proto_dict, styled_status, task_reason
from hearth.client import RUN_STRATEGY_NAMES, AsyncClient, task_status_name
from hearth.errors import Unavailable

StrategyChoice = enum.Enum("StrategyChoice", {name: name for name in RUN_STRATEGY_NAMES}, type=str)  # type: ignore[misc]

project_app = typer.Typer(help="Run the tasks of a project.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(project_app, name="project")


@project_app.command("run")
def run_command(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="The project.")],
    strategy: Annotated[
        StrategyChoice,
        typer.Option(
            "--strategy",
            help="dag: level by level of the dependency graph, by priority inside a level; "
            "priority: any ready task by priority, whatever its depth.",
        ),
    ] = StrategyChoice.dag,  # type: ignore[attr-defined]
    parallel: Annotated[
        int,
        typer.Option("--parallel", min=0, help="Most tasks running at once; 0: the orchestrator's default."),
    ] = 0,
    continue_on_failure: Annotated[
        bool,
        typer.Option(
            "--continue-on-failure",
            help="Keep running the tasks that do not depend on a failed one (by default no task "
            "is started after the first failure).",
        ),
    ] = False,
    agent: Annotated[str, typer.Option("--agent", help="Who runs them.")] = "",
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print every update as one line of proto3 JSON, the summary last."),
    ] = False,
) -> None:
    """Run PROJECT's ready tasks as jobs until no task is ready; progress on stderr,
    the summary on stdout. Exits 1 when a task failed or was blocked, 0 otherwise."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        return await run_project(
            client,
            session,
            project,
            strategy=strategy.value,
            parallelism=parallel,
            continue_on_failure=continue_on_failure,
            agent=agent,
            as_json=as_json,
        )

    execute(session, command)


async def run_project(
    client: AsyncClient,
    session: CliSession,
    project: str,
    *,
    strategy: str = "dag",
    parallelism: int = 0,
    continue_on_failure: bool = False,
    agent: str = "",
    as_json: bool = False,
) -> int:
    """Run the project, showing progress on ``session.err`` (a live table when it
    is a terminal), print the summary; the exit code."""
    tasks = {task.task_id: task for task in await client.list_tasks(project)}
    runs: dict[int, int] = {}
    summary: tasks_pb2.ProjectRunSummary | None = None
    live = (
        Live(progress_table(tasks, runs), console=session.err, auto_refresh=False)
        if session.err.is_terminal
        else None
    )
    with live if live is not None else contextlib.nullcontext():
        updates = client.run_project(project, strategy, parallelism, continue_on_failure, agent)
        async for update in updates:
            if as_json:
                session.out.print(json_line(proto_dict(update)), markup=False, highlight=False)
            if update.HasField("summary"):
                summary = update.summary
                continue
            if not update.HasField("task"):
                continue
            task = update.task.task
            tasks[task.task_id] = task
            if update.task.run_id:
                runs[task.task_id] = update.task.run_id
            if live is not None:
                live.update(progress_table(tasks, runs), refresh=True)
            else:
                session.err.print(progress_line(task, update.task.run_id), markup=False)
    if summary is None:
        raise Unavailable(
            f"the run of project {project} ended without a summary; see `hearth tasks list {project}`",
            reason="STREAM_ENDED",
        )
    if not as_json:
        failed = [t for t in tasks.values() if t.status == tasks_pb2.TASK_STATUS_FAILED]
        for line in summary_lines(project, summary, failed):
            session.out.print(line, markup=False, highlight=False)
    return EXIT_FAILED if summary.failed or summary.blocked else 0


def progress_table(tasks: Mapping[int, tasks_pb2.Task], runs: Mapping[int, int]) -> Table:
    """The live table: every task of the project with its state, run and reason."""
    table = Table("id", "status", "name", "run", "reason", box=box.SIMPLE_HEAD)
    for task in tasks.values():
        run = runs.get(task.task_id)
        table.add_row(
            str(task.task_id),
            styled_status(task.status),
            Text(task.name),
            str(run) if run else "-",
            task_reason(task),
        )
    return table


def progress_line(task: tasks_pb2.Task, run_id: int) -> str:
    """``task 3 running (run 7): outline``: one change, for a stderr that is not a terminal."""
    run = f" (run {run_id})" if run_id else ""
    reason = task_reason(task)
    because = f" [{reason}]" if reason else ""
    return f"task {task.task_id} {task_status_name(task.status)}{run}: {task.name}{because}"


def summary_lines(
    project: str, summary: tasks_pb2.ProjectRunSummary, failed: list[tasks_pb2.Task]
) -> list[str]:
    """The summary for stdout."""
    lines = [
        f"project {project}: {summary.done} done, {summary.failed} failed, "
        f"{summary.blocked} blocked, {summary.not_run} not run"
    ]
    if summary.stopped_on_failure:
        lines.append("stopped at the first failure (--continue-on-failure runs what does not depend on it)")
    if failed:
        lines.append("failed:")
        lines += [f"  task {t.task_id} {t.name}: {task_reason(t) or 'no reason given'}" for t in failed]
    if summary.blocked_tasks:
        lines.append("blocked:")
        lines += [
            f"  task {t.task_id} {t.name}: {task_reason(t) or 'no reason given'}"
            for t in summary.blocked_tasks
        ]
    return lines


__all__ = ["progress_line", "progress_table", "project_app", "register", "run_project", "summary_lines"]

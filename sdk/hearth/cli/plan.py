"""``hearth plan propose|show|list|edit|approve|reject``: a goal becomes a plan
of tasks that a person approves.

``propose`` asks the manager role for a plan (a JSON answer validated
against the plan schema; an invalid answer is sent back with its errors, a
bounded number of times) and prints the draft with every attempt. ``edit``
changes a draft (``--remove KEY``, ``--set KEY.FIELD=VALUE``, ``--add JSON``
or a whole ``--file``), ``approve`` creates its tasks and requires links,
``reject`` keeps the draft with the reason.

Exit codes: 0 done, 1 when a proposal found no valid plan (the attempts and
their errors are printed), 2 on an API error or a bad argument.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.render import format_time, to_json
from hearth.cli.session import EXIT_FAILED, CliSession, describe_error
from hearth.cli.task_views import execute, print_rows, proto_dict, proto_json, task_table
from hearth.client import PLAN_STATUS_NAMES, AsyncClient, plan_draft, plan_status_name
from hearth.errors import FailedPrecondition

PlanStatusChoice = enum.Enum("PlanStatusChoice", {n: n for n in PLAN_STATUS_NAMES}, type=str)  # type: ignore[misc]

plan_app = typer.Typer(
    help="Propose a plan of tasks for a goal (the manager role), then edit, approve or reject it.",
    no_args_is_help=True,
)

PlanArg = Annotated[int, typer.Argument(help="The plan's id.")]
Agent = Annotated[str, typer.Option("--agent", help="Who makes the change (a person's or an agent's name).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the plan as proto3 JSON.")]

#: The fields ``--set KEY.FIELD=VALUE`` may change.
SETTABLE = ("name", "role", "prompt", "priority", "requires", "produces_index")


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")


# --- views ---------------------------------------------------------------------


def draft_table(draft: tasks_pb2.PlanDraft, task_ids: dict[str, int] | None = None) -> Table:
    """key, role, requires, priority, name (and the task id once approved)."""
    columns = ["key", "role", "requires", "priority", "name"]
    if task_ids:
        columns.insert(0, "task")
    table = Table(*columns, box=box.SIMPLE_HEAD)
    for task in draft.tasks:
        name = Text(task.name)
        if task.produces_index:
            name.append(" (writes the INDEX)", style="dim")
        row: list[Any] = [task.key, task.role, ", ".join(task.requires) or "-", str(task.priority), name]
        if task_ids:
            row.insert(0, str(task_ids.get(task.key, "-")))
        table.add_row(*row)
    return table


def plan_rows(plan: tasks_pb2.Plan) -> list[tuple[str, str]]:
    rows = [
        ("plan", str(plan.plan_id)),
        ("project", plan.project_id),
        ("status", plan_status_name(plan.status)),
        ("goal", plan.goal),
        ("revision", str(plan.revision)),
    ]
    if plan.reason:
        rows.append(("reason", plan.reason))
    if plan.model:
        rows.append(("model", plan.model))
    rows.append(("created", _when_by(plan.create_time, plan.created_by)))
    if plan.HasField("decide_time"):
        rows.append(("decided", _when_by(plan.decide_time, plan.decided_by)))
    if plan.draft.summary:
        rows.append(("summary", plan.draft.summary))
    return rows


def attempt_lines(plan: tasks_pb2.Plan) -> list[str]:
    """One line per attempt, then its errors indented."""
    lines = []
    for attempt in plan.attempts:
        served = f" on {attempt.model}" if attempt.model else ""
        tokens = f", {attempt.input_tokens} in / {attempt.output_tokens} out" if attempt.job_id else ""
        lines.append(f"attempt {attempt.attempt}: {attempt.status}{served}{tokens}")
        lines.extend(f"  - {error}" for error in attempt.errors)
    return lines


def print_plan(session: CliSession, plan: tasks_pb2.Plan, *, answers: bool = False) -> None:
    print_rows(session, plan_rows(plan))
    if plan.draft.tasks:
        session.out.print("", markup=False)
        session.out.print(draft_table(plan.draft, dict(plan.task_ids)))
    if plan.attempts:
        session.out.print("", markup=False)
        for line in attempt_lines(plan):
            session.out.print(line, markup=False, highlight=False)
        if answers:
            for attempt in plan.attempts:
                session.out.print(f"\nanswer of attempt {attempt.attempt}:", markup=False)
                session.out.print(attempt.output, markup=False, highlight=False)


def _when_by(timestamp: Any, who: str) -> str:
    when = format_time(timestamp)
    return f"{when} by {who}" if who and when != "-" else when


# --- edits -----------------------------------------------------------------------


def _draft_json(draft: tasks_pb2.PlanDraft) -> dict[str, Any]:
    return proto_dict(draft)


def _parse_value(field: str, value: str) -> Any:
    if field == "priority":
        try:
            return int(value)
        except ValueError:
            raise typer.BadParameter(
                f"priority must be a number, not {value!r}", param_hint="--set"
            ) from None
    if field == "requires":
        return [key.strip() for key in value.split(",") if key.strip()]
    if field == "produces_index":
        if value.lower() not in ("true", "false"):
            raise typer.BadParameter("produces_index is true or false", param_hint="--set")
        return value.lower() == "true"
    return value


def apply_edits(
    draft: dict[str, Any], removes: Sequence[str], sets: Sequence[str], adds: Sequence[str]
) -> dict[str, Any]:
    """The draft's JSON with tasks removed (and the requires naming them), fields
    set and tasks added, in that order."""
    tasks: list[dict[str, Any]] = [dict(t) for t in draft.get("tasks", [])]
    keys = {t.get("key") for t in tasks}
    for key in removes:
        if key not in keys:
            raise typer.BadParameter(f"no task {key!r} in the plan", param_hint="--remove")
        tasks = [t for t in tasks if t.get("key") != key]
        for task in tasks:
            task["requires"] = [k for k in task.get("requires", []) if k != key]
    for assignment in sets:
        target, sep, value = assignment.partition("=")
        key, dot, field = target.rpartition(".")
        if not sep or not dot or field not in SETTABLE:
            raise typer.BadParameter(
                f"{assignment!r}: give KEY.FIELD=VALUE, FIELD one of {', '.join(SETTABLE)}",
                param_hint="--set",
            )
        changed: dict[str, Any] | None = next((t for t in tasks if t.get("key") == key), None)
        if changed is None:
            raise typer.BadParameter(f"no task {key!r} in the plan", param_hint="--set")
        changed[field] = _parse_value(field, value)
    for text in adds:
        try:
            added = json.loads(text)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"not JSON: {err.msg}", param_hint="--add") from None
        if not isinstance(added, dict):
            raise typer.BadParameter("a task is a JSON object", param_hint="--add")
        tasks.append(added)
    return {**draft, "tasks": tasks}


def _read_draft(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"{path}: not JSON: {err.msg}", param_hint="--file") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: a draft is a JSON object", param_hint="--file")
    # `hearth plan show --json` output works as is: take its draft.
    return data.get("draft", data) if "tasks" not in data else data


def _to_draft(data: dict[str, Any]) -> tasks_pb2.PlanDraft:
    try:
        return plan_draft(data)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


# --- commands ----------------------------------------------------------------------


@plan_app.command("propose")
def propose_command(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="The project (created with the plan when new).")],
    goal: Annotated[str, typer.Argument(help="What the plan is for.")],
    attempts: Annotated[
        int,
        typer.Option("--attempts", min=0, max=5, help="Jobs in all (an invalid plan is sent back); 0: 3."),
    ] = 0,
    model: Annotated[str, typer.Option("--model", "-m", help="A model for the manager.")] = "",
    answers: Annotated[bool, typer.Option("--answers", help="Also print each attempt's raw answer.")] = False,
    agent: Agent = "",
    as_json: AsJson = False,
) -> None:
    """Ask the manager role for a plan of GOAL: prints the draft (its tasks, roles
    and requires) and every attempt with its errors. Exit 1 when no attempt gave a
    valid plan."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        try:
            plan = await client.propose_plan(project, goal, agent=agent, max_attempts=attempts, model=model)
        except FailedPrecondition as err:
            if err.reason != "PLAN_FAILED" or "plan_id" not in err.metadata:
                raise
            failed = await client.get_plan(int(err.metadata["plan_id"]))
            if as_json:
                session.out.print(proto_json(failed), markup=False)
            else:
                print_plan(session, failed, answers=answers)
            session.err.print(describe_error(err), markup=False)
            return EXIT_FAILED
        if as_json:
            session.out.print(proto_json(plan), markup=False)
            return 0
        print_plan(session, plan, answers=answers)
        session.err.print(
            f"plan {plan.plan_id} is a draft: hearth plan approve {plan.plan_id} (or edit, reject)",
            markup=False,
        )
        return 0

    execute(session, command)


@plan_app.command("show")
def show_command(
    ctx: typer.Context,
    plan_id: PlanArg,
    answers: Annotated[bool, typer.Option("--answers", help="Also print each attempt's raw answer.")] = False,
    as_json: AsJson = False,
) -> None:
    """A plan: goal, status, its tasks (with their ids once approved) and every attempt."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        plan = await client.get_plan(plan_id)
        if as_json:
            session.out.print(proto_json(plan), markup=False)
        else:
            print_plan(session, plan, answers=answers)
        return 0

    execute(session, command)


@plan_app.command("list")
def list_command(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="The project.")],
    status: Annotated[
        PlanStatusChoice | None, typer.Option("--status", help="Only plans in this status.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of plans.")] = False,
) -> None:
    """A project's plans, newest first."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        plans = await client.list_plans(project, status.value if status is not None else None)
        if as_json:
            session.out.print(to_json([proto_dict(p) for p in plans]), markup=False)
            return 0
        table = Table("plan", "status", "tasks", "attempts", "goal", box=box.SIMPLE_HEAD)
        for plan in plans:
            table.add_row(
                str(plan.plan_id),
                plan_status_name(plan.status),
                str(len(plan.draft.tasks)),
                str(len(plan.attempts)),
                Text(plan.goal),
            )
        session.out.print(table)
        return 0

    execute(session, command)


@plan_app.command("edit")
def edit_command(
    ctx: typer.Context,
    plan_id: PlanArg,
    file: Annotated[str, typer.Option("--file", "-f", help="The whole new draft as JSON ('-': stdin).")] = "",
    remove: Annotated[list[str] | None, typer.Option("--remove", help="Remove the task KEY.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help=f"KEY.FIELD=VALUE; FIELD one of {', '.join(SETTABLE)} (requires: a,b)."),
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option("--add", help='A task as JSON: {"key", "name", "role", "prompt", "requires"}.'),
    ] = None,
    agent: Agent = "",
    as_json: AsJson = False,
) -> None:
    """Change a draft: remove, change or add tasks (or give the whole draft with
    --file). The plan is checked as a proposal is; the edit applies to the revision
    read, so a concurrent change is refused (REVISION_MISMATCH)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        plan = await client.get_plan(plan_id)
        data = _read_draft(file) if file else _draft_json(plan.draft)
        data = apply_edits(data, remove or [], set_ or [], add or [])
        edited = await client.edit_plan(plan_id, _to_draft(data), revision=plan.revision, agent=agent)
        if as_json:
            session.out.print(proto_json(edited), markup=False)
        else:
            print_plan(session, edited)
        return 0

    execute(session, command)


@plan_app.command("approve")
def approve_command(
    ctx: typer.Context,
    plan_id: PlanArg,
    file: Annotated[str, typer.Option("--file", "-f", help="Approve this draft (JSON) instead.")] = "",
    agent: Agent = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {plan, tasks, links} as proto3 JSON.")
    ] = False,
) -> None:
    """Approve a draft: its tasks and requires links are created (the task that
    writes the INDEX first). Run them with `hearth project run PROJECT`."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        draft = _to_draft(_read_draft(file)) if file else None
        plan = await client.get_plan(plan_id)
        response = await client.approve_plan(plan_id, draft, revision=plan.revision, agent=agent)
        if as_json:
            session.out.print(proto_json(response), markup=False)
            return 0
        session.out.print(
            f"plan {plan_id} approved: {len(response.tasks)} tasks, {len(response.links)} requires links",
            markup=False,
        )
        session.out.print(task_table(response.tasks))
        session.err.print(f"run them: hearth project run {response.plan.project_id}", markup=False)
        return 0

    execute(session, command)


@plan_app.command("reject")
def reject_command(
    ctx: typer.Context,
    plan_id: PlanArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    agent: Agent = "",
    as_json: AsJson = False,
) -> None:
    """Reject a draft; it is kept with the reason."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        plan = await client.reject_plan(plan_id, reason, agent)
        if as_json:
            session.out.print(proto_json(plan), markup=False)
        else:
            session.out.print(f"plan {plan_id} rejected: {plan.reason}", markup=False)
        return 0

    execute(session, command)


__all__ = ["apply_edits", "attempt_lines", "draft_table", "plan_app", "register"]

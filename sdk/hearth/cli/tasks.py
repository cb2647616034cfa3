"""``hearth tasks add|list|show|link|unlink|next|note|done|block|run|index``.

Tasks live in projects and are linked: a ``requires`` link makes a task wait
for another to be done and hands it that task's output as context. Task ids
are numbers, unique across projects. ``--agent`` names who makes a change
(recorded with it). ``--json`` prints the call's proto as proto3 JSON
(snake_case names, fields at their default value included; int64 ids are
strings there, as proto3 JSON has them).

Exit codes: 0 done, 1 when ``tasks run`` ends with a run that did not
succeed, 2 on an API error (a link that would close a dependency cycle
prints the cycle).
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.memory import parse_pairs
from hearth.cli.render import format_time, to_json
from hearth.cli.runs import report_run
from hearth.cli.session import CliSession
from hearth.cli.task_views import (
    execute,
    link_line,
    print_rows,
    proto_dict,
    proto_json,
    run_table,
    task_reason,
    task_rows,
    task_table,
)
from hearth.client import (
    CLOSE_STATUS_NAMES,
    LINK_KIND_NAMES,
    TASK_STATUS_NAMES,
    AsyncClient,
    task_status_name,
)
from hearth.errors import HearthError

StatusChoice = enum.Enum("StatusChoice", {name: name for name in TASK_STATUS_NAMES}, type=str)  # type: ignore[misc]
CloseChoice = enum.Enum("CloseChoice", {name: name for name in CLOSE_STATUS_NAMES}, type=str)  # type: ignore[misc]
KindChoice = enum.Enum("KindChoice", {name: name for name in LINK_KIND_NAMES}, type=str)  # type: ignore[misc]

tasks_app = typer.Typer(
    help="Add, link, inspect, close and run the tasks of a project.", no_args_is_help=True
)

ProjectArg = Annotated[str, typer.Argument(help="The project.")]
TaskArg = Annotated[int, typer.Argument(help="The task's id.")]
Agent = Annotated[str, typer.Option("--agent", help="Who makes the change (a person's or an agent's name).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as proto3 JSON.")]
Kind = Annotated[
    KindChoice,
    typer.Option(
        "--kind",
        help="requires: FROM runs only once TO is done and gets its output as context; "
        "refers: TO's output is lower-priority context; duplicates; relates_to.",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(tasks_app, name="tasks")


def _read_text(path: str) -> str:
    """A file's text, or stdin's for ``-``."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise typer.BadParameter(f"cannot read {path}: {err.strerror or err}") from None


@tasks_app.command("add")
def add_command(
    ctx: typer.Context,
    project: ProjectArg,
    name: Annotated[str, typer.Argument(help="A short name for the task.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="The task's prompt.")] = None,
    prompt_file: Annotated[
        str | None, typer.Option("--prompt-file", help="Read the prompt from this file ('-': stdin).")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Lower runs first (0 before 1).")] = 0,
    role: Annotated[
        str, typer.Option("--role", help="The agent role that runs it; default: the default role.")
    ] = "",
    model: Annotated[str, typer.Option("--model", "-m", help="A model; default: the router's choice.")] = "",
    labels: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE kept with the task; repeatable.")
    ] = None,
    requires_approval: Annotated[
        bool,
        typer.Option(
            "--requires-approval",
            help="Run only after `hearth context approve` (the task waits for approval).",
        ),
    ] = False,
    budget: Annotated[
        int, typer.Option("--budget", min=0, help="Most tokens of context; 0: the orchestrator's default.")
    ] = 0,
    requires: Annotated[
        list[int] | None,
        typer.Option("--requires", help="A task this one requires (a requires link is made); repeatable."),
    ] = None,
    agent: Agent = "",
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"task": ..., "links": [...]} as proto3 JSON.')
    ] = False,
) -> None:
    """Add a task to PROJECT (the project is created with its first task).

    Give the prompt with --prompt or --prompt-file (one of them). Each --requires ID
    links the new task to ID after it is created; should a link be refused, the task
    stays created and the error says which link failed.
    """
    session = CliSession.of(ctx)
    if prompt is not None and prompt_file is not None:
        raise typer.BadParameter("give --prompt or --prompt-file, not both", param_hint="--prompt")
    text = _read_text(prompt_file) if prompt_file is not None else (prompt or "")
    label_map = parse_pairs(labels, "--label")

    async def command(client: AsyncClient) -> int:
        task = await client.create_task(
            project,
            name,
            text,
            priority=priority,
            role=role,
            model=model,
            labels=label_map,
            requires_approval=requires_approval,
            context_budget=budget,
            agent=agent,
        )
        links: list[tasks_pb2.Link] = []
        for required in requires or ():
            try:
                response = await client.link_tasks(task.task_id, required, "requires", agent)
            except HearthError as err:
                session.err.print(
                    f"task {task.task_id} was created, but its link to task {required} was refused:",
                    markup=False,
                )
                raise err from None
            links.append(response.link)
        if links:
            # Its status changed with the links (it now waits for what it requires).
            task = (await client.get_task(task.task_id)).task
        if as_json:
            session.out.print(
                to_json({"task": proto_dict(task), "links": [proto_dict(link) for link in links]}),
                markup=False,
            )
            return 0
        session.out.print(f"task {task.task_id} created: {task_status_name(task.status)}", markup=False)
        for link in links:
            session.out.print(link_line(link), markup=False)
        return 0

    execute(session, command)


@tasks_app.command("list")
def list_command(
    ctx: typer.Context,
    project: ProjectArg,
    status: Annotated[
        StatusChoice | None, typer.Option("--status", help="Only tasks in this status.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of tasks.")] = False,
) -> None:
    """PROJECT's tasks in scheduling order (priority, created, id): id, status, priority, name, reason."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        tasks = await client.list_tasks(project, status.value if status is not None else None)
        if as_json:
            session.out.print(to_json([proto_dict(task) for task in tasks]), markup=False)
            return 0
        if not tasks:
            session.err.print(f"no tasks in project {project}" + (f" {status.value}" if status else ""))
            return 0
        session.out.print(task_table(tasks))
        return 0

    execute(session, command)


@tasks_app.command("show")
def show_command(
    ctx: typer.Context,
    task_id: TaskArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the task, notes, links and runs as proto3 JSON.")
    ] = False,
) -> None:
    """One task: its fields, notes, links (outgoing and incoming) and most recent runs."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        detail = await client.get_task(task_id)
        if as_json:
            session.out.print(proto_json(detail), markup=False)
            return 0
        print_rows(session, task_rows(detail.task))
        session.out.print("", markup=False)
        session.out.print(f"notes ({len(detail.notes)}):", markup=False)
        for note in detail.notes:
            when = format_time(note.create_time)
            header = " ".join(p for p in (f"#{note.note_id}", "" if when == "-" else when, note.agent) if p)
            session.out.print(f"  {header}: {note.text}", markup=False)
        links = [*detail.outgoing, *detail.incoming]
        session.out.print(f"links ({len(links)}):", markup=False)
        for link in links:
            session.out.print(f"  {link_line(link)}", markup=False)
        session.out.print(f"runs ({len(detail.runs)}, newest first):", markup=False)
        if detail.runs:
            session.out.print(run_table(detail.runs))
        return 0

    execute(session, command)


@tasks_app.command("link")
def link_command(
    ctx: typer.Context,
    from_task: Annotated[int, typer.Argument(help="The task the link starts at.")],
    to_task: Annotated[int, typer.Argument(help="The task it points to.")],
    kind: Kind = KindChoice.requires,  # type: ignore[attr-defined]
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the link as proto3 JSON.")] = False,
) -> None:
    """Link FROM to TO (both of one project). A requires link that would close a
    dependency cycle is refused, and the cycle is printed."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.link_tasks(from_task, to_task, kind.value, agent)
        if as_json:
            session.out.print(proto_json(response), markup=False)
            return 0
        note = " (it existed already)" if response.existed else ""
        session.out.print(f"{link_line(response.link)}{note}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("unlink")
def unlink_command(
    ctx: typer.Context,
    from_task: Annotated[int, typer.Argument(help="The task the link starts at.")],
    to_task: Annotated[int, typer.Argument(help="The task it points to.")],
    kind: Kind = KindChoice.requires,  # type: ignore[attr-defined]
    as_json: Annotated[bool, typer.Option("--json", help="Print the removed link as proto3 JSON.")] = False,
) -> None:
    """Remove the link of this kind from FROM to TO (an error when there is none)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        await client.unlink_tasks(from_task, to_task, kind.value)
        if as_json:
            removed = tasks_pb2.Link(from_task=from_task, to_task=to_task)
            removed.kind = tasks_pb2.LinkKind.Value(f"LINK_KIND_{kind.value.upper()}")
            session.out.print(proto_json(removed), markup=False)
            return 0
        session.out.print(f"removed: task {from_task} {kind.value} {to_task}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("next")
def next_command(
    ctx: typer.Context,
    project: ProjectArg,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print {task, blocked} as proto3 JSON (task absent: nothing ready)."),
    ] = False,
) -> None:
    """The next ready task of PROJECT by (priority, created, id), or "nothing ready"
    and the blocked tasks with their reasons. Exits 0 either way."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.next_task(project)
        if as_json:
            session.out.print(proto_json(response), markup=False)
            return 0
        if response.HasField("task"):
            task = response.task
            session.out.print(f"task {task.task_id}  {task.name}  (priority {task.priority})", markup=False)
            return 0
        session.out.print("nothing ready", markup=False)
        if response.blocked:
            session.out.print(f"blocked ({len(response.blocked)}):", markup=False)
            for task in response.blocked:
                reason = task_reason(task) or "no reason given"
                session.out.print(f"  task {task.task_id} {task.name}: {reason}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("note")
def note_command(
    ctx: typer.Context,
    task_id: TaskArg,
    text: Annotated[str, typer.Argument(help="The note; notes are never changed or deleted.")],
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the note as proto3 JSON.")] = False,
) -> None:
    """Append a note to a task."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        note = await client.add_note(task_id, text, agent)
        if as_json:
            session.out.print(proto_json(note), markup=False)
            return 0
        session.out.print(f"note {note.note_id} added to task {note.task_id}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("done")
def done_command(
    ctx: typer.Context,
    task_id: TaskArg,
    reason: Annotated[str, typer.Option("--reason", help="Why, kept with the task.")] = "",
    status: Annotated[
        CloseChoice,
        typer.Option("--status", help="Close it as done (the default), failed or cancelled."),
    ] = CloseChoice.done,  # type: ignore[attr-defined]
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the task as proto3 JSON.")] = False,
) -> None:
    """Close a task: done, or with --status failed / --status cancelled. The tasks that
    require it are re-evaluated (a failed or cancelled task blocks them)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        task = await client.close_task(task_id, status.value, reason, agent)
        if as_json:
            session.out.print(proto_json(task), markup=False)
            return 0
        because = f": {task.status_reason or reason}" if (task.status_reason or reason) else ""
        session.out.print(f"task {task.task_id} {task_status_name(task.status)}{because}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("block")
def block_command(
    ctx: typer.Context,
    task_id: TaskArg,
    reason: Annotated[str, typer.Option("--reason", help="Hold the task, for this reason.")] = "",
    release: Annotated[bool, typer.Option("--release", help="Lift the hold instead.")] = False,
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the task as proto3 JSON.")] = False,
) -> None:
    """Hold a task (--reason R) so that it does not run, or lift the hold (--release)."""
    session = CliSession.of(ctx)
    if release == bool(reason):
        raise typer.BadParameter("give --reason REASON to hold the task or --release to lift the hold")

    async def command(client: AsyncClient) -> int:
        if release:
            task = await client.release_task(task_id, agent)
        else:
            task = await client.hold_task(task_id, reason, agent)
        if as_json:
            session.out.print(proto_json(task), markup=False)
            return 0
        what = "released" if release else "held"
        why = task_reason(task)
        now = f"{task_status_name(task.status)}: {why}" if why else task_status_name(task.status)
        session.out.print(f"task {task.task_id} {what}; now {now}", markup=False)
        return 0

    execute(session, command)


@tasks_app.command("run")
def run_command(
    ctx: typer.Context,
    task_id: TaskArg,
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print {run, task} as proto3 JSON.")] = False,
) -> None:
    """Run one ready task as a Hearth job and print its run once the job has ended.
    Exits 1 when the run did not succeed."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.run_task(task_id, agent)
        if as_json:
            session.out.print(proto_json(response), markup=False)
        return report_run(session, response.run, quiet=as_json)

    execute(session, command)


@tasks_app.command("index")
def index_command(
    ctx: typer.Context,
    project: ProjectArg,
    file: Annotated[
        str | None, typer.Option("--file", help="Set the INDEX from this file ('-': stdin).")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="Set the INDEX to this text.")] = None,
    agent: Agent = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the project as proto3 JSON.")] = False,
) -> None:
    """PROJECT's INDEX document (conventions, layout, decisions), the first item of every
    task's context. With --file or --text it is set; without either it is printed."""
    session = CliSession.of(ctx)
    if file is not None and text is not None:
        raise typer.BadParameter("give --file or --text, not both", param_hint="--file")
    document = _read_text(file) if file is not None else text

    async def command(client: AsyncClient) -> int:
        if document is None:
            project_ = await client.get_project(project)
            if as_json:
                session.out.print(proto_json(project_), markup=False)
            elif project_.index_document:
                session.out.print(project_.index_document, markup=False, highlight=False)
            else:
                session.err.print(f"project {project} has no INDEX; set one with --file or --text")
            return 0
        project_ = await client.set_project_index(project, document, agent)
        if as_json:
            session.out.print(proto_json(project_), markup=False)
            return 0
        session.out.print(
            f"INDEX of project {project_.project_id} set ({len(project_.index_document)} characters)",
            markup=False,
        )
        return 0

    execute(session, command)


__all__ = ["register", "tasks_app"]

"""Tasks, runs and context bundles as tables and text, shared by ``hearth
tasks``, ``context``, ``project`` and ``runs``; and the one error those
commands print differently (a dependency cycle, shown as the cycle)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.table import Table
from rich.text import Text

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.render import format_time, shorten, to_json
from hearth.cli.session import EXIT_ERROR, CliSession, describe_error
from hearth.client import AsyncClient, link_kind_name, task_status_name
from hearth.errors import FailedPrecondition

_STATUS_STYLES = {
    "pending": "yellow",
    "ready": "blue",
    "running": "cyan",
    "done": "green",
    "blocked": "dark_orange",
    "failed": "red",
    "cancelled": "magenta",
    "waiting_approval": "yellow",
}
#: The fates of the items that went into the prompt.
USED_FATES = frozenset({"included", "summarised", "truncated"})
_RUN_STATUS_STYLES = {"running": "cyan", "done": "green", "failed": "red", "cancelled": "magenta"}


def proto_dict(message: Message) -> dict[str, Any]:
    """A proto as ``--json`` prints it: proto3 JSON with snake_case names and
    every field, defaults included, so scripts can rely on its shape."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def proto_json(message: Message) -> str:
    return to_json(proto_dict(message))


def styled_status(status: int) -> Text:
    """The task status's lower-case name, coloured."""
    name = task_status_name(status)
    return Text(name, style=_STATUS_STYLES.get(name, ""))


def styled_run_status(status: str) -> Text:
    return Text(status or "-", style=_RUN_STATUS_STYLES.get(status, ""))


def task_reason(task: tasks_pb2.Task) -> str:
    """Why a task is blocked, failed or held, as the server put it."""
    if task.status_reason:
        return task.status_reason
    return f"held: {task.hold_reason}" if task.hold_reason else ""


def task_table(tasks: Sequence[tasks_pb2.Task]) -> Table:
    """id, status, priority, name, reason: ``hearth tasks list``."""
    table = Table("id", "status", "priority", "name", "reason", box=box.SIMPLE_HEAD)
    for task in tasks:
        table.add_row(
            str(task.task_id),
            styled_status(task.status),
            str(task.priority),
            Text(task.name),
            task_reason(task),
        )
    return table


def task_rows(task: tasks_pb2.Task) -> list[tuple[str, str]]:
    """``hearth tasks show``'s header as (label, value) rows of plain text."""
    rows = [
        ("task", str(task.task_id)),
        ("project", task.project_id),
        ("name", task.name),
        ("status", task_status_name(task.status)),
    ]
    reason = task_reason(task)
    if reason:
        rows.append(("reason", reason))
    rows += [
        ("priority", str(task.priority)),
        ("role", task.role or "(default)"),
        ("model", task.model or "(router's choice)"),
        ("context budget", str(task.context_budget) if task.context_budget else "(default)"),
    ]
    if task.requires_approval:
        rows.append(("approval", "approved" if task.approved else "required, not yet given"))
    if task.labels:
        rows.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(task.labels.items()))))
    rows.append(("created", _when_by(task.create_time, task.created_by)))
    rows.append(("updated", _when_by(task.update_time, task.updated_by)))
    if task.HasField("close_time"):
        rows.append(("closed", _when_by(task.close_time, task.closed_by)))
    if task.prompt:
        rows.append(("prompt", task.prompt))
    for index, message in enumerate(task.messages, start=1):
        rows.append((f"message {index}", f"{message.role}: {shorten(message.content, 200)}"))
    return rows


def link_line(link: tasks_pb2.Link) -> str:
    """``task 5 requires 3``."""
    return f"task {link.from_task} {link_kind_name(link.kind)} {link.to_task}"


def run_table(runs: Sequence[tasks_pb2.Run]) -> Table:
    """run, task, status, model, tokens, started, rerun of, context: ``hearth runs list``."""
    table = Table(
        "run", "task", "status", "model", "tokens", "started", "rerun of", "context", box=box.SIMPLE_HEAD
    )
    for run in runs:
        table.add_row(
            str(run.run_id),
            str(run.task_id),
            styled_run_status(run.status),
            run.model or "-",
            f"{run.input_tokens} in, {run.output_tokens} out",
            format_time(run.start_time),
            str(run.rerun_of) if run.rerun_of else "-",
            run.context_hash[:12] or "-",
        )
    return table


def run_rows(run: tasks_pb2.Run) -> list[tuple[str, str]]:
    """A run record as (label, value) rows of plain text, the output last."""
    rows = [
        ("run", str(run.run_id)),
        ("task", f"{run.task_id} (project {run.project_id})"),
        ("status", run.status),
    ]
    if run.end_reason or run.end_message:
        rows.append(("end", ": ".join(p for p in (run.end_reason, run.end_message) if p)))
    if run.rerun_of:
        rows.append(("rerun of", str(run.rerun_of)))
    serving = run.model or "-"
    if run.engine:
        serving += f" ({run.engine})"
    rows += [
        ("job", run.job_id or "-"),
        ("model", serving),
    ]
    if run.weights_digest:
        rows.append(("weights", run.weights_digest))
    rows += [
        ("sampling", f"max_tokens {run.max_tokens}, temperature {run.temperature:g}, seed {run.seed}"),
        ("tokens", f"{run.input_tokens} in, {run.output_tokens} out"),
        ("cost", f"{run.cost:.4f}"),
        ("context", run.context_hash or "-"),
        ("started", _when_by(run.start_time, run.started_by)),
        ("ended", format_time(run.end_time)),
        ("output", run.output),
    ]
    return rows


def print_rows(session: CliSession, rows: Sequence[tuple[str, str]]) -> None:
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        session.out.print(f"{label:<{width}}  {value}", markup=False, highlight=False)


def bundle_table(bundle: tasks_pb2.ContextBundle) -> Table:
    """#, tier, source, kind, tokens, fate, why: one row per candidate item."""
    table = Table("#", "tier", "source", "kind", "tokens", "fate", "why", box=box.SIMPLE_HEAD)
    for index, item in enumerate(bundle.items, start=1):
        fate = Text(item.fate, style="" if item.fate in USED_FATES else "dim")
        table.add_row(
            str(index), item.tier, Text(item.source), item.kind, str(item.tokens), fate, Text(item.why or "")
        )
    return table


def bundle_summary(bundle: tasks_pb2.ContextBundle) -> list[str]:
    """The totals, how tokens were counted and the content hash, one line each."""
    used = sum(1 for item in bundle.items if item.fate in USED_FATES)
    left_out = len(bundle.items) - used
    budget = f" of a budget of {bundle.budget}" if bundle.budget else ""
    items = "item" if used == 1 else "items"
    lines = [f"total: {bundle.tokens} tokens{budget}; {used} {items} used, {left_out} left out"]
    if bundle.exact:
        lines.append(f"counter: {bundle.counter} (exact)")
    else:
        counter = f" ({bundle.counter})" if bundle.counter and bundle.counter != "estimate" else ""
        lines.append(
            f"counter: ESTIMATE{counter}: ceil(characters / 4), no local tokenizer for this model; "
            "real counts may differ"
        )
    lines.append(f"context hash: {bundle.context_hash or '-'}")
    return lines


def print_bundle(session: CliSession, bundle: tasks_pb2.ContextBundle, *, prompt: bool) -> None:
    session.out.print(bundle_table(bundle))
    for line in bundle_summary(bundle):
        session.out.print(line, markup=False, highlight=False)
    if prompt:
        session.out.print("", markup=False)
        session.out.print("prompt:", markup=False)
        session.out.print(bundle.prompt, markup=False, highlight=False)


def cycle_text(cycle: str) -> str:
    """``"3,5,7,3"`` -> ``"3 → 5 → 7 → 3"``."""
    return " → ".join(part.strip() for part in cycle.split(",") if part.strip())


def execute(session: CliSession, command: Callable[[AsyncClient], Awaitable[int | None]]) -> None:
    """:meth:`CliSession.execute`, printing a DEPENDENCY_CYCLE refusal with
    the cycle it would close (exit 2, as every API error)."""

    async def guarded(client: AsyncClient) -> int | None:
        try:
            return await command(client)
        except FailedPrecondition as err:
            if err.reason != "DEPENDENCY_CYCLE":
                raise
            session.err.print(describe_error(err), markup=False)
            cycle = err.metadata.get("cycle", "")
            if cycle:
                session.err.print(f"cycle: {cycle_text(cycle)} (each task requires the next)", markup=False)
            return EXIT_ERROR

    session.execute(guarded)


def json_line(value: Any) -> str:
    """One compact JSON line (for streams printed as JSON Lines)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _when_by(timestamp: Any, who: str) -> str:
    when = format_time(timestamp)
    return f"{when} by {who}" if who and when != "-" else when

"""``hearth events export``: the work event log as JSON Lines.

Every change of a project, task, link, note, context override, plan, plan
attempt or run is an event with a sequence number (gap-free, in commit
order), held in PostgreSQL. Each line is one event: ``{"sequence", "time",
"kind", "entity", "project_id", "task_id", "plan_id", "run_id", "agent",
"data"}``, ``data`` being the entity's state after the change. ``--since N``
continues after event N: an export can be resumed with the last sequence it
wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from google.protobuf import json_format

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.session import CliSession
from hearth.cli.task_views import json_line
from hearth.client import AsyncClient

events_app = typer.Typer(
    help="The work event log: every change of tasks, plans and runs.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


def event_dict(event: tasks_pb2.WorkEvent) -> dict[str, Any]:
    """An event as one exported line: ids as numbers, ``data`` parsed."""
    return {
        "sequence": event.sequence,
        "time": json_format.MessageToJson(event.time).strip('"'),
        "kind": event.kind,
        "entity": event.entity,
        "project_id": event.project_id,
        "task_id": event.task_id,
        "plan_id": event.plan_id,
        "run_id": event.run_id,
        "agent": event.agent,
        "data": json.loads(event.data_json) if event.data_json else {},
    }


@events_app.command("export")
def export_command(
    ctx: typer.Context,
    since: Annotated[int, typer.Option("--since", min=0, help="Events after this sequence number.")] = 0,
    project: Annotated[str, typer.Option("--project", "-p", help="Only this project's events.")] = "",
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="At most this many (0: all).")] = 0,
    output: Annotated[str, typer.Option("--output", "-o", help="Write to this file ('-': stdout).")] = "-",
) -> None:
    """Write the work event log after --since as JSON Lines, one event a line, in
    sequence order; the count and the last sequence go to stderr."""
    session = CliSession.of(ctx)

    sink: TextIO = sys.stdout if output == "-" else Path(output).open("w", encoding="utf-8")

    async def command(client: AsyncClient) -> int:
        count, last = 0, since
        async for event in client.export_events(since, project_id=project, limit=limit):
            sink.write(json_line(event_dict(event)) + "\n")
            count, last = count + 1, event.sequence
        sink.flush()
        session.err.print(f"{count} events, the last {last} (continue with --since {last})", markup=False)
        return 0

    try:
        session.execute(command)
    finally:
        if sink is not sys.stdout:
            sink.close()


__all__ = ["event_dict", "events_app", "register"]

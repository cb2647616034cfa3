"""``hearth context preview|approve``: see and steer what a task's run is given.

A task's context bundle is assembled in tiers (the project INDEX, the outputs
of the tasks it requires, siblings, memories, pinned items) within its token
budget; each candidate is included, summarised, truncated, dropped or
excluded, and the table says which and why. Tokens are counted with the
model's own tokenizer where one is known locally, and estimated otherwise
(the output says which).
"""

from __future__ import annotations

from typing import Annotated

import typer

from hearth.cli.session import CliSession
from hearth.cli.task_views import execute, print_bundle, proto_json
from hearth.client import AsyncClient, task_status_name

context_app = typer.Typer(help="Preview and approve the context bundles of tasks.", no_args_is_help=True)

TaskArg = Annotated[int, typer.Argument(help="The task's id.")]
ShowPrompt = Annotated[bool, typer.Option("--prompt", help="Also print the rendered prompt.")]


def register(app: typer.Typer) -> None:
    app.add_typer(context_app, name="context")


@context_app.command("preview")
def preview_command(
    ctx: typer.Context,
    task_id: TaskArg,
    budget: Annotated[
        int, typer.Option("--budget", min=0, help="Tokens of context for this preview; 0: the task's budget.")
    ] = 0,
    prompt: ShowPrompt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the bundle as proto3 JSON.")] = False,
) -> None:
    """The context a run of TASK would get, without running it: every candidate item
    (#, tier, source, kind, tokens, fate, why), the totals, how tokens were counted
    (exact, or an estimate) and the bundle's content hash."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        bundle = await client.preview_context(task_id, budget)
        if as_json:
            session.out.print(proto_json(bundle), markup=False)
            return 0
        print_bundle(session, bundle, prompt=prompt)
        return 0

    execute(session, command)


@context_app.command("approve")
def approve_command(
    ctx: typer.Context,
    task_id: TaskArg,
    pins: Annotated[
        list[str] | None,
        typer.Option("--pin", help="A source to add as a pinned item: task:<id> or memory:<id>; repeatable."),
    ] = None,
    excludes: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="A source to leave out, whatever its tier (e.g. task:9); repeatable."),
    ] = None,
    agent: Annotated[str, typer.Option("--agent", help="Who approves.")] = "",
    prompt: ShowPrompt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {task, bundle} as proto3 JSON.")] = False,
) -> None:
    """Approve TASK to run, storing the pins and excludes every later run uses; prints
    the bundle its next run will get."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.approve_context(task_id, pins or (), excludes or (), agent)
        if as_json:
            session.out.print(proto_json(response), markup=False)
            return 0
        task = response.task
        session.out.print(f"task {task.task_id} approved: {task_status_name(task.status)}", markup=False)
        print_bundle(session, response.bundle, prompt=prompt)
        return 0

    execute(session, command)


__all__ = ["context_app", "register"]

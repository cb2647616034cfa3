"""``hearth memory add|search``."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from hearth.api.memory.v1 import memory_pb2
from hearth.cli.render import message_to_dict, shorten, to_json
from hearth.cli.session import CliSession
from hearth.client import MEMORY_KIND_NAMES, AsyncClient

KindChoice = enum.Enum("KindChoice", {name: name for name in MEMORY_KIND_NAMES}, type=str)  # type: ignore[misc]

memory_app = typer.Typer(help="Store and search long-term memories.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")


@memory_app.command("add")
def add_command(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="What to remember.")],
    project: Annotated[str, typer.Option("--project", help="The project (tenant).")],
    task: Annotated[str, typer.Option("--task", help="Narrow the scope to one task.")] = "",
    kind: Annotated[KindChoice, typer.Option("--kind", help="What the memory is.")] = KindChoice["note"],
) -> None:
    """Store one memory; prints its id."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        memory = await client.memory_store(text, project, task, kind=kind.value)
        session.out.print(memory.memory_id, markup=False)
        return 0

    session.execute(command)


@memory_app.command("search")
def search_command(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    project: Annotated[str, typer.Option("--project", help="The project to search.")],
    task: Annotated[str, typer.Option("--task", help="Only memories of this task.")] = "",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100, help="At most this many.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {memory, score}.")] = False,
) -> None:
    """The project's memories nearest in meaning to QUERY."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        results = await client.memory_query(query, project, task, top_k)
        if as_json:
            session.out.print(to_json([message_to_dict(r) for r in results]), markup=False)
            return 0
        table = Table("score", "memory", "kind", "task", "text", box=box.SIMPLE_HEAD)
        for result in results:
            memory = result.memory
            table.add_row(
                f"{result.score:.3f}",
                memory.memory_id,
                memory_pb2.MemoryKind.Name(memory.kind).removeprefix("MEMORY_KIND_").lower(),
                memory.task_id or "-",
                Text(shorten(memory.text, 60)),
            )
        session.out.print(table)
        if not results:
            session.err.print("no memories found", markup=False)
        return 0

    session.execute(command)

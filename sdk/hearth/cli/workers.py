"""``hearth workers``: the live workers as the pool sees them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from hearth.api.worker.v1 import worker_pb2
from hearth.cli.render import format_age, format_bytes, message_to_dict, to_json
from hearth.cli.session import CliSession
from hearth.client import AsyncClient


def register(app: typer.Typer) -> None:
    app.command("workers")(workers_command)


def workers_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of workers.")] = False,
) -> None:
    """Live workers: engine, models, load, GPU memory, last heartbeat."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        workers = await client.list_workers()
        if as_json:
            session.out.print(to_json([message_to_dict(w) for w in workers]), markup=False)
            return 0
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        # Ids and addresses are copied from here: never cut them; long model lists fold instead.
        for header in ("worker", "address"):
            table.add_column(header, no_wrap=True)
        table.add_column("engine", no_wrap=True)
        table.add_column("models", overflow="fold", min_width=12)
        for header in ("load", "GPU memory", "heartbeat"):
            table.add_column(header, no_wrap=True)
        for worker in workers:
            info = worker.info
            gpu = info.gpu
            memory = (
                f"{gpu.memory_used_bytes / 2**30:.1f}/{format_bytes(gpu.memory_total_bytes)}"
                if gpu.present
                else "absent"
            )
            table.add_row(
                info.worker_id,
                info.address,
                info.engine,
                ", ".join(_model_label(m) for m in info.models),
                f"{info.running}/{info.max_concurrency}",
                memory,
                format_age(worker.heartbeat_age),
            )
        session.out.print(table)
        if not workers:
            session.err.print("no live workers", markup=False)
        return 0

    session.execute(command)


def _model_label(model: worker_pb2.ModelInfo) -> str:
    """A loaded model by its name; any other by its name and state."""
    if model.state in (worker_pb2.MODEL_STATE_LOADED, worker_pb2.MODEL_STATE_UNSPECIFIED):
        return model.name
    state = worker_pb2.ModelState.Name(model.state).removeprefix("MODEL_STATE_").lower()
    return f"{model.name} ({state})"

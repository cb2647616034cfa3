"""``hearth status``: is every service of the stack serving?"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from hearth.cli.render import to_json
from hearth.cli.session import EXIT_FAILED, CliSession
from hearth.client import AsyncClient

_STYLES = {"SERVING": "green", "NOT_SERVING": "yellow", "UNREACHABLE": "red"}


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)


def status_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print {service: {address, status}}.")] = False,
) -> None:
    """The health of each service of the stack. Exits 1 when any is not serving."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        health = await client.health()
        addresses = client.addresses.named()
        if as_json:
            report = {name: {"address": addresses[name], "status": state} for name, state in health.items()}
            session.out.print(to_json(report), markup=False)
        else:
            table = Table("service", "address", "status", box=box.SIMPLE_HEAD)
            for name, state in health.items():
                style = _STYLES.get(state, "")
                table.add_row(name, addresses[name], f"[{style}]{state}[/{style}]")
            session.out.print(table)
        return 0 if health and all(state == "SERVING" for state in health.values()) else EXIT_FAILED

    session.execute(command)

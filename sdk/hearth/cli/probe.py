"""``hearth probe TARGET``: the tool-call conformance suite of one target."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from hearth.cli.render import message_to_dict, to_json
from hearth.cli.session import CliSession
from hearth.client import AsyncClient
from hearth.probe import probe_target


def register(app: typer.Typer) -> None:
    app.command("probe")(probe_command)


def probe_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A target (model) of the registry.")],
    timeout: Annotated[float, typer.Option(help="Seconds the probe's generation may take.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the recorded result as JSON.")] = False,
) -> None:
    """Check that TARGET makes usable tool calls; the router sends jobs with
    tools only to targets whose latest probe passed. Exits 1 when a check fails."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        recorded = await probe_target(client, target, timeout=timeout)
        conformance = recorded.conformance
        if as_json:
            session.out.print(to_json(message_to_dict(recorded)), markup=False)
        else:
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
            for header in ("check", "result", "detail"):
                table.add_column(header, overflow="fold")
            for check in conformance.checks:
                table.add_row(check.name, "pass" if check.passed else "FAIL", check.detail)
            session.out.print(table)
            verdict = "passed: jobs with tools may go to it" if conformance.passed else "failed"
            session.out.print(f"{target}: {verdict}", markup=False)
        return 0 if conformance.passed else 1

    session.execute(command)

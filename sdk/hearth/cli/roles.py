"""``hearth roles``: the agent roles, and the model each would use now.

A role (manager, coder, tester, researcher, writer, or one of the models
file's) has a default model chain, a system prompt, a context policy (a
budget and the tiers its tasks draw on) and tool permissions. The model it
would use *now* is the router's answer to a dry run for a job of the role
(nothing is counted), with the reason the router gives.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.render import shorten, to_json
from hearth.cli.session import CliSession
from hearth.cli.task_views import proto_dict
from hearth.client import AsyncClient


def register(app: typer.Typer) -> None:
    app.command("roles")(roles_command)


def route_text(role: tasks_pb2.Role) -> str:
    """``qwen-7b (ROLE_DEFAULT)``, ``refused: POLICY_DENIED``, or ``-``."""
    if not role.HasField("route"):
        return "-"
    route = role.route
    if route.error_reason:
        return f"refused: {route.error_reason}"
    return f"{route.chosen_target} ({route.reason})" if route.reason else route.chosen_target or "-"


def roles_table(roles: list[tasks_pb2.Role]) -> Table:
    table = Table("role", "models", "now", "context", "tools", "system prompt", box=box.SIMPLE_HEAD)
    for role in roles:
        name = Text(role.name)
        if role.is_default:
            name.append(" (default)", style="dim")
        budget = str(role.context_budget) if role.context_budget else "default"
        table.add_row(
            name,
            ", ".join(role.models) or "(router's fallback)",
            route_text(role),
            f"{budget} tokens: {', '.join(role.context_tiers)}",
            "any" if role.any_tool else (", ".join(role.tools) or "none"),
            Text(shorten(role.system_prompt, 60) or "-"),
        )
    return table


def roles_command(
    ctx: typer.Context,
    route: Annotated[
        bool, typer.Option("--route/--no-route", help="Ask the router which model each role would use now.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the roles as a JSON list.")] = False,
) -> None:
    """The agent roles: each one's model chain, the model it would use now (the
    router's dry run, with its reason), its context policy, tools and system prompt."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        roles = await client.list_roles(route=route)
        if as_json:
            session.out.print(to_json([proto_dict(r) for r in roles]), markup=False)
            return 0
        session.out.print(roles_table(roles))
        details = [
            f"{r.name}: {r.route.error_reason}: {r.route.error_message}"
            for r in roles
            if r.HasField("route") and r.route.error_reason
        ]
        details += [
            f"{r.name}: {r.route.chosen_target}: {r.route.detail}"
            for r in roles
            if r.HasField("route") and r.route.detail and not r.route.error_reason
        ]
        for line in details:
            session.err.print(line, markup=False, highlight=False)
        return 0

    session.execute(command)


__all__ = ["register", "roles_table", "route_text"]

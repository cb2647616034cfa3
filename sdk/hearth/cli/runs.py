"""``hearth runs list|show|rerun|diff``: the runs of tasks, reproduced and compared.

A run records what a task's job was given (a context snapshot: the exact
prompt) and what served it (model, engine, weights, sampling), so that
``rerun`` can repeat it byte for byte and ``diff`` can say why two runs differ.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hearth.api.tasks.v1 import tasks_pb2
from hearth.cli.render import to_json
from hearth.cli.session import EXIT_FAILED, CliSession
from hearth.cli.task_views import (
    execute,
    print_bundle,
    print_rows,
    proto_dict,
    proto_json,
    run_rows,
    run_table,
)
from hearth.client import AsyncClient

runs_app = typer.Typer(help="List, inspect, rerun and compare the runs of tasks.", no_args_is_help=True)

RunArg = Annotated[int, typer.Argument(help="The run's id.")]


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def report_run(session: CliSession, run: tasks_pb2.Run, *, quiet: bool = False) -> int:
    """Print a run (unless ``quiet``); exit code 1 with the reason on stderr
    when it did not end done."""
    if not quiet:
        print_rows(session, run_rows(run))
    if run.status == "done":
        return 0
    reason = ": ".join(p for p in (run.end_reason, run.end_message) if p) or "no reason given"
    session.err.print(f"error: run {run.run_id} of task {run.task_id} {run.status}: {reason}", markup=False)
    return EXIT_FAILED


@runs_app.command("list")
def list_command(
    ctx: typer.Context,
    project: Annotated[str, typer.Option("--project", "-p", help="The runs of this project.")] = "",
    task: Annotated[int, typer.Option("--task", help="The runs of this task.")] = 0,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many runs.")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of runs.")] = False,
) -> None:
    """The runs of a project (--project) or of one task (--task), newest first."""
    session = CliSession.of(ctx)
    if bool(project) == bool(task):
        raise typer.BadParameter("give exactly one of --project and --task")

    async def command(client: AsyncClient) -> int:
        runs = await client.list_runs(project_id=project, task_id=task, page_size=limit)
        if as_json:
            session.out.print(to_json([proto_dict(run) for run in runs]), markup=False)
            return 0
        if not runs:
            session.err.print("no runs yet", markup=False)
            return 0
        session.out.print(run_table(runs))
        return 0

    execute(session, command)


@runs_app.command("show")
def show_command(
    ctx: typer.Context,
    run_id: RunArg,
    prompt: Annotated[
        bool, typer.Option("--prompt", help="Also print the exact prompt the run sent.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {run, bundle} as proto3 JSON.")] = False,
) -> None:
    """One run: status, model and engine, sampling, tokens, output, and its context
    snapshot (the items, their fates, the hash)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.get_run(run_id)
        if as_json:
            session.out.print(proto_json(response), markup=False)
            return 0
        print_rows(session, run_rows(response.run))
        session.out.print("", markup=False)
        if response.HasField("bundle"):
            session.out.print("context:", markup=False)
            print_bundle(session, response.bundle, prompt=prompt)
        else:
            session.out.print("context: the snapshot is gone", markup=False)
        return 0

    execute(session, command)


@runs_app.command("rerun")
def rerun_command(
    ctx: typer.Context,
    run_id: RunArg,
    agent: Annotated[str, typer.Option("--agent", help="Who reruns it.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the new run as proto3 JSON.")] = False,
) -> None:
    """Run RUN's task again with the same context snapshot (the same prompt, byte for
    byte) and the same model and sampling; prints the new run. Exits 1 when it did
    not succeed. Compare the two with `hearth runs diff RUN NEW`."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        run = await client.rerun_task(run_id, agent)
        if as_json:
            session.out.print(proto_json(run), markup=False)
        return report_run(session, run, quiet=as_json)

    execute(session, command)


@runs_app.command("diff")
def diff_command(
    ctx: typer.Context,
    run_a: Annotated[int, typer.Argument(metavar="A", help="The first run.")],
    run_b: Annotated[int, typer.Argument(metavar="B", help="The run to compare it with.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff JSON the server made.")] = False,
) -> None:
    """What differs between runs A and B: context items added, removed and changed,
    whether the prompts are identical, model, engine and sampling changes, tokens, and
    the output (identical, or a unified diff)."""
    session = CliSession.of(ctx)

    async def command(client: AsyncClient) -> int:
        response = await client.diff_runs(run_a, run_b)
        diff = json.loads(response.diff_json) if response.diff_json else {}
        if as_json:
            session.out.print(to_json(diff), markup=False)
            return 0
        for line in diff_lines(response, diff, run_a, run_b):
            session.out.print(line, markup=False, highlight=False)
        return 0

    execute(session, command)


def diff_lines(
    response: tasks_pb2.DiffRunsResponse, diff: dict[str, Any], run_a: int, run_b: int
) -> list[str]:
    """``hearth runs diff`` for people, from the response and its parsed diff JSON."""
    lines = [f"run {run_a} → run {run_b}"]
    context = diff.get("context") or {}
    hashes = context.get("hashes") or {}
    if response.same_context:
        lines.append(f"context: the same ({_short(hashes.get('a'))})")
    else:
        lines.append(f"context: different ({_short(hashes.get('a'))} → {_short(hashes.get('b'))})")
        if context.get("known", True):
            for label in ("added", "removed", "changed"):
                sources = context.get(label) or []
                lines.append(f"  {label}: {', '.join(sources) if sources else '-'}")
        else:
            lines.append("  (a snapshot is gone: the items cannot be compared)")
    same_prompt = diff.get("same_prompt", diff.get("prompt_identical"))
    if same_prompt is None:
        lines.append("prompt: unknown (a snapshot is gone)")
    else:
        lines.append("prompt: identical" if same_prompt else "prompt: different")
    serving = diff.get("serving_changes") or {}
    if serving:
        for name, pair in serving.items():
            lines.append(f"{name}: {_value(pair.get('a'))} → {_value(pair.get('b'))}")
    else:
        lines.append("model, engine, weights: the same")
    sampling = diff.get("sampling_changes") or {}
    if sampling:
        changes = [f"{key} {_value(p.get('a'))} → {_value(p.get('b'))}" for key, p in sampling.items()]
        lines.append(f"sampling: {', '.join(changes)}")
    else:
        lines.append("sampling: the same")
    inputs, outputs = diff.get("input_tokens") or {}, diff.get("output_tokens") or {}
    if inputs or outputs:
        lines.append(
            f"tokens: {inputs.get('a', '?')} → {inputs.get('b', '?')} in, "
            f"{outputs.get('a', '?')} → {outputs.get('b', '?')} out"
        )
    if response.same_output:
        lines.append("output: identical")
    else:
        lines.append("output: different")
        output_diff = diff.get("output_diff") or ""
        if output_diff:
            lines.extend(output_diff.splitlines())
    return lines


def _short(context_hash: object) -> str:
    return str(context_hash)[:12] if context_hash else "-"


def _value(value: object) -> str:
    return "(unset)" if value is None or value == "" else str(value)


__all__ = ["diff_lines", "register", "report_run", "runs_app"]

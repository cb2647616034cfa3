"""``hearth models list|pull|verify|rm``: the local model catalog.

These commands work on the catalog folder (``--models-dir``, default
``<data-dir>/models``) and need no running stack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from hearth.catalog import (
    CatalogEntry,
    ModelCatalog,
    PullProgress,
    default_models_dir,
    models_config_snippet,
)
from hearth.cli.render import to_json
from hearth.cli.session import EXIT_FAILED, CliSession
from hearth.errors import HearthError

ModelsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        envvar="HEARTH_MODELS_DIR",
        help="The catalog folder; default: <data-dir>/models.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    models = typer.Typer(
        name="models",
        help="The local model catalog: pull models onto this machine, list, verify and remove them.",
        no_args_is_help=True,
    )
    models.command("list")(list_command)
    models.command("pull")(pull_command)
    models.command("verify")(verify_command)
    models.command("rm")(remove_command)
    app.add_typer(models, name="models")


def list_command(ctx: typer.Context, models_dir: ModelsDirOption = None, as_json: JsonOption = False) -> None:
    """The models in the catalog: size, parameters, dtype, context and VRAM estimate."""
    session = CliSession.of(ctx)
    catalog = _catalog(session, models_dir)
    with _errors_reported(session):
        entries = catalog.list()
    if as_json:
        session.out.print(to_json([entry.to_json() for entry in entries]), markup=False)
        return
    if not entries:
        session.err.print(
            f"no models in {catalog.root}; add one with `hearth models pull <folder or owner/name>`",
            markup=False,
        )
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    for header in ("parameters", "dtype", "context", "size", "VRAM est."):
        table.add_column(header, no_wrap=True, justify="right")
    table.add_column("source", overflow="fold")
    for entry in entries:
        table.add_row(
            entry.name,
            format_count(entry.parameters),
            entry.dtype or "-",
            str(entry.context_length),
            format_size(entry.size_bytes),
            format_size(entry.vram_estimate_bytes),
            entry.source,
        )
    session.out.print(table)


def pull_command(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="A local model folder (copied in) or a Hugging Face repo id: owner/name[@revision]."
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="The catalog name; default: the folder's or repo's name.")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hugging Face branch, tag or commit; default: main.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of the same name.")] = False,
    models_dir: ModelsDirOption = None,
) -> None:
    """Pull a model into the catalog, then print the `models:` entry for hearth.yaml.

    Hugging Face downloads honour HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE.
    """
    session = CliSession.of(ctx)
    catalog = _catalog(session, models_dir)
    bars = _PullBars(session)
    with _errors_reported(session), bars:
        entry = catalog.pull(source, name, revision=revision, force=force, progress=bars.report)
    session.err.print(_summary(entry), markup=False)
    session.err.print("add this to hearth.yaml:", markup=False)
    session.out.print(models_config_snippet([entry]).rstrip(), markup=False, highlight=False)


def verify_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's catalog name.")],
    models_dir: ModelsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every file's sha256; exit 1 when a file is missing, changed or extra."""
    session = CliSession.of(ctx)
    catalog = _catalog(session, models_dir)
    with _errors_reported(session):
        result = catalog.verify(name)
    if as_json:
        session.out.print(to_json(result.to_json()), markup=False)
    elif result.ok:
        session.out.print(f"{result.name}: ok ({result.intact} files intact)", markup=False)
    else:
        session.out.print(f"{result.name}: FAILED ({result.intact} files intact)", markup=False)
        for label, paths in (
            ("missing", result.missing),
            ("changed", result.changed),
            ("extra", result.extra),
        ):
            for path in paths:
                session.out.print(f"  {label}: {path}", markup=False)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def remove_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's catalog name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    models_dir: ModelsDirOption = None,
) -> None:
    """Remove a model and its files from the catalog (asks first unless --yes)."""
    session = CliSession.of(ctx)
    catalog = _catalog(session, models_dir)
    with _errors_reported(session):
        entry = catalog.get(name)
    if not yes:
        typer.confirm(
            f"remove {entry.name} ({format_size(entry.size_bytes)}) from {catalog.root}?",
            abort=True,
            err=True,
        )
    with _errors_reported(session):
        catalog.remove(name)
    session.err.print(f"removed {entry.name}", markup=False)


def format_count(count: int) -> str:
    """A parameter count for people: 494M, 7.6B; "-" when unknown."""
    if count <= 0:
        return "-"
    for limit, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= limit:
            value = count / limit
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return str(count)


def format_size(count: int) -> str:
    """Bytes in binary units: 812.3 KiB, 1.4 GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _catalog(session: CliSession, models_dir: Path | None) -> ModelCatalog:
    return ModelCatalog(models_dir or default_models_dir(session.data_dir))


@contextmanager
def _errors_reported(session: CliSession) -> Iterator[None]:
    """Hearth errors become the CLI's one-line message and exit 2."""
    try:
        yield
    except HearthError as err:
        session.fail(err)


def _summary(entry: CatalogEntry) -> str:
    return (
        f"pulled {entry.name} into {entry.path}: {len(entry.files)} files, {format_size(entry.size_bytes)}, "
        f"{format_count(entry.parameters)} parameters ({entry.dtype or 'dtype unknown'}), "
        f"context {entry.context_length}, about {entry.vram_mib} MiB of VRAM"
    )


class _PullBars:
    """Rich progress bars on stderr, one per progress task of a pull.

    ``report`` may be called from download threads; rich's Progress is
    thread-safe, the task table is guarded here.
    """

    def __init__(self, session: CliSession) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeRemainingColumn(),
            console=session.err,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> _PullBars:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def report(self, update: PullProgress) -> None:
        if update.unit == "B":
            total = f"/{format_size(int(update.total))}" if update.total else ""
            amount = f"{format_size(int(update.completed))}{total}"
        else:
            total = f"/{update.total:.0f}" if update.total else ""
            amount = f"{update.completed:.0f}{total} {update.unit}"
        with self._lock:
            task = self._tasks.get(update.task)
            if task is None:
                task = self._progress.add_task(update.description, total=update.total, amount=amount)
                self._tasks[update.task] = task
        self._progress.update(
            task,
            description=update.description,
            completed=update.completed,
            total=update.total,
            amount=amount,
        )

"""What every command shares: the global options, one place that runs an
async command against the stack, and one way errors are printed.

A command gets the :class:`CliSession` from ``ctx.obj`` (set by the app's
callback from the global options) and calls :meth:`CliSession.execute` with a
coroutine function of an :class:`~hearth.client.AsyncClient`. Errors of
:mod:`hearth.errors` become one line on stderr and exit code 2; Ctrl-C exits
130; no traceback is printed unless ``HEARTH_DEBUG`` is set.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from hearth.client import AsyncClient
from hearth.errors import HearthError, Unavailable

#: Exit codes of the CLI.
EXIT_OK = 0
EXIT_FAILED = 1
"""The command ran, and what it reports is a failure (a failed job, a service not serving)."""
EXIT_ERROR = 2
"""The command could not run: an API error, a bad argument, no stack."""
EXIT_INTERRUPTED = 130

AsyncCommand = Callable[[AsyncClient], Awaitable[int | None]]


@dataclass
class CliSession:
    """The state of one ``hearth`` invocation, in ``ctx.obj`` for every command."""

    data_dir: Path
    """The stack's data dir (``--data-dir``, ``$HEARTH_DATA_DIR``, ``.hearth``)."""
    out: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    """stdout, for results."""
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))
    """stderr, for progress, summaries and errors."""

    @classmethod
    def of(cls, ctx: typer.Context) -> CliSession:
        """The session of this invocation (made from the defaults when the app callback did not run)."""
        root = ctx.find_root()
        if not isinstance(root.obj, CliSession):
            root.obj = cls(data_dir=Path(os.environ.get("HEARTH_DATA_DIR") or ".hearth"))
        return root.obj

    def execute(self, command: AsyncCommand) -> None:
        """Run ``command`` with a client of the running stack, then exit with its code.

        The client is found with :meth:`AsyncClient.from_env` in this session's
        data dir and closed afterwards. A returned non-zero int becomes the
        exit code.
        """

        async def with_client() -> int | None:
            async with AsyncClient.from_env(self.data_dir) as client:
                return await command(client)

        code = self.run_async(with_client)
        if code:
            raise typer.Exit(code)

    def run_async(self, main: Callable[[], Awaitable[int | None]]) -> int | None:
        """``asyncio.run(main())`` with the CLI's error handling."""
        try:
            return asyncio.run(_as_coroutine(main))
        except HearthError as err:
            self.fail(err)
        except KeyboardInterrupt:
            self.err.print("interrupted", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if os.environ.get("HEARTH_DEBUG"):
                traceback.print_exc()
            self.err.print(
                f"error: INTERNAL: unexpected {type(err).__name__}: {err} "
                "(set HEARTH_DEBUG=1 for the traceback)",
                markup=False,
            )
            raise typer.Exit(EXIT_ERROR) from None

    def fail(self, err: HearthError) -> NoReturn:
        """Print ``error: REASON: message[, retry in Ns]`` to stderr and exit 2."""
        self.err.print(describe_error(err), markup=False)
        raise typer.Exit(EXIT_ERROR)


def describe_error(err: HearthError) -> str:
    """One line for people: ``error: QUEUE_FULL: the queue is full, retry in 1.0s``."""
    line = f"error: {err.reason}: {err.message}" if err.message else f"error: {err.reason}"
    if err.retry_after is not None:
        line += f", retry in {err.retry_after:.1f}s"
    if isinstance(err, Unavailable) and err.reason == "UNAVAILABLE":
        # No server answered with a reason: the process is most likely not running.
        line += " (is the stack running? see `hearth status`)"
    return line


async def _as_coroutine(main: Callable[[], Awaitable[int | None]]) -> int | None:
    return await main()

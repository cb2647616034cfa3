"""Hearth: local-first LLM orchestration. The client SDK lives here.

The public names are re-exported here: ``hearth.Client`` (blocking),
``hearth.AsyncClient`` (asyncio), their streams, and the errors of
:mod:`hearth.errors`. They are imported on first use, so that services that
import only ``hearth.runtime`` do not load the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncClient": "hearth.client",
    "Client": "hearth.client",
    "JobStream": "hearth.client",
    "SyncJobStream": "hearth.client",
    "Aborted": "hearth.errors",
    "AlreadyExists": "hearth.errors",
    "Cancelled": "hearth.errors",
    "DeadlineExceeded": "hearth.errors",
    "FailedPrecondition": "hearth.errors",
    "HearthError": "hearth.errors",
    "Internal": "hearth.errors",
    "InvalidArgument": "hearth.errors",
    "NotFound": "hearth.errors",
    "ResourceExhausted": "hearth.errors",
    "Unavailable": "hearth.errors",
}

if TYPE_CHECKING:
    from hearth.client import AsyncClient, Client, JobStream, SyncJobStream
    from hearth.errors import (
        Aborted,
        AlreadyExists,
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        HearthError,
        Internal,
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        Unavailable,
    )


#: Submodules that ``import hearth`` makes reachable as attributes (``hearth.errors.NotFound``).
_SUBMODULES = frozenset({"client", "errors", "tracetree"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"hearth.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hearth' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HearthError",
    "Internal",
    "InvalidArgument",
    "JobStream",
    "NotFound",
    "ResourceExhausted",
    "SyncJobStream",
    "Unavailable",
    "__version__",
]

"""What every benchmark run does around its measurement."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

Report = TypeVar("Report")
Progress = Callable[[str], None]


def run_bench(
    measure: Callable[[Path, Progress], Coroutine[Any, Any, Report]],
    data_dir: Path | None,
    progress: Progress | None,
    *,
    prefix: str,
) -> Report:
    """Run ``measure(data_dir, progress)`` offline, in ``data_dir`` (kept) or
    in a temporary folder named with ``prefix`` (removed afterwards)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    say: Progress = progress or (lambda _msg: None)
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(measure(data_dir, say))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return asyncio.run(measure(Path(tmp), say))

"""Conformance results kept in one JSON file under routerd's data dir."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from routerd.domain.conformance import Conformance

log = logging.getLogger(__name__)


class ConformanceFile:
    """``{target: result}`` in a JSON file, rewritten whole and atomically
    (a temporary file renamed over it), so a crash never leaves half a file.

    Args:
        path: the file; its folder is created on the first save.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> dict[str, Conformance]:
        """Every stored result; empty when the file does not exist. An
        unreadable file is logged and treated as empty (results can be
        probed again; routing must not stop over them)."""
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            return {name: Conformance.from_json(result) for name, result in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("ignoring the unreadable conformance file %s: %s", self._path, err)
            return {}

    def save(self, results: dict[str, Conformance]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({name: r.to_json() for name, r in sorted(results.items())}, indent=2)
        fd, staging = tempfile.mkstemp(dir=self._path.parent, prefix=".conformance-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(staging, self._path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

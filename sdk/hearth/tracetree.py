"""A job's trace as a tree, read from the span files the services write.

In the embedded default every service appends its finished spans to
``<data_dir>/traces/<service>.jsonl``, one JSON object per line (see
:mod:`hearth.runtime.tracing`)::

    {"trace_id", "span_id", "parent_id", "name", "service", "kind",
     "start_ns", "end_ns", "status", "attributes"}

:func:`load_job_trace` finds the traces that carry a job id (the
``hearth.job_id`` attribute) and returns all of their spans, from every
file; :func:`render_tree` prints them as an indented tree. ``hearth trace
JOB_ID`` is the two together.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

#: The span attribute that carries the job id (the same as hearth.runtime.JOB_ID_ATTRIBUTE;
#: repeated here so that the CLI does not import the service runtime).
JOB_ID_ATTRIBUTE: Final = "hearth.job_id"
#: The folder, inside a data dir, of the span files.
TRACES_DIR: Final = "traces"
_ERROR_MARK: Final = "✗ error"


@dataclass(frozen=True)
class SpanRecord:
    """One finished span as a service wrote it."""

    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits."""
    parent_id: str
    """The parent's span id; empty for a trace's root."""
    name: str
    """The operation, e.g. ``/hearth.api.orchestrator.v1.OrchestratorService/SubmitJob``."""
    service: str
    """service.name of the process that wrote it."""
    kind: str = ""
    """SERVER, CLIENT, INTERNAL, PRODUCER or CONSUMER."""
    start_ns: int = 0
    """Start, in nanoseconds since the epoch."""
    end_ns: int | None = None
    """End, in nanoseconds since the epoch; None if it never ended."""
    status: str = "UNSET"
    """UNSET, OK or ERROR."""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        """Duration in milliseconds; None when the span has no end."""
        if self.end_ns is None:
            return None
        return max(0, self.end_ns - self.start_ns) / 1e6

    @property
    def is_error(self) -> bool:
        return self.status.upper() == "ERROR"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SpanRecord:
        """Parse one line's object. Raises KeyError/TypeError/ValueError when it is not a span."""
        end = raw.get("end_ns")
        attributes = raw.get("attributes") or {}
        return cls(
            trace_id=str(raw["trace_id"]),
            span_id=str(raw["span_id"]),
            parent_id=str(raw.get("parent_id") or ""),
            name=str(raw.get("name", "")),
            service=str(raw.get("service", "")),
            kind=str(raw.get("kind", "")),
            start_ns=int(raw.get("start_ns") or 0),
            end_ns=int(end) if end is not None else None,
            status=str(raw.get("status") or "UNSET"),
            attributes=dict(attributes) if isinstance(attributes, Mapping) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """The span as it was written (for ``hearth trace --json``)."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "service": self.service,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "attributes": dict(self.attributes),
        }


def read_spans(path: str | os.PathLike[str]) -> Iterator[SpanRecord]:
    """Every span in one JSONL file. Lines that are not spans are skipped:
    the last line may be half written while a service is flushing."""
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, Mapping):
                    raise TypeError("not an object")
                yield SpanRecord.from_dict(raw)
            except (ValueError, KeyError, TypeError) as err:
                log.debug("%s:%d: skipping a line that is not a span: %s", path, number, err)


def span_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The span files of a data dir (``<data_dir>/traces/*.jsonl``), sorted by name."""
    folder = Path(data_dir) / TRACES_DIR
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.jsonl"))


def load_job_trace(data_dir: str | os.PathLike[str], job_id: str) -> list[SpanRecord]:
    """Every span of the traces that touched a job, from all span files.

    A trace belongs to the job when any of its spans has
    ``attributes["hearth.job_id"] == job_id``; all spans of such traces are
    returned (those without the attribute too), each once, ordered by start
    time. Empty when nothing matches (span files are flushed every 200 ms, so
    a job that just ended may need a moment).
    """
    files = span_files(data_dir)
    # Two passes over the files, so that memory holds one job's spans, not every trace's.
    trace_ids = {
        span.trace_id
        for path in files
        for span in read_spans(path)
        if span.attributes.get(JOB_ID_ATTRIBUTE) == job_id
    }
    if not trace_ids:
        return []
    found: dict[tuple[str, str], SpanRecord] = {}
    for path in files:
        for span in read_spans(path):
            if span.trace_id in trace_ids:
                found.setdefault((span.trace_id, span.span_id), span)
    return sorted(found.values(), key=lambda s: (s.start_ns, s.span_id))


def render_tree(spans: Iterable[SpanRecord]) -> str:
    """The spans as one indented tree per trace.

    Each trace starts with a header line (its id, span count, service
    count); then one line per span: tree guides, the service, the operation,
    the duration in milliseconds, the offset from the trace's start, and an
    error mark for spans with status ERROR. Children are ordered by start
    time; spans whose parent is not among ``spans`` are shown as roots.
    """
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    if not by_trace:
        return "no spans"
    ordered = sorted(by_trace.values(), key=lambda group: min(s.start_ns for s in group))
    return "\n\n".join(_render_trace(group) for group in ordered)


def _render_trace(spans: list[SpanRecord]) -> str:
    spans = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    roots: list[SpanRecord] = []
    for span in spans:
        if span.parent_id and span.parent_id in ids and span.parent_id != span.span_id:
            children[span.parent_id].append(span)
        else:
            roots.append(span)

    rows: list[tuple[str, SpanRecord]] = []
    visited: set[str] = set()

    def walk(span: SpanRecord, prefix: str, guide: str) -> None:
        visited.add(span.span_id)
        rows.append((f"{prefix}{guide}{span.service}  {span.name}", span))
        kids = [k for k in children.get(span.span_id, []) if k.span_id not in visited]
        below = prefix + ("" if not guide else "    " if guide == "└── " else "│   ")
        for index, kid in enumerate(kids):
            walk(kid, below, "└── " if index == len(kids) - 1 else "├── ")

    for root in roots:
        walk(root, "", "")
    # Spans in a parent cycle are reachable from no root; show them rather than lose them.
    for span in spans:
        if span.span_id not in visited:
            walk(span, "", "")

    trace_start = spans[0].start_ns
    services = {s.service for s in spans}
    header = (
        f"trace {spans[0].trace_id}  "
        f"{len(spans)} span{'s' if len(spans) != 1 else ''}, "
        f"{len(services)} service{'s' if len(services) != 1 else ''}"
    )
    width = max(len(label) for label, _ in rows)
    lines = [header]
    for label, span in rows:
        duration = span.duration_ms
        took = f"{duration:.1f} ms" if duration is not None else "open"
        offset = f"+{(span.start_ns - trace_start) / 1e6:.1f} ms"
        line = f"{label:<{width}}  {took:>11}  {offset:>11}"
        if span.is_error:
            line += f"  {_ERROR_MARK}"
        lines.append(line.rstrip())
    return "\n".join(lines)


__all__ = [
    "JOB_ID_ATTRIBUTE",
    "TRACES_DIR",
    "SpanRecord",
    "load_job_trace",
    "read_spans",
    "render_tree",
    "span_files",
]

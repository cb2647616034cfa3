"""The trace tree: loading a job's spans from the JSONL files and rendering them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hearth.tracetree import SpanRecord, load_job_trace, render_tree

pytestmark = pytest.mark.unit

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def span(
    span_id: str,
    parent_id: str,
    name: str,
    service: str,
    start_ms: float,
    end_ms: float,
    *,
    trace_id: str = TRACE,
    status: str = "UNSET",
    job_id: str | None = None,
) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id,
        "name": name,
        "service": service,
        "kind": "SERVER",
        "start_ns": T0 + int(start_ms * MS),
        "end_ns": T0 + int(end_ms * MS),
        "status": status,
        "attributes": {"hearth.job_id": job_id} if job_id else {},
    }


def write_jsonl(path: Path, records: list[dict[str, object]], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    traces = tmp_path / "traces"
    # The orchestrator's file lists the dispatch span (child, started first) after the route span.
    write_jsonl(
        traces / "orchestratord.jsonl",
        [
            span("a" * 16, "", "SubmitJob", "orchestratord", 0, 5, job_id="job-1"),
            span("c" * 16, "a" * 16, "Route", "routerd", 2, 3),
            span("b" * 16, "a" * 16, "dispatch", "orchestratord", 1, 4.5, job_id="job-1"),
            span("9" * 16, "", "SubmitJob", "orchestratord", 10, 11, trace_id=OTHER_TRACE, job_id="job-2"),
        ],
        tail='this line is not json\n{"trace_id": "half-writ',
    )
    write_jsonl(
        traces / "workerd.jsonl",
        [
            span("d" * 16, "b" * 16, "Generate", "workerd", 1.5, 4, status="ERROR", job_id="job-1"),
            # Its parent (a span of a process that never flushed) is missing: an orphan.
            span("e" * 16, "f" * 16, "Query", "memoryd", 2.5, 2.8),
        ],
    )
    # The same span twice (a retried export) is shown once.
    write_jsonl(traces / "routerd.jsonl", [span("c" * 16, "a" * 16, "Route", "routerd", 2, 3)])
    return tmp_path


def test_load_job_trace_returns_every_span_of_the_jobs_trace_once(data_dir: Path) -> None:
    spans = load_job_trace(data_dir, "job-1")

    assert [s.span_id[0] for s in spans] == ["a", "b", "d", "c", "e"]  # by start time
    assert {s.trace_id for s in spans} == {TRACE}
    assert spans[2].is_error and not spans[0].is_error
    assert spans[0].duration_ms == pytest.approx(5.0)


def test_load_job_trace_is_empty_for_unknown_jobs_and_missing_folders(data_dir: Path, tmp_path: Path) -> None:
    assert load_job_trace(data_dir, "job-unknown") == []
    assert load_job_trace(tmp_path / "nowhere", "job-1") == []


def test_render_tree_nests_by_parent_orders_by_start_and_shows_orphans_as_roots(data_dir: Path) -> None:
    lines = render_tree(load_job_trace(data_dir, "job-1")).splitlines()

    assert lines[0] == f"trace {TRACE}  5 spans, 4 services"
    rows = [re.match(r"^([│├└─ ]*)(\S+)  (\S+)", line).groups() for line in lines[1:]]  # type: ignore[union-attr]
    assert rows == [
        ("", "orchestratord", "SubmitJob"),
        ("├── ", "orchestratord", "dispatch"),
        ("│   └── ", "workerd", "Generate"),
        ("└── ", "routerd", "Route"),
        ("", "memoryd", "Query"),
    ]


def test_render_tree_shows_durations_offsets_and_error_marks(data_dir: Path) -> None:
    lines = render_tree(load_job_trace(data_dir, "job-1")).splitlines()
    by_name = {
        name: line
        for line in lines[1:]
        for name in ("SubmitJob", "dispatch", "Generate", "Query")
        if name in line
    }

    assert "5.0 ms" in by_name["SubmitJob"] and "+0.0 ms" in by_name["SubmitJob"]
    assert "3.5 ms" in by_name["dispatch"] and "+1.0 ms" in by_name["dispatch"]
    assert "0.3 ms" in by_name["Query"] and "+2.5 ms" in by_name["Query"]
    assert "error" in by_name["Generate"]
    assert [line for line in lines if "error" in line] == [by_name["Generate"]]


def test_render_tree_gives_each_trace_of_a_job_its_own_header() -> None:
    first = SpanRecord.from_dict(span("1" * 16, "", "SubmitJob", "orchestratord", 0, 1, job_id="j"))
    retry = SpanRecord.from_dict(
        span("2" * 16, "", "SubmitJob", "orchestratord", 5, 7, trace_id=OTHER_TRACE, job_id="j")
    )
    text = render_tree([retry, first])

    headers = [line for line in text.splitlines() if line.startswith("trace ")]
    assert headers == [f"trace {TRACE}  1 span, 1 service", f"trace {OTHER_TRACE}  1 span, 1 service"]


def test_span_record_round_trips_the_file_format() -> None:
    raw = span("a" * 16, "", "SubmitJob", "orchestratord", 0, 5, job_id="job-1")
    assert SpanRecord.from_dict(raw).to_dict() == raw

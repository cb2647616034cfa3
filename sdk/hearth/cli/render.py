"""Protos as text and JSON for the CLI's output."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import job_state_name

_STATE_STYLES = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
}


def message_to_dict(message: Message) -> dict[str, Any]:
    """A proto as a JSON-ready dict, with the proto's snake_case field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def styled_state(state: int) -> str:
    """The job state's name with rich markup."""
    name = job_state_name(state)
    style = _STATE_STYLES.get(name, "")
    return f"[{style}]{name}[/{style}]" if style else name


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def format_ms(duration: duration_pb2.Duration) -> str:
    return f"{seconds(duration) * 1000:.0f} ms"


def format_age(duration: duration_pb2.Duration) -> str:
    value = seconds(duration)
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def format_time(timestamp: timestamp_pb2.Timestamp) -> str:
    """Local time, or ``-`` when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    moment = datetime.fromtimestamp(timestamp.seconds + timestamp.nanos / 1e9, tz=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def job_summary(job: orchestrator_pb2.Job) -> str:
    """The line ``hearth run`` prints to stderr after the answer."""
    parts = [f"job {job.job_id}", job_state_name(job.state)]
    if job.HasField("run"):
        run = job.run
        parts.append(f"{run.output_tokens} tokens")
        if run.HasField("time_to_first_token"):
            parts.append(f"ttft {format_ms(run.time_to_first_token)}")
        if run.decode_tokens_per_second:
            parts.append(f"{run.decode_tokens_per_second:.1f} tok/s")
        where = " on ".join(p for p in (run.model, run.worker_id) if p)
        if where:
            parts.append(where)
    return " · ".join(parts)


def job_details(job: orchestrator_pb2.Job) -> list[tuple[str, str]]:
    """``hearth jobs get`` as (label, value) rows; values are plain text."""
    spec = job.spec
    rows = [
        ("job", job.job_id),
        ("state", job_state_name(job.state)),
        ("model", spec.model or "(default)"),
        ("role", spec.role or "(default)"),
        ("priority", orchestrator_pb2.Priority.Name(spec.priority).removeprefix("PRIORITY_")),
        ("created", format_time(job.create_time)),
        ("started", format_time(job.start_time)),
        ("ended", format_time(job.end_time)),
    ]
    if job.end_reason or job.end_message:
        rows.append(("end", f"{job.end_reason}: {job.end_message}".strip(": ")))
    if spec.project_id or spec.task_id:
        rows.append(("memory scope", "/".join(p for p in (spec.project_id, spec.task_id) if p)))
    if job.HasField("run"):
        run = job.run
        rows += [
            ("worker", f"{run.worker_id} ({run.engine})" if run.engine else run.worker_id),
            ("tokens", f"{run.input_tokens} in, {run.output_tokens} out"),
            ("queue wait", format_ms(run.queue_wait)),
            ("first token", format_ms(run.time_to_first_token)),
            ("total", format_ms(run.total_duration)),
            ("decode rate", f"{run.decode_tokens_per_second:.1f} tok/s"),
        ]
        if run.trace_id:
            rows.append(("trace", run.trace_id))
    if job.HasField("routing_report") and job.routing_report.chosen_target:
        report = job.routing_report
        rules = f" ({', '.join(report.matched_rules)})" if report.matched_rules else ""
        rows.append(("routed to", f"{report.chosen_target}{rules}"))
    rows += [("prompt", shorten(spec.prompt, 200)), ("output", job.output)]
    return rows

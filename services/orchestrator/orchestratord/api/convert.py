"""Conversion between the orchestrator's protos and its domain objects."""

from __future__ import annotations

import math

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from hearth import chat
from hearth.api.events.v1 import events_pb2
from hearth.api.orchestrator.v1 import orchestrator_pb2 as pb
from hearth.api.router.v1 import router_pb2
from hearth.errors import InvalidArgument
from orchestratord.domain.jobs import (
    Cancelled,
    Completed,
    Failed,
    Fallback,
    JobEvent,
    JobSnapshot,
    JobSpec,
    JobState,
    Priority,
    Queued,
    RunRecord,
    Started,
    Tokens,
    Waiting,
)
from orchestratord.domain.validation import JobDraft

_PRIORITY_NAMES = {
    pb.PRIORITY_UNSPECIFIED: "",
    pb.PRIORITY_INTERACTIVE: Priority.INTERACTIVE.value,
    pb.PRIORITY_BATCH: Priority.BATCH.value,
}
_PRIORITY_PROTO = {Priority.INTERACTIVE: pb.PRIORITY_INTERACTIVE, Priority.BATCH: pb.PRIORITY_BATCH}
_STATE_PROTO = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.COMPLETED: pb.JOB_STATE_COMPLETED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
_STATE_DOMAIN = {value: key for key, value in _STATE_PROTO.items()}
#: The data classes by proto value; the same names the router's policy uses.
DATA_CLASS_NAMES = {
    router_pb2.DATA_CLASS_UNSPECIFIED: "",
    router_pb2.DATA_CLASS_L0_PUBLIC: "L0",
    router_pb2.DATA_CLASS_L1_ROUTINE: "L1",
    router_pb2.DATA_CLASS_L2_SENSITIVE: "L2",
    router_pb2.DATA_CLASS_L3_SECRET: "L3",
}
DATA_CLASS_PROTO = {name: value for value, name in DATA_CLASS_NAMES.items()}


def draft_from_request(request: pb.SubmitJobRequest) -> JobDraft:
    """The draft; InvalidArgument on ``spec.tools[i].parameters_json`` when
    it is not a JSON object (every other check is validation's)."""
    spec = request.spec
    tools = []
    for index, tool in enumerate(spec.tools):
        try:
            tools.append(chat.tool_from_proto(tool))
        except ValueError as err:
            raise InvalidArgument(f"spec.tools[{index}].parameters_json", str(err)) from None
    return JobDraft(
        prompt=spec.prompt,
        model=spec.model,
        role=spec.role,
        max_tokens=spec.max_tokens if spec.HasField("max_tokens") else None,
        temperature=spec.temperature,
        seed=spec.seed,
        # An enum value this version does not know stays visible to validation.
        priority=_PRIORITY_NAMES.get(spec.priority, f"unknown ({spec.priority})"),
        use_memory_context=spec.use_memory_context,
        store_in_memory=spec.store_in_memory,
        project_id=spec.project_id,
        task_id=spec.task_id,
        timeout_seconds=spec.timeout.ToTimedelta().total_seconds() if spec.HasField("timeout") else None,
        labels=dict(spec.labels),
        request_id=request.request_id,
        messages=tuple(chat.message_from_proto(m) for m in spec.messages),
        tools=tuple(tools),
        tool_choice=spec.tool_choice,
        paths=tuple(spec.paths),
        # An enum value this version does not know stays visible to validation.
        data_class=DATA_CLASS_NAMES.get(spec.data_class, f"unknown ({spec.data_class})"),
        agent=spec.agent,
        memory_context_tokens=spec.memory_context_tokens,
    )


def state_from_proto(state: int) -> JobState | None:
    """The filter of ListJobs: None for JOB_STATE_UNSPECIFIED."""
    if state == pb.JOB_STATE_UNSPECIFIED:
        return None
    try:
        return _STATE_DOMAIN[state]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("state", f"unknown job state {state}") from None


def _split_micros(epoch: float) -> tuple[int, int]:
    """(seconds, nanos) at microsecond precision, rounded as
    datetime.fromtimestamp rounds: Postgres keeps microseconds, so an event
    served live from memory and the same event read back from the database
    must carry the same time, to the nanosecond."""
    fraction, whole = math.modf(epoch)
    micros = round(fraction * 1e6)
    seconds = int(whole)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return seconds, micros * 1000


def timestamp_of(epoch: float) -> timestamp_pb2.Timestamp:
    seconds, nanos = _split_micros(epoch)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        prompt=spec.prompt,
        model=spec.model,
        role=spec.role,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        seed=spec.seed,
        priority=_PRIORITY_PROTO[spec.priority],
        use_memory_context=spec.use_memory_context,
        store_in_memory=spec.store_in_memory,
        project_id=spec.project_id,
        task_id=spec.task_id,
        timeout=_duration(spec.timeout_seconds),
        labels=dict(spec.labels),
        messages=[chat.message_to_proto(m) for m in spec.messages],
        tools=[chat.tool_to_proto(t) for t in spec.tools],
        tool_choice=spec.tool_choice,
        paths=list(spec.paths),
        data_class=DATA_CLASS_PROTO.get(spec.data_class, router_pb2.DATA_CLASS_UNSPECIFIED),  # type: ignore[arg-type]
        agent=spec.agent,
        memory_context_tokens=spec.memory_context_tokens,
    )


def run_to_proto(run: RunRecord) -> pb.RunRecord:
    record = pb.RunRecord(
        total_duration=_duration(run.total_duration),
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        decode_tokens_per_second=run.decode_tokens_per_second,
        worker_id=run.worker_id,
        model=run.model,
        engine=run.engine,
        trace_id=run.trace_id,
        context_memory_ids=list(run.context_memory_ids),
        finish_reason=run.finish_reason,
    )
    if run.queue_wait is not None:
        record.queue_wait.CopyFrom(_duration(run.queue_wait))
    if run.time_to_first_token is not None:
        record.time_to_first_token.CopyFrom(_duration(run.time_to_first_token))
    return record


def job_to_proto(job: JobSnapshot) -> pb.Job:
    message = pb.Job(
        job_id=job.job_id,
        spec=spec_to_proto(job.spec),
        state=_STATE_PROTO[job.state],
        request_id=job.request_id or "",
        create_time=timestamp_of(job.created_at),
        output=job.output,
        end_reason=job.end_reason,
        end_message=job.end_message,
        last_sequence=job.last_sequence,
        tool_calls=[chat.tool_call_to_proto(c) for c in job.tool_calls],
    )
    if job.started_at is not None:
        message.start_time.CopyFrom(timestamp_of(job.started_at))
    if job.ended_at is not None:
        message.end_time.CopyFrom(timestamp_of(job.ended_at))
    if job.run is not None:
        message.run.CopyFrom(run_to_proto(job.run))
    if job.route.report:
        json_format.ParseDict(dict(job.route.report), message.routing_report, ignore_unknown_fields=True)
    return message


def event_to_proto(event: JobEvent) -> events_pb2.JobEvent:
    message = events_pb2.JobEvent()
    write_event(message, event)
    return message


def write_event(message: events_pb2.JobEvent, event: JobEvent) -> None:
    """Fill an empty JobEvent proto in place. Token events, by far the most
    frequent, take the first branch and set fields directly (no nested
    messages built and copied)."""
    message.job_id = event.job_id
    message.sequence = event.sequence
    message.time.seconds, message.time.nanos = _split_micros(event.time)
    body = event.body
    if isinstance(body, Tokens):
        tokens = message.tokens
        tokens.SetInParent()
        tokens.text = body.text
        tokens.token_count = body.token_count
        if body.tool_calls:
            tokens.tool_calls.extend(chat.delta_to_proto(d) for d in body.tool_calls)
    elif isinstance(body, Queued):
        message.queued.CopyFrom(events_pb2.JobQueued(queue_position=body.queue_position))
    elif isinstance(body, Started):
        message.started.CopyFrom(
            events_pb2.JobStarted(model=body.model, worker_id=body.worker_id, input_tokens=body.input_tokens)
        )
    elif isinstance(body, Completed):
        message.completed.CopyFrom(
            events_pb2.JobCompleted(
                finish_reason=body.finish_reason,
                output_tokens=body.output_tokens,
                tool_calls=[chat.tool_call_to_proto(c) for c in body.tool_calls],
            )
        )
    elif isinstance(body, Waiting):
        message.waiting.CopyFrom(
            events_pb2.JobWaiting(
                reason=body.reason,
                message=body.message,
                estimate_seconds=body.estimate_seconds,
                worker_id=body.worker_id,
            )
        )
    elif isinstance(body, Fallback):
        message.fallback.CopyFrom(
            events_pb2.JobFallback(
                from_target=body.from_target,
                to_target=body.to_target,
                cause=body.cause,
                message=body.message,
                output_discarded=body.output_discarded,
            )
        )
    elif isinstance(body, Failed):
        message.failed.CopyFrom(events_pb2.JobFailed(reason=body.reason, message=body.message))
    elif isinstance(body, Cancelled):
        message.cancelled.CopyFrom(events_pb2.JobCancelled(reason=body.reason))

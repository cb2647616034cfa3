"""Proto <-> domain conversion for the WorkerService."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from hearth import chat
from hearth.api.worker.v1 import worker_pb2
from hearth.errors import InvalidArgument
from workerd.domain.engine import (
    EngineStats,
    FinishReason,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    TokenDelta,
)
from workerd.domain.model_set import ModelState, ModelStatus
from workerd.domain.worker_status import GpuStatus, WorkerState, WorkerStatus

_FINISH_REASONS: dict[FinishReason, worker_pb2.FinishReason.ValueType] = {
    "stop": worker_pb2.FINISH_REASON_STOP,
    "length": worker_pb2.FINISH_REASON_LENGTH,
    "aborted": worker_pb2.FINISH_REASON_ABORTED,
    "tool_calls": worker_pb2.FINISH_REASON_TOOL_CALLS,
}

_MODEL_STATES: dict[ModelState, worker_pb2.ModelState.ValueType] = {
    "unloaded": worker_pb2.MODEL_STATE_UNLOADED,
    "loading": worker_pb2.MODEL_STATE_LOADING,
    "loaded": worker_pb2.MODEL_STATE_LOADED,
    "unloading": worker_pb2.MODEL_STATE_UNLOADING,
    "failed": worker_pb2.MODEL_STATE_FAILED,
}

_STATES: dict[WorkerState, worker_pb2.WorkerState.ValueType] = {
    "starting": worker_pb2.WORKER_STATE_STARTING,
    "ready": worker_pb2.WORKER_STATE_READY,
    "draining": worker_pb2.WORKER_STATE_DRAINING,
}


def generation_request(request: worker_pb2.GenerateRequest) -> GenerationRequest:
    """The domain request; a proto seed of 0 means "unset". Raises
    InvalidArgument on ``tools[i].parameters_json`` when it is not a JSON object."""
    tools = []
    for index, tool in enumerate(request.tools):
        try:
            tools.append(chat.tool_from_proto(tool))
        except ValueError as err:
            raise InvalidArgument(f"tools[{index}].parameters_json", str(err)) from None
    return GenerationRequest(
        job_id=request.job_id,
        model=request.model,
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        seed=request.seed or None,
        messages=tuple(chat.message_from_proto(m) for m in request.messages),
        tools=tuple(tools),
        tool_choice=request.tool_choice,
    )


def started_message(event: GenerationStarted) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(started=worker_pb2.GenerationStarted(input_tokens=event.input_tokens))


def tokens_message(
    text: str, token_count: int, tool_calls: Sequence[chat.ToolCallDelta] = ()
) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(
        tokens=worker_pb2.TokenChunk(
            text=text, token_count=token_count, tool_calls=[chat.delta_to_proto(d) for d in tool_calls]
        )
    )


def finished_message(event: GenerationFinished) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(
        finished=worker_pb2.GenerationFinished(
            finish_reason=_FINISH_REASONS[event.finish_reason],
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            tool_calls=[chat.tool_call_to_proto(c) for c in event.tool_calls],
        )
    )


def merge_deltas(deltas: Sequence[TokenDelta]) -> tuple[str, int, list[chat.ToolCallDelta]]:
    """Text, token count and tool-call pieces of several deltas sent as one chunk."""
    return (
        "".join(d.text for d in deltas),
        sum(d.token_count for d in deltas),
        [piece for d in deltas for piece in d.tool_calls],
    )


def model_info(status: ModelStatus) -> worker_pb2.ModelInfo:
    return worker_pb2.ModelInfo(
        name=status.name,
        context_length=status.context_length,
        state=_MODEL_STATES[status.state],
        vram_estimate_bytes=status.vram_estimate_bytes,
        load_estimate_seconds=status.load_estimate_seconds,
        error=status.error,
        supports_tools=status.supports_tools,
        remote=status.remote,
    )


def engine_load(stats: EngineStats) -> worker_pb2.EngineLoad:
    load = worker_pb2.EngineLoad(running=stats.running, waiting=stats.waiting)
    if stats.kv_cache_usage is not None:
        load.kv_cache_usage = stats.kv_cache_usage
    return load


def worker_info(
    status: WorkerStatus,
    *,
    engine_kind: str,
    models: Sequence[ModelStatus],
    load: EngineStats,
    address: str,
    gpu: GpuStatus,
) -> worker_pb2.WorkerInfo:
    counters = status.counters
    start_time = timestamp_pb2.Timestamp()
    start_time.FromDatetime(status.started_at)
    return worker_pb2.WorkerInfo(
        worker_id=status.worker_id,
        address=address,
        engine=engine_kind,
        models=[model_info(m) for m in models],
        state=_STATES[status.state],
        max_concurrency=status.max_concurrency,
        running=status.running,
        gpu=worker_pb2.GpuInfo(
            present=gpu.present,
            name=gpu.name,
            index=gpu.index,
            memory_total_bytes=gpu.memory_total_bytes,
            memory_used_bytes=gpu.memory_used_bytes,
            memory_free_bytes=gpu.memory_free_bytes,
        ),
        stats=worker_pb2.WorkerStats(
            requests_total=counters.requests_total,
            tokens_generated_total=counters.tokens_generated_total,
            aborted_total=counters.aborted_total,
        ),
        start_time=start_time,
        load=engine_load(load),
    )

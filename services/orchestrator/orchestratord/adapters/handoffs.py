"""Handoff summaries from memoryd (:class:`orchestratord.domain.ports.Handoffs`).

For one run handed over along a requires link (see
:mod:`orchestratord.domain.handoffs`): the two raw interactions go into the
handoff's scope with one Store (idempotent by the handoff's request id), a
Compact of the scope writes the summaries, and the handoff summary is read
back with List. memoryd's own MemoryService stub over the memory channel.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.errors import Aborted, from_rpc_error
from orchestratord.domain.handoffs import (
    FROM_RUN_LABEL,
    FROM_TASK_LABEL,
    TO_TASK_LABEL,
    HandoffRequest,
    HandoffSummary,
)

#: memoryd's labels of a handoff summary.
_FROM_ROLE = "from_role"
_TO_ROLE = "to_role"
#: Summary jobs one handoff may take: the scope's task summary, then the handoff.
_MODEL_CALLS = 2


def _timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(epoch, tz=UTC))
    return stamp


class MemorydHandoffs:
    """Handoffs over memoryd's MemoryService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel)

    async def find(self, request: HandoffRequest, *, time_limit: float) -> HandoffSummary | None:
        listed = memory_pb2.ListRequest(
            filter=memory_pb2.MemoryFilter(
                project_id=request.project_id,
                task_id=request.scope,
                kinds=[memory_pb2.MEMORY_KIND_HANDOFF_SUMMARY],
            ),
            page_size=100,
        )
        try:
            reply = await self._stub.List(listed, timeout=time_limit)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        valid = [m for m in reply.memories if not m.HasField("valid_to")]
        if not valid:
            return None
        memory = valid[-1]
        return HandoffSummary(
            memory_id=memory.memory_id,
            text=memory.text,
            from_role=memory.labels.get(_FROM_ROLE, request.from_role),
            to_role=memory.labels.get(_TO_ROLE, request.to_role),
            from_task=request.from_task,
            from_run=request.from_run,
        )

    async def make(self, request: HandoffRequest, *, time_limit: float) -> HandoffSummary:
        found = await self.find(request, time_limit=time_limit)
        if found is not None:
            return found
        labels = {
            FROM_TASK_LABEL: str(request.from_task),
            FROM_RUN_LABEL: str(request.from_run),
            TO_TASK_LABEL: str(request.to_task),
        }
        # The earlier role's interaction first, then the next role's: memoryd
        # orders a scope's interactions by valid_from.
        earlier = memory_pb2.Memory(
            text=request.from_text,
            project_id=request.project_id,
            task_id=request.scope,
            kind=memory_pb2.MEMORY_KIND_RAW_INTERACTION,
            source=request.from_job,
            labels=labels,
            agent=request.from_agent,
            role=request.from_role,
            valid_from=_timestamp(request.from_ended_at),
        )
        later = memory_pb2.Memory(
            text=request.to_text,
            project_id=request.project_id,
            task_id=request.scope,
            kind=memory_pb2.MEMORY_KIND_RAW_INTERACTION,
            source=f"task:{request.to_task}",
            labels=labels,
            role=request.to_role,
            valid_from=_timestamp(max(request.from_ended_at + 0.001, datetime.now(UTC).timestamp())),
        )
        try:
            await self._stub.Store(
                memory_pb2.StoreRequest(memories=[earlier, later], request_id=request.request_id),
                timeout=time_limit,
            )
            compacted = await self._stub.Compact(
                memory_pb2.CompactRequest(
                    project_id=request.project_id,
                    task_id=request.scope,
                    max_model_calls=_MODEL_CALLS,
                    request_id=request.request_id,
                ),
                timeout=time_limit,
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        for memory in compacted.summaries:
            if memory.kind == memory_pb2.MEMORY_KIND_HANDOFF_SUMMARY:
                return HandoffSummary(
                    memory_id=memory.memory_id,
                    text=memory.text,
                    from_role=memory.labels.get(_FROM_ROLE, request.from_role),
                    to_role=memory.labels.get(_TO_ROLE, request.to_role),
                    from_task=request.from_task,
                    from_run=request.from_run,
                )
        found = await self.find(request, time_limit=time_limit)
        if found is None:
            raise Aborted(
                f"memoryd wrote no handoff summary for {request.scope} "
                f"({compacted.model_calls} summary jobs, capped: {compacted.capped})",
                reason="HANDOFF_NOT_WRITTEN",
            )
        return found

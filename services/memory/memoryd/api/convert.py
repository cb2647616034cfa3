"""proto <-> domain for hearth.api.memory.v1."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import timestamp_pb2

from hearth.api.memory.v1 import memory_pb2
from hearth.errors import InvalidArgument
from memoryd.domain import Memory, MemoryKind, MemoryQuery, NewMemory, ScoredMemory

_PROTO_PREFIX = "MEMORY_KIND_"


def kind_to_proto(kind: MemoryKind) -> int:
    return memory_pb2.MemoryKind.Value(_PROTO_PREFIX + kind.name)


def kind_from_proto(value: int, field_path: str) -> MemoryKind | None:
    """None for MEMORY_KIND_UNSPECIFIED; InvalidArgument for a number the
    contract does not know."""
    if value == memory_pb2.MEMORY_KIND_UNSPECIFIED:
        return None
    try:
        name = memory_pb2.MemoryKind.Name(memory_pb2.MemoryKind.ValueType(value))
        return MemoryKind[name.removeprefix(_PROTO_PREFIX)]
    except (ValueError, KeyError):
        raise InvalidArgument(field_path, f"unknown memory kind {value}") from None


def kinds_from_proto(values: Iterable[int]) -> tuple[MemoryKind, ...]:
    kinds: list[MemoryKind] = []
    for value in values:
        kind = kind_from_proto(value, "kinds")
        if kind is None:
            raise InvalidArgument("kinds", "MEMORY_KIND_UNSPECIFIED is not a kind to filter by")
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def new_memory_from_proto(memory: memory_pb2.Memory) -> NewMemory:
    """The caller's memory; memory_id and create_time are the server's to set."""
    return NewMemory(
        text=memory.text,
        project_id=memory.project_id,
        task_id=memory.task_id,
        subtask_id=memory.subtask_id,
        kind=kind_from_proto(memory.kind, "memory.kind"),
        source=memory.source,
        labels=dict(memory.labels),
    )


def query_from_proto(request: memory_pb2.QueryRequest) -> MemoryQuery:
    return MemoryQuery(
        text=request.text,
        project_id=request.project_id,
        task_id=request.task_id,
        top_k=request.top_k,
        kinds=kinds_from_proto(request.kinds),
    )


def memory_to_proto(memory: Memory) -> memory_pb2.Memory:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(memory.created_at)
    return memory_pb2.Memory(
        memory_id=memory.memory_id,
        text=memory.text,
        project_id=memory.project_id,
        task_id=memory.task_id,
        subtask_id=memory.subtask_id,
        kind=kind_to_proto(memory.kind),  # type: ignore[arg-type]
        source=memory.source,
        labels=dict(memory.labels),
        create_time=created,
    )


def scored_to_proto(scored: ScoredMemory) -> memory_pb2.ScoredMemory:
    return memory_pb2.ScoredMemory(memory=memory_to_proto(scored.memory), score=scored.score)

"""Memories and the rules every request must pass, as plain data and pure
functions. Field names in errors are the request's field paths."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from hearth.errors import InvalidArgument

#: Namespace of the point ids derived from (project_id, request_id), so that a
#: repeated Store lands on the point its first attempt wrote. Never change it:
#: stored ids depend on it.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1f3f0e-3c1b-5b7a-9a49-1f6c8d2e4b10")

#: Most ids one Delete may name.
MAX_DELETE_IDS = 1000


class MemoryKind(enum.Enum):
    """What a memory is. The value is the name stored in the payload."""

    RAW_INTERACTION = "raw_interaction"
    TASK_SUMMARY = "task_summary"
    PROJECT_SUMMARY = "project_summary"
    DESIGN_DOC = "design_doc"
    CODE_SNIPPET = "code_snippet"
    NOTE = "note"


@dataclass(frozen=True)
class MemoryLimits:
    """Request limits, from the settings."""

    #: Longest memory or query text, in characters.
    max_text_chars: int = 32768
    #: top_k of a query that asks for 0.
    default_top_k: int = 5
    #: Most results a query may ask for.
    max_top_k: int = 100


@dataclass(frozen=True)
class NewMemory:
    """A memory as a caller hands it in; ``kind`` None means unspecified."""

    text: str
    project_id: str
    task_id: str = ""
    subtask_id: str = ""
    kind: MemoryKind | None = None
    source: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Memory:
    """A stored memory with its provenance."""

    memory_id: str
    text: str
    project_id: str
    task_id: str
    subtask_id: str
    kind: MemoryKind
    source: str
    labels: Mapping[str, str]
    created_at: datetime


@dataclass(frozen=True)
class ScoredMemory:
    """A query result: the memory and its cosine similarity (higher is nearer)."""

    memory: Memory
    score: float


@dataclass(frozen=True)
class MemoryQuery:
    """Find the memories of one project nearest in meaning to ``text``.

    ``top_k`` 0 means the default; empty ``task_id``/``kinds`` mean any."""

    text: str
    project_id: str
    task_id: str = ""
    top_k: int = 0
    kinds: tuple[MemoryKind, ...] = ()


def validate_new_memory(new: NewMemory, limits: MemoryLimits) -> NewMemory:
    """Check a memory to store; returns it with its kind defaulted to NOTE.

    Raises:
        InvalidArgument: naming ``memory.text`` or ``memory.project_id``.
    """
    _check_text(new.text, "memory.text", limits)
    _check_required(new.project_id, "memory.project_id")
    return replace(new, kind=new.kind or MemoryKind.NOTE)


def validate_query(query: MemoryQuery, limits: MemoryLimits) -> MemoryQuery:
    """Check a query; returns it with ``top_k`` resolved (0 -> the default).

    Raises:
        InvalidArgument: naming ``text``, ``project_id`` or ``top_k``.
    """
    _check_text(query.text, "text", limits)
    _check_required(query.project_id, "project_id")
    if query.top_k < 0 or query.top_k > limits.max_top_k:
        raise InvalidArgument(
            "top_k",
            f"must be between 0 and {limits.max_top_k}, got {query.top_k}",
            max=str(limits.max_top_k),
        )
    return replace(query, top_k=query.top_k or limits.default_top_k)


def parse_request_id(request_id: str) -> uuid.UUID | None:
    """The idempotency key of a Store, or None when it has none.

    Raises:
        InvalidArgument: naming ``request_id`` when it is set and not a UUID.
    """
    if not request_id:
        return None
    try:
        return uuid.UUID(request_id)
    except ValueError:
        raise InvalidArgument("request_id", "must be a UUID") from None


def parse_memory_ids(project_id: str, memory_ids: Sequence[str]) -> list[str]:
    """Check the arguments of a Delete; returns the ids in canonical form,
    without repeats.

    Raises:
        InvalidArgument: naming ``project_id`` or ``memory_ids``.
    """
    _check_required(project_id, "project_id")
    if len(memory_ids) > MAX_DELETE_IDS:
        raise InvalidArgument("memory_ids", f"at most {MAX_DELETE_IDS} ids per call", max=str(MAX_DELETE_IDS))
    canonical: dict[str, None] = {}
    for index, raw in enumerate(memory_ids):
        try:
            canonical[str(uuid.UUID(raw))] = None
        except ValueError:
            raise InvalidArgument(
                "memory_ids", f"{raw!r} is not a memory id (a UUID)", index=str(index)
            ) from None
    return list(canonical)


def memory_id_for(project_id: str, request_id: uuid.UUID | None) -> str:
    """The id of a new memory: derived from (project, request id) when there is
    a request id, so that a retry finds the first attempt's memory; random
    otherwise. Ids are scoped by project so one key cannot collide across
    tenants."""
    if request_id is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{project_id}:{request_id}"))


def _check_text(text: str, field_path: str, limits: MemoryLimits) -> None:
    if not text or not text.strip():
        raise InvalidArgument(field_path, "must not be empty")
    if len(text) > limits.max_text_chars:
        raise InvalidArgument(
            field_path,
            f"is {len(text)} characters; at most {limits.max_text_chars}",
            max=str(limits.max_text_chars),
        )


def _check_required(value: str, field_path: str) -> None:
    if not value or not value.strip():
        raise InvalidArgument(field_path, "is required")

"""What the OpenAI-compatible HTTP API needs from the rest of orchestratord.

:class:`ChatJobs` is the part of :class:`~orchestratord.domain.service.JobService`
the API calls (the service satisfies it as it is; tests pass a fake).
:class:`Embeddings` is memoryd's Embed, implemented by
:class:`orchestratord.adapters.embeddings.GrpcEmbeddings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hearth.chat import ChatMessage
from orchestratord.domain.jobs import JobEvent, JobSnapshot
from orchestratord.domain.service import SubmitResult
from orchestratord.domain.validation import JobDraft


class ChatJobs(Protocol):
    """The job operations behind /v1/chat/completions.

    Errors are ``hearth.errors`` exceptions: ``submit`` raises InvalidArgument
    (with ``.field``), NotFound MODEL_NOT_FOUND, ResourceExhausted QUEUE_FULL
    (with ``retry_after``), FailedPrecondition NO_TOOL_CAPABLE_TARGET, and
    Unavailable when a dependency is down.
    """

    async def submit(self, draft: JobDraft) -> SubmitResult:
        """Validate, route, persist and queue one job."""
        ...

    def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events after ``after_sequence``; ends after the terminal one."""
        ...

    async def cancel(self, job_id: str, reason: str = "") -> JobSnapshot:
        """Cancel a queued or running job; an ended job is returned as it is."""
        ...

    async def get(self, job_id: str) -> JobSnapshot:
        """The job as it is now (its run record once it reached a worker)."""
        ...


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Embeddings of a list of texts, one vector per text, in order."""

    vectors: list[list[float]]
    #: The embedding model memoryd used (e.g. sentence-transformers/all-MiniLM-L6-v2).
    model: str
    dimension: int
    #: Tokens in the inputs (memoryd's estimate where it cannot count).
    input_tokens: int


class Embeddings(Protocol):
    """Text embeddings with memoryd's model.

    Raises ``hearth.errors``: InvalidArgument naming ``inputs`` or
    ``inputs[i]`` (none, more than 256, an empty text), Unavailable
    (EMBEDDER_UNAVAILABLE, MEMORY_UNAVAILABLE when memoryd is not configured).
    """

    async def embed(self, texts: Sequence[str]) -> EmbeddingBatch: ...


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response of /v1/responses kept for ``previous_response_id`` and GET."""

    #: ``resp_<job id, hex>``.
    id: str
    #: The project it was created under ("" for none); only the same project reads it.
    project_id: str
    job_id: str
    previous_response_id: str
    created_at: float
    #: The conversation so far, this response's output included and the
    #: request's instructions left out (they do not carry over).
    messages: tuple[ChatMessage, ...]
    #: The response object as it was returned.
    body: Mapping[str, Any]


class ResponseStore(Protocol):
    """Stored responses (PostgreSQL: ``orchestratord.adapters.responses_store``).
    Errors are ``hearth.errors`` (Unavailable when the database is down)."""

    async def save(self, response: StoredResponse) -> None: ...

    async def load(self, response_id: str, project_id: str) -> StoredResponse | None:
        """The response, if it exists under this project."""
        ...

    async def delete(self, response_id: str, project_id: str) -> bool:
        """Delete it; False when there was none under this project."""
        ...

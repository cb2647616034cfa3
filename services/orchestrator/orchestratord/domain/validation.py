"""Submission validation: every check SubmitJob makes before it touches the
router or the database. Each failure names the request field it is about."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from hearth.errors import InvalidArgument
from orchestratord.domain.jobs import JobSpec, Priority


@dataclass(frozen=True, slots=True)
class JobDraft:
    """A submission as it arrived, before validation and defaults.

    ``priority`` is the band's name ("interactive", "batch"), "" when
    unspecified, or anything else for a value this version does not know.
    ``timeout_seconds`` is None when the request left it unset.
    """

    prompt: str
    model: str = ""
    role: str = ""
    max_tokens: int | None = None
    temperature: float = 0.0
    seed: int = 0
    priority: str = ""
    use_memory_context: bool = False
    store_in_memory: bool = False
    project_id: str = ""
    task_id: str = ""
    timeout_seconds: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    max_prompt_chars: int = 200_000
    default_max_tokens: int = 256
    default_timeout_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class Submission:
    spec: JobSpec
    request_id: str | None


def validate_submission(draft: JobDraft, limits: SubmitLimits) -> Submission:
    """Check a draft and apply the defaults (max_tokens, priority, timeout).

    Raises InvalidArgument naming the field: ``spec.prompt`` (empty, blank, or
    longer than the limit: reason PROMPT_TOO_LONG), ``spec.max_tokens``,
    ``spec.temperature``, ``spec.priority``, ``spec.project_id`` (required by
    either memory flag), ``spec.timeout``, ``request_id`` (must be a UUID).
    """
    if not draft.prompt or not draft.prompt.strip():
        raise InvalidArgument("spec.prompt", "must not be empty or blank")
    if len(draft.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            "spec.prompt",
            f"is {len(draft.prompt)} characters; the limit is {limits.max_prompt_chars}",
            reason="PROMPT_TOO_LONG",
            limit=str(limits.max_prompt_chars),
        )
    if draft.max_tokens is not None and draft.max_tokens < 1:
        raise InvalidArgument("spec.max_tokens", "must be at least 1 (leave it unset for the default)")
    if not (0.0 <= draft.temperature <= 2.0):  # also rejects NaN
        raise InvalidArgument("spec.temperature", "must be between 0 and 2")
    if draft.priority == "":
        priority = Priority.INTERACTIVE
    else:
        try:
            priority = Priority(draft.priority)
        except ValueError:
            raise InvalidArgument("spec.priority", f"unknown priority {draft.priority!r}") from None
    if (draft.use_memory_context or draft.store_in_memory) and not draft.project_id.strip():
        raise InvalidArgument(
            "spec.project_id", "is required when use_memory_context or store_in_memory is set"
        )
    timeout = draft.timeout_seconds
    if timeout is not None and (timeout < 0 or math.isnan(timeout)):
        raise InvalidArgument("spec.timeout", "must not be negative")
    request_id: str | None = None
    if draft.request_id:
        try:
            request_id = str(uuid.UUID(draft.request_id))
        except ValueError:
            raise InvalidArgument("request_id", "must be empty or a UUID") from None
    spec = JobSpec(
        prompt=draft.prompt,
        model=draft.model,
        role=draft.role,
        max_tokens=limits.default_max_tokens if draft.max_tokens is None else draft.max_tokens,
        temperature=draft.temperature,
        seed=draft.seed,
        priority=priority,
        use_memory_context=draft.use_memory_context,
        store_in_memory=draft.store_in_memory,
        project_id=draft.project_id,
        task_id=draft.task_id,
        # A zero timeout means "unset", as proto3 cannot tell the two apart.
        timeout_seconds=timeout or limits.default_timeout_seconds,
        labels=dict(draft.labels),
    )
    return Submission(spec, request_id)


def estimate_prompt_tokens(prompt_chars: int) -> int:
    """A tokenizer-free estimate of a prompt's tokens: ceil(chars / 4).

    About four characters per token holds for English with BPE tokenizers; the
    worker counts exactly and rejects what does not fit, so this only has to
    be good enough for routing at submit time.
    """
    return -(-prompt_chars // 4)


def parse_job_id(job_id: str) -> str:
    """The canonical form of a job id; InvalidArgument("job_id") if malformed."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise InvalidArgument("job_id", "must be a job id (a UUID)") from None

"""The job service: what the public API does (submit, get, list, cancel,
watch) and the restart rules applied at start."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from hearth.chat import render_plain
from hearth.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from hearth.runtime.redaction import find_secrets
from hearth.runtime.tracing import JOB_ID_ATTRIBUTE
from orchestratord.domain.active import ActiveJobs
from orchestratord.domain.dispatcher import Dispatcher
from orchestratord.domain.jobs import ActiveJob, JobEvent, JobSnapshot, JobSpec, JobState, Outcome, Queued
from orchestratord.domain.ports import EventPublisher, JobMetrics, JobStore, RouteFacts, Router
from orchestratord.domain.roles import RoleBook
from orchestratord.domain.validation import (
    JobDraft,
    SubmitLimits,
    estimate_prompt_tokens,
    parse_job_id,
    validate_submission,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job: JobSnapshot
    #: True when the request_id matched an earlier submission.
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class JobListing:
    jobs: list[JobSnapshot]
    next_page_token: str


class JobService:
    """The orchestrator's job API over the active jobs and the store.

    Args:
        active: the registry and queue of jobs that have not ended.
        store: the system of record.
        router: decides each job's target at submit.
        publisher: copies of lifecycle events (NATS).
        limits: submission limits and defaults.
        context_budget_tokens: tokens of memory context a job asking for it
            may get (unless it sets memory_context_tokens); counted in the
            token estimate sent to the router.
        cancel_wait_seconds: how long CancelJob waits for the end to be
            durable before answering with the in-memory view.
        dispatcher: when given, a job that will run at once is placed while
            it is being persisted (see Dispatcher.place_early).
        roles: the agent roles; a job of a role may offer only the tools the
            role's permissions name (PERMISSION_DENIED, TOOL_NOT_PERMITTED).
    """

    def __init__(
        self,
        active: ActiveJobs,
        store: JobStore,
        router: Router,
        publisher: EventPublisher,
        metrics: JobMetrics,
        limits: SubmitLimits,
        *,
        context_budget_tokens: int = 1024,
        cancel_wait_seconds: float = 5.0,
        dispatcher: Dispatcher | None = None,
        roles: RoleBook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._roles = roles
        self._active = active
        self._store = store
        self._router = router
        self._publisher = publisher
        self._metrics = metrics
        self._limits = limits
        self._context_budget_tokens = context_budget_tokens
        self._cancel_wait = cancel_wait_seconds
        self._dispatcher = dispatcher
        self._clock = clock

    async def submit(self, draft: JobDraft) -> SubmitResult:
        """Validate, route, persist and queue a job.

        Order matters: everything that can reject a job (validation, the
        router, a full queue) runs before anything is written, so a rejected
        job leaves no trace. A repeated request_id returns the job it
        created: the insert finds the request_id taken (also when two
        submissions race) and the job that holds it is returned with
        deduplicated=True.

        The router's refusals (POLICY_DENIED, RATE_LIMITED with its retry
        delay, BUDGET_EXCEEDED, MODEL_NOT_FOUND, ...) reach the caller as they
        are. The router gets the job's facts, never its text: secrets found
        in the text go as their kinds.
        """
        submission = validate_submission(draft, self._limits)
        spec, request_id = submission.spec, submission.request_id
        self._check_tools(spec)
        job_id = str(uuid.uuid4())
        route = await self._router.route(self._facts(job_id, spec))
        queue = self._active.queue
        if not queue.reserve():
            raise ResourceExhausted(
                f"the job queue is full ({queue.capacity} jobs); retry later",
                reason="QUEUE_FULL",
                metadata={"max_queued": str(queue.capacity)},
                retry_after=1.0,
            )
        now = self._clock()
        queued = JobEvent(job_id, 1, now, Queued(queue.depth(spec.priority)))
        context = otel_context.get_current()
        job = ActiveJob(job_id, spec, route, now, [queued], request_id=request_id, trace_context=context)
        placing = None
        if self._dispatcher is not None:
            placing = self._dispatcher.place_early(job_id, route, spec.timeout_seconds)
        # Shielded: a client that goes away mid-insert must not leave a job
        # persisted but never queued; the task finishes the admission anyway.
        admission = asyncio.create_task(self._persist_and_admit(job, placing))
        result = await asyncio.shield(admission)
        # The SubmitJob span is the root of the job's trace: make it findable.
        trace.get_current_span().set_attribute(JOB_ID_ATTRIBUTE, result.job.job_id)
        return result

    def _check_tools(self, spec: JobSpec) -> None:
        """The role's tool permissions (a role without any allows every tool)."""
        if self._roles is None or not spec.tools:
            return
        role = self._roles.get(spec.role)
        for index, tool in enumerate(spec.tools):
            if not role.allows_tool(tool.name):
                allowed = ", ".join(role.tools or ()) or "none"
                raise PermissionDenied(
                    f"spec.tools[{index}]: the {role.name} role may not use the tool {tool.name!r} "
                    f"(its tools: {allowed})",
                    reason="TOOL_NOT_PERMITTED",
                    metadata={"field": f"spec.tools[{index}]", "role": role.name, "tool": tool.name},
                )

    def _facts(self, job_id: str, spec: JobSpec) -> RouteFacts:
        context_tokens = 0
        if spec.use_memory_context:
            context_tokens = spec.memory_context_tokens or self._context_budget_tokens
        conversation = render_plain(spec.messages) if spec.messages else ""
        prompt_chars = (
            len(spec.prompt) + len(conversation) + sum(len(json.dumps(t.to_json())) for t in spec.tools)
        )
        text = spec.prompt or "\n".join(
            [m.content for m in spec.messages] + [c.arguments for m in spec.messages for c in m.tool_calls]
        )
        return RouteFacts(
            job_id,
            spec.model,
            spec.role,
            estimate_prompt_tokens(prompt_chars) + context_tokens,
            spec.max_tokens,
            needs_tools=bool(spec.tools) and spec.tool_choice != "none",
            paths=spec.paths,
            data_class=spec.data_class,
            project_id=spec.project_id,
            agent=spec.agent,
            secret_kinds=tuple(find_secrets(text)),
        )

    async def _persist_and_admit(self, job: ActiveJob, placing: asyncio.Task[Any] | None) -> SubmitResult:
        """Insert the job (one transaction: row and queued event), then queue
        it, or run it at once when its early placement can be used. Consumes
        the queue place reserved by submit and the early placement, whatever
        happens."""
        queue, dispatcher = self._active.queue, self._dispatcher
        queued = job.events[0]
        admitted = False
        try:
            if not await self._store.insert_job(job.snapshot(), queued):
                # An earlier (or concurrent) submission with this request_id
                # created the job; the unique index decided which.
                winner = await self._store.find_by_request_id(job.request_id or "")
                if winner is None:
                    raise RuntimeError(f"request_id {job.request_id} conflicted but no job has it")
                return SubmitResult(self._freshest(winner), deduplicated=True)
            if placing is not None and dispatcher is not None:
                early, placing = placing, None  # run_now uses it or gives it back
                if dispatcher.run_now(job, early):
                    queue.unreserve()
                    admitted = True
            if not admitted:
                self._active.admit(job, reserved=True)
                admitted = True
        finally:
            if not admitted:
                queue.unreserve()
            if placing is not None and dispatcher is not None:
                dispatcher.give_back(placing)
        self._publisher.job_event(queued)
        self._metrics.job_submitted(job.spec.priority.value)
        return SubmitResult(job.snapshot(), deduplicated=False)

    async def get(self, job_id: str) -> JobSnapshot:
        job_id = parse_job_id(job_id)
        active = self._active.get(job_id)
        if active is not None:
            return active.snapshot()
        snapshot = await self._store.get_job(job_id)
        if snapshot is None:
            raise _job_not_found(job_id)
        return snapshot

    async def list(self, page_size: int, page_token: str, state: JobState | None) -> JobListing:
        """Jobs newest first, ``page_size`` (0: 50, at most 1000) at a time."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        page = await self._store.list_jobs(size, after, state)
        jobs = [self._freshest(job) for job in page.jobs]
        return JobListing(jobs, encode_page_token(page.next_after) if page.next_after else "")

    async def cancel(self, job_id: str, reason: str = "") -> JobSnapshot:
        """Cancel a queued or running job; an ended job is returned as it is.

        The end is claimed at once (later tokens are dropped), the job's work
        is interrupted (its Generate call cancelled), a CancelRequested is
        broadcast, and the answer waits until the cancelled event is durable.
        """
        job_id = parse_job_id(job_id)
        job = self._active.get(job_id)
        if job is None:
            return await self.get(job_id)
        if self._active.end(job, Outcome.cancelled(reason)):
            self._publisher.cancel_requested(job_id, reason)
        try:
            async with asyncio.timeout(self._cancel_wait):
                await job.wait_closed()
        except TimeoutError:
            log.warning("cancel of %s: end not durable after %.1fs", job_id, self._cancel_wait)
        return job.snapshot()

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events with a sequence above ``after_sequence``; ends
        after the terminal event. Active jobs are served from memory (then
        followed live); ended ones from the database."""
        async for batch in self.watch_batches(job_id, after_sequence):
            for event in batch:
                yield event

    async def watch_batches(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[Sequence[JobEvent]]:
        """As :meth:`watch`, in batches: each one every event that is there
        when the watcher asks (at least one), so a watcher that falls behind
        catches up in a few large steps instead of one step per token."""
        job_id = parse_job_id(job_id)
        if after_sequence < 0:
            raise InvalidArgument("after_sequence", "must not be negative")
        job = self._active.get(job_id)
        if job is None:
            snapshot = await self._store.get_job(job_id)
            if snapshot is None:
                raise _job_not_found(job_id)
            stored = await self._store.read_events(job_id, after_sequence)
            if stored:
                after_sequence = stored[-1].sequence
                yield stored
                if stored[-1].is_terminal:
                    return
            # Not ended in the database: the job must be active again by now
            # (it cannot be otherwise once recovery has run).
            job = self._active.get(job_id)
            if job is None:
                return
        # The log holds every event from sequence 1: index = sequence - 1.
        seen = after_sequence
        while True:
            events = job.events
            if seen < len(events):
                batch = events[seen:]
                seen += len(batch)
                yield batch
                if batch[-1].is_terminal:
                    return
            if job.closed:
                return
            await job.wait_for_events(seen)

    async def wait_for_end(self, job_id: str) -> JobSnapshot:
        """The job once it has ended (its end durable): from memory while it
        is active, else from the database. For callers inside orchestratord
        that submitted the job and only need its end (a task run)."""
        job = self._active.get(job_id)
        if job is not None:
            await job.wait_closed()
            return job.snapshot()
        snapshot = await self._store.get_job(job_id)
        if snapshot is None:
            raise _job_not_found(job_id)
        if not snapshot.state.is_terminal:
            # Between the database and the registry (admitted just now): follow it.
            async for _event in self.watch(job_id):
                pass
            return await self.get(job_id)
        return snapshot

    async def recover(self) -> int:
        """Apply the restart rules: jobs left RUNNING are failed
        (ORCHESTRATOR_RESTARTED); jobs left QUEUED are queued again in
        creation order, in their own bands. Returns the number re-queued."""
        recovery = await self._store.recover(self._clock())
        for event in recovery.failed:
            self._publisher.job_event(event)
            self._metrics.job_ended(JobState.FAILED.value, "ORCHESTRATOR_RESTARTED")
        for stored in recovery.queued:
            snap = stored.snapshot
            job = ActiveJob(
                snap.job_id, snap.spec, snap.route, snap.created_at, stored.events, request_id=snap.request_id
            )
            self._active.admit(job, force=True)
        if recovery.failed or recovery.queued:
            log.info(
                "recovery: %d running jobs failed (ORCHESTRATOR_RESTARTED), %d queued jobs re-queued",
                len(recovery.failed),
                len(recovery.queued),
            )
        return len(recovery.queued)

    def _freshest(self, stored: JobSnapshot) -> JobSnapshot:
        """The in-memory view of a job when it is active (the database lags
        behind a running job), else the stored one."""
        active = self._active.get(stored.job_id)
        return active.snapshot() if active is not None else stored


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})


def encode_page_token(after: tuple[int, str]) -> str:
    """An opaque continuation token: the last job's creation time (epoch
    microseconds) and id."""
    raw = json.dumps([after[0], after[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        micros, job_id = json.loads(raw)
        return int(micros), str(uuid.UUID(job_id))
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidArgument("page_token", "is not a token from a previous ListJobs response") from None

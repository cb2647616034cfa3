"""The plan service: ProposePlan, EditPlan, ApprovePlan, RejectPlan, GetPlan
and ListPlans over the task store, the job service and the work service.

A proposal is a conversation with the manager role, one job per attempt:
the first asks for the plan (:func:`plans.proposal_messages`); each later
one adds the invalid answer and its errors (:func:`plans.retry_messages`).
Every attempt is stored on the plan as it ends, so ``hearth plan show``
shows each answer and what was wrong with it. Plan jobs are ordinary jobs
(routed for the manager role, traced, recorded) and count in ``hearth
stats`` with the manager's role.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hearth.chat import ChatMessage
from hearth.errors import Aborted, FailedPrecondition, HearthError, InvalidArgument, NotFound
from orchestratord.domain.jobs import JobSnapshot, JobState
from orchestratord.domain.plans import (
    DEFAULT_ATTEMPTS,
    INDEX_LABEL,
    MAX_ATTEMPTS,
    MAX_GOAL_CHARS,
    PLAN_KEY_LABEL,
    PLAN_LABEL,
    AttemptStatus,
    Plan,
    PlanAttempt,
    PlanDraft,
    PlanStatus,
    RoleLine,
    parse_answer,
    proposal_messages,
    retry_messages,
    validate_plan,
)
from orchestratord.domain.ports import ModelCatalog, TaskStore
from orchestratord.domain.roles import MANAGER
from orchestratord.domain.service import JobService
from orchestratord.domain.tasks import Link, Task
from orchestratord.domain.validation import JobDraft, check_text
from orchestratord.domain.work import NewTask, WorkService, check_project_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlanLimits:
    #: max_tokens of a manager's job.
    max_tokens: int = 2048
    #: Attempts when a request says 0.
    default_attempts: int = DEFAULT_ATTEMPTS


@dataclass(frozen=True, slots=True)
class Approval:
    plan: Plan
    tasks: list[Task]
    links: list[Link]


class PlanService:
    """Plans over the task store.

    Args:
        store: the task store (plans, attempts, the seeded tasks).
        jobs: submits and follows the manager's jobs.
        work: validates the seeded tasks, knows the roles, re-derives statuses.
        models: prices of the model that answered (an attempt's cost).
    """

    def __init__(
        self,
        store: TaskStore,
        jobs: JobService,
        work: WorkService,
        models: ModelCatalog,
        limits: PlanLimits = PlanLimits(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._work = work
        self._models = models
        self._limits = limits
        self._clock = clock
        # One decision at a time per plan (this process is its only writer).
        self._locks: dict[int, asyncio.Lock] = {}

    def plan_roles(self) -> list[str]:
        """The roles a plan's tasks may name: every known role but the manager's."""
        return [name for name in self._work.roles.names() if name != MANAGER]

    # --- proposing ---------------------------------------------------------

    async def propose(
        self, project_id: str, goal: str, agent: str, *, max_attempts: int = 0, model: str = ""
    ) -> Plan:
        """Ask the manager for a plan of ``goal``; the draft once an answer is valid.

        Raises:
            InvalidArgument: a bad project id, goal or attempt count.
            FailedPrecondition: PLAN_FAILED when no attempt gave a valid plan
                (the plan is kept, failed, with every attempt).
        """
        project_id = check_project_id(project_id)
        if not goal.strip():
            raise InvalidArgument("goal", "must not be empty or blank")
        if len(goal) > MAX_GOAL_CHARS:
            raise InvalidArgument("goal", f"must be at most {MAX_GOAL_CHARS} characters")
        check_text("goal", goal)
        check_text("agent", agent)
        check_text("model", model)
        if not 0 <= max_attempts <= MAX_ATTEMPTS:
            raise InvalidArgument(
                "max_attempts", f"must be between 0 and {MAX_ATTEMPTS} (0: {DEFAULT_ATTEMPTS})"
            )
        attempts = max_attempts or self._limits.default_attempts
        roles = self._work.roles
        names = self.plan_roles()
        project = await self._store.get_project(project_id)
        now = self._clock()
        plan = await self._store.create_plan(
            Plan(
                plan_id=0,
                project_id=project_id,
                goal=goal,
                status=PlanStatus.PROPOSING,
                model=model,
                created_at=now,
                created_by=agent,
                updated_at=now,
                updated_by=agent,
            )
        )
        messages = proposal_messages(
            goal,
            project_id,
            project.index_document if project is not None else "",
            [RoleLine(name, roles.get(name).description) for name in names],
            roles.get(MANAGER).system_prompt,
        )
        errors: list[str] = []
        for number in range(1, attempts + 1):
            attempt, answer = await self._attempt(plan, number, messages, model, agent)
            errors = list(attempt.errors)
            if attempt.status is AttemptStatus.VALID and answer is not None:
                now = self._clock()
                return await self._store.update_plan(
                    replace(plan, status=PlanStatus.DRAFT, draft=answer, updated_at=now, updated_by=agent),
                    "drafted",
                )
            if attempt.status is AttemptStatus.INVALID:
                messages = retry_messages(messages, attempt.output, attempt.errors)
            elif not attempt.job_id:
                break  # refused at submit (no model for the role, a policy): retrying changes nothing
        reason = f"no valid plan after {number} attempts: " + "; ".join(errors)
        now = self._clock()
        await self._store.update_plan(
            replace(plan, status=PlanStatus.FAILED, reason=reason, updated_at=now, updated_by=agent), "failed"
        )
        raise FailedPrecondition(
            f"plan {plan.plan_id}: {reason} (hearth plan show {plan.plan_id})",
            reason="PLAN_FAILED",
            metadata={"plan_id": str(plan.plan_id), "attempts": str(number)},
        )

    async def _attempt(
        self, plan: Plan, number: int, messages: Sequence[ChatMessage], model: str, agent: str
    ) -> tuple[PlanAttempt, PlanDraft | None]:
        """One job of the proposal, stored as it ended; the draft when valid."""
        started = self._clock()
        draft = JobDraft(
            messages=tuple(messages),
            model=model,
            role=MANAGER,
            max_tokens=self._limits.max_tokens,
            temperature=0.0,
            seed=0,
            priority="batch",
            project_id=plan.project_id,
            agent=agent,
            labels={PLAN_LABEL: str(plan.plan_id), "hearth.plan_attempt": str(number)},
        )
        base = PlanAttempt(plan.plan_id, number, AttemptStatus.FAILED, started_at=started, agent=agent)
        try:
            submitted = await self._jobs.submit(draft)
        except HearthError as err:
            failed = replace(
                base, errors=(f"the job was refused: {err.reason}: {err.message}",), ended_at=self._clock()
            )
            return await self._store.add_plan_attempt(failed, plan.project_id), None
        try:
            job = await self._jobs.wait_for_end(submitted.job.job_id)
        except HearthError as err:
            failed = replace(
                base,
                job_id=submitted.job.job_id,
                errors=(f"the job was lost: {err.reason}: {err.message}",),
                ended_at=self._clock(),
            )
            return await self._store.add_plan_attempt(failed, plan.project_id), None
        attempt = self._usage(base, job)
        answer: PlanDraft | None = None
        if job.state is not JobState.COMPLETED:
            why = ": ".join(p for p in (job.end_reason, job.end_message) if p) or job.state.value.lower()
            attempt = replace(attempt, errors=(f"the job did not complete: {why}",))
        else:
            answer, errors = parse_answer(job.output, self.plan_roles())
            status = AttemptStatus.VALID if answer is not None else AttemptStatus.INVALID
            attempt = replace(attempt, status=status, errors=tuple(errors))
            if answer is None:
                log.info("plan %d attempt %d: invalid plan: %s", plan.plan_id, number, "; ".join(errors))
        return await self._store.add_plan_attempt(attempt, plan.project_id), answer

    def _usage(self, attempt: PlanAttempt, job: JobSnapshot) -> PlanAttempt:
        record = job.run
        served = record.model if record is not None else ""
        facts = self._models.facts(served) if served else None
        input_tokens = record.input_tokens if record is not None else 0
        output_tokens = record.output_tokens if record is not None else 0
        cost = facts.cost(input_tokens, output_tokens) if facts is not None else 0.0
        return replace(
            attempt,
            job_id=job.job_id,
            model=served,
            engine=record.engine if record is not None else "",
            output=job.output,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=round(cost, 6),
            time_to_first_token=record.time_to_first_token if record is not None else None,
            ended_at=job.ended_at or self._clock(),
        )

    # --- reading -------------------------------------------------------------

    async def get(self, plan_id: int) -> Plan:
        if plan_id <= 0:
            raise InvalidArgument("plan_id", "must be a plan id (a positive number)")
        plan = await self._store.get_plan(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id}", reason="PLAN_NOT_FOUND", metadata={"plan_id": str(plan_id)})
        return plan

    async def list(self, project_id: str, status: PlanStatus | None = None) -> list[Plan]:
        return await self._store.list_plans(check_project_id(project_id), status)

    # --- deciding ------------------------------------------------------------

    def _lock(self, plan_id: int) -> asyncio.Lock:
        return self._locks.setdefault(plan_id, asyncio.Lock())

    async def _draft_of(self, plan_id: int, revision: int) -> Plan:
        plan = await self.get(plan_id)
        if plan.status is not PlanStatus.DRAFT:
            raise FailedPrecondition(
                f"plan {plan_id} is {plan.status.value}, not a draft", reason="PLAN_NOT_DRAFT"
            )
        if revision and revision != plan.revision:
            raise Aborted(
                f"plan {plan_id} is at revision {plan.revision}, not {revision}; read it again",
                reason="REVISION_MISMATCH",
                metadata={"revision": str(plan.revision)},
            )
        return plan

    def _checked(self, draft: PlanDraft) -> PlanDraft:
        """A draft from a person, validated as a manager's answer is."""
        checked, errors = validate_plan(draft.to_json(), self.plan_roles())
        if checked is None:
            path = errors[0].split(":", 1)[0]
            field = "draft" if path == "$" else f"draft.{path}"
            raise InvalidArgument(field, "; ".join(errors), reason="PLAN_INVALID")
        return checked

    async def edit(self, plan_id: int, draft: PlanDraft, revision: int, agent: str) -> Plan:
        check_text("agent", agent)
        async with self._lock(plan_id):
            plan = await self._draft_of(plan_id, revision)
            checked = self._checked(draft)
            now = self._clock()
            return await self._store.update_plan(
                replace(plan, draft=checked, revision=plan.revision + 1, updated_at=now, updated_by=agent),
                "edited",
            )

    async def reject(self, plan_id: int, reason: str, agent: str) -> Plan:
        if not reason.strip():
            raise InvalidArgument("reason", "say why the plan is rejected")
        check_text("reason", reason)
        check_text("agent", agent)
        async with self._lock(plan_id):
            plan = await self._draft_of(plan_id, 0)
            now = self._clock()
            return await self._store.update_plan(
                replace(
                    plan,
                    status=PlanStatus.REJECTED,
                    reason=reason,
                    updated_at=now,
                    updated_by=agent,
                    decided_at=now,
                    decided_by=agent,
                ),
                "rejected",
            )

    async def approve(self, plan_id: int, draft: PlanDraft | None, revision: int, agent: str) -> Approval:
        """Create the plan's tasks and requires links (one transaction); with
        ``draft``, that draft (an edit) is what is approved. A task that
        produces the INDEX is required by every other task that requires
        nothing."""
        check_text("agent", agent)
        async with self._lock(plan_id):
            plan = await self._draft_of(plan_id, revision)
            if draft is not None:
                plan = replace(plan, draft=self._checked(draft), revision=plan.revision + 1)
            index = plan.draft.index_task()
            new_tasks: list[tuple[str, Task]] = []
            for number, item in enumerate(plan.draft.tasks):
                labels = {PLAN_LABEL: str(plan.plan_id), PLAN_KEY_LABEL: item.key}
                if item.produces_index:
                    labels[INDEX_LABEL] = "true"
                try:
                    task = self._work.build_task(
                        NewTask(
                            project_id=plan.project_id,
                            name=item.name,
                            prompt=item.prompt,
                            priority=item.priority,
                            role=item.role,
                            labels=labels,
                            agent=agent,
                        )
                    )
                except InvalidArgument as err:
                    field = f"draft.tasks[{number}].{err.field}"
                    raise InvalidArgument(field, err.message.split(": ", 1)[-1], reason=err.reason) from None
                new_tasks.append((item.key, task))
            requires = [(item.key, key) for item in plan.draft.tasks for key in item.requires]
            if index is not None:
                requires += [
                    (item.key, index.key)
                    for item in plan.draft.tasks
                    if not item.requires and item is not index
                ]
            now = self._clock()
            approved = replace(
                plan,
                status=PlanStatus.APPROVED,
                updated_at=now,
                updated_by=agent,
                decided_at=now,
                decided_by=agent,
            )
            stored, _created, links = await self._store.seed_plan(
                approved, new_tasks, requires, index_key=index.key if index is not None else ""
            )
            await self._work.refresh(plan.project_id, by=agent)
        tasks = [await self._work.get_task(stored.task_ids[item.key]) for item in plan.draft.tasks]
        return Approval(stored, tasks, links)

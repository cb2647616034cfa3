"""The work service: tasks, links, context bundles, task runs and project runs.

A task run is an ordinary Hearth job: the task's context bundle is assembled
(:mod:`bundles`), rendered into the prompt, stored by content hash, and the
prompt is submitted through :class:`JobService` like any other job (routed,
traced, recorded); the run record keeps the snapshot's hash, the model and
engine that served it, the sampling settings, the routing report, usage,
cost and output, so :meth:`WorkService.rerun` can send the same prompt
again and :meth:`WorkService.diff_runs` can say what changed.

Statuses that follow from the graph (pending, ready, blocked) are derived by
:func:`tasks.classify` and written back whenever something they depend on
changes, so listing a project shows them as they are.

A task's role (:mod:`roles`) picks its system prompt (the first message of
its job), its context policy (the budget when the task sets none, and the
tiers its bundle draws on) and, through the router, its models. When a task
requires the work of another role, memoryd's handoff summary of that work
joins its bundle (:mod:`handoffs`). A run that fails on a local model is
retried once on the next target of the job's chain (the role's chain, as
the router ordered it): an escalation, recorded on the second run
(``escalated_from``, ``escalation``). A task that produces the INDEX (a
plan's root task) writes its output as the project's INDEX document.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hearth.chat import ChatMessage
from hearth.errors import FailedPrecondition, HearthError, InvalidArgument, NotFound
from orchestratord.domain.bundles import (
    Bundle,
    Candidate,
    Tier,
    allocate,
    bundle_hash,
    bundle_to_json,
    render_prompt,
)
from orchestratord.domain.context import ContextItem
from orchestratord.domain.events import WorkEvent
from orchestratord.domain.handoffs import HandoffSummary, candidates_of, handoff_requests
from orchestratord.domain.jobs import JobSnapshot, JobState
from orchestratord.domain.plans import INDEX_LABEL
from orchestratord.domain.ports import (
    Handoffs,
    Memory,
    ModelCatalog,
    ModelFacts,
    RoleRoute,
    RoleRoutes,
    TaskStore,
)
from orchestratord.domain.roles import RoleBook, RoleProfile
from orchestratord.domain.run_diff import RunDiff, diff_runs
from orchestratord.domain.service import JobService
from orchestratord.domain.stats import StatsQuery, StatsReport
from orchestratord.domain.tasks import (
    ContextOverride,
    ContextSnapshot,
    Link,
    LinkKind,
    Project,
    RunStatus,
    Task,
    TaskInput,
    TaskNote,
    TaskRun,
    TaskStatus,
    classify,
    find_cycle,
)
from orchestratord.domain.validation import JobDraft, SubmitLimits, check_text, validate_submission

log = logging.getLogger(__name__)

_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SOURCE = re.compile(r"(task):([0-9]{1,18})|(memory):([0-9a-fA-F-]{1,64})")
#: A sibling's output goes in as its first characters only.
SIBLING_CHARS = 600
MAX_PRIORITY = 1_000_000
#: A task's input is checked as SubmitJob checks a job's (a run is a job).
_TASK_LIMITS = SubmitLimits()


@dataclass(frozen=True, slots=True)
class WorkLimits:
    #: Context budget of a task that sets none, in tokens.
    default_context_budget: int = 2048
    #: Tasks a project run starts at once when the request says 0.
    default_parallelism: int = 4
    max_parallelism: int = 64
    #: Sampling of task runs.
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    #: Memory hits offered as candidates (memoryd's GetContext top_k).
    memory_top_k: int = 8
    memory_time_limit: float = 10.0
    #: Retry a run that failed on a local model once on the next target of its chain.
    escalate: bool = True
    #: Ask memoryd for handoff summaries when roles change along a requires link.
    handoffs: bool = True
    #: The longest a handoff summary may take (memoryd's two summary jobs).
    handoff_time_limit: float = 300.0


#: End reasons that are not retried on another target: the run was stopped,
#: or it ran out of time (another target would get none either).
NOT_ESCALATED = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "ORCHESTRATOR_RESTARTED"})


@dataclass(frozen=True, slots=True)
class Escalation:
    """A failed run retried on the next target of its chain."""

    from_target: str
    to_target: str
    cause: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "from_target": self.from_target,
            "to_target": self.to_target,
            "cause": self.cause,
            "message": self.message,
        }


def escalation_of(
    run: TaskRun, chain: Sequence[str], facts: Callable[[str], ModelFacts | None]
) -> Escalation | None:
    """The escalation a failed run gets: when it failed (not stopped, not out
    of time) on a local model that is not the last of the job's chain, the
    next target of the chain. The target it failed on is the last one the job
    tried: the last fallback's, else the first of the chain."""
    if run.status is not RunStatus.FAILED or run.end_reason in NOT_ESCALATED or not chain:
        return None
    fallbacks: Any = run.routing_report.get("fallbacks") or []
    tried = str(fallbacks[-1].get("to_target", "")) if fallbacks else chain[0]
    if tried not in chain:
        return None
    position = list(chain).index(tried)
    model = facts(tried)
    if model is None or model.remote or position + 1 >= len(chain):
        return None
    return Escalation(tried, chain[position + 1], run.end_reason or "FAILED", run.end_message)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A CreateTask request, before validation."""

    project_id: str
    name: str
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    priority: int = 0
    role: str = ""
    model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    requires_approval: bool = False
    context_budget: int = 0
    agent: str = ""


@dataclass(frozen=True, slots=True)
class TaskDetail:
    task: Task
    notes: list[TaskNote]
    outgoing: list[Link]
    incoming: list[Link]
    runs: list[TaskRun]


@dataclass(frozen=True, slots=True)
class Preview:
    """A task's bundle as a run would assemble it."""

    bundle: Bundle
    prompt: str
    context_hash: str

    def snapshot(self) -> ContextSnapshot:
        return ContextSnapshot(
            self.context_hash,
            tuple(bundle_to_json(self.bundle)),
            self.bundle.budget,
            self.bundle.counter,
            self.bundle.exact,
            self.prompt,
        )


@dataclass(frozen=True, slots=True)
class ProjectView:
    """What a project run reads once, at its start: the project (its INDEX),
    every link by task and every context override. The run works on the
    project as it was then (links and overrides changed during the run apply
    to the next one), so each task's context costs one query."""

    project: Project | None
    outgoing: Mapping[int, list[Link]]
    incoming: Mapping[int, list[Link]]
    overrides: Mapping[int, ContextOverride]
    #: (name, output) of the tasks whose outputs were read or produced
    #: during the run; None for a task known to have none yet.
    outputs: dict[int, tuple[str, str] | None] = field(default_factory=dict)
    #: The project's tasks (their roles and inputs, for handoffs).
    tasks: Mapping[int, Task] = field(default_factory=dict)
    #: The done runs made during the run, by task (their ends may still be
    #: on the way to the store).
    runs: dict[int, TaskRun] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """A change of one task during a project run."""

    task: Task
    run: TaskRun | None = None


@dataclass(frozen=True, slots=True)
class ProjectRunSummary:
    done: int
    failed: int
    blocked: int
    not_run: int
    stopped_on_failure: bool
    blocked_tasks: list[Task]


ProjectRunUpdate = TaskUpdate | ProjectRunSummary


def context_hash(bundle: Bundle, prompt: str) -> str:
    """The snapshot's name: its bundle and the exact prompt made from it (two
    tasks with equal context but other inputs get other snapshots)."""
    return hashlib.sha256(f"{bundle_hash(bundle)}\n{prompt}".encode()).hexdigest()


class WorkService:
    """Tasks and runs over the task store and the job service.

    Args:
        store: the task store (PostgreSQL).
        jobs: submits and follows the job of each task run.
        memory: memoryd, for memory hits and pinned memories; None leaves
            the memory tier empty.
        models: what is known of each model: context length, prices, a
            local tokenizer.
        roles: the agent roles (system prompts, context policies).
        handoffs: memoryd's handoff summaries; None: bundles get none.
        role_routes: the router's dry runs, for :meth:`list_roles`.
    """

    def __init__(
        self,
        store: TaskStore,
        jobs: JobService,
        memory: Memory | None,
        models: ModelCatalog,
        limits: WorkLimits = WorkLimits(),
        *,
        roles: RoleBook | None = None,
        handoffs: Handoffs | None = None,
        role_routes: RoleRoutes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._role_routes = role_routes
        self._store = store
        self._jobs = jobs
        self._memory = memory
        self._models = models
        self._limits = limits
        self._roles = roles if roles is not None else RoleBook.of({}, {})
        self._handoffs = handoffs if limits.handoffs else None
        self._clock = clock
        # Tasks with a run in flight in this process: a second RunTask of the
        # same task (or a project run picking it twice) is refused.
        self._running: set[int] = set()
        self._project_runs: set[str] = set()

    # --- tasks -----------------------------------------------------------

    @property
    def roles(self) -> RoleBook:
        return self._roles

    async def list_roles(self, *, route: bool) -> list[tuple[RoleProfile, RoleRoute | None]]:
        """Every role, by name, and (``route``) where a task of it would run
        now: the router's dry run for a job of the role with the role's full
        context budget and the task runs' max_tokens."""
        profiles = list(self._roles.roles.values())
        if not route or self._role_routes is None:
            return [(profile, None) for profile in profiles]
        routes = await asyncio.gather(
            *(
                self._role_routes.route(p.name, self._role_context(p), self._limits.max_tokens)
                for p in profiles
            )
        )
        return list(zip(profiles, routes, strict=True))

    def _role_context(self, role: RoleProfile) -> int:
        """The context a task of the role carries at most: its budget, capped
        (as a run caps it) by its first model's context less the answer."""
        budget = role.context_budget or self._limits.default_context_budget
        facts = self._models.resolve("", role.name)
        if facts is not None:
            budget = min(budget, max(1, facts.context_length - self._limits.max_tokens))
        return budget

    async def stats(self, query: StatsQuery) -> StatsReport:
        """Usage from the run records and plan attempts (never their texts)."""
        if query.project_id:
            check_project_id(query.project_id)
        check_text("agent", query.agent)
        return await self._store.stats(query.check())

    async def events(
        self, *, since: int, project_id: str, limit: int, page: int = 500
    ) -> AsyncIterator[list[WorkEvent]]:
        """The work event log after ``since``, in pages, up to ``limit`` events (0: all)."""
        if since < 0:
            raise InvalidArgument("since", "must not be negative")
        if limit < 0:
            raise InvalidArgument("limit", "must not be negative (0: every event)")
        if project_id:
            check_project_id(project_id)
        left = limit or None
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            events = await self._store.read_events(since=since, limit=size, project_id=project_id)
            if not events:
                return
            yield events
            since = events[-1].sequence
            if left is not None:
                left -= len(events)
            if len(events) < size:
                return

    async def create_task(self, new: NewTask) -> Task:
        """Validate and store a task; its status follows from approval (a task
        has no links yet, so it starts ready or waiting for approval)."""
        return await self._store.create_task(self.build_task(new))

    def build_task(self, new: NewTask) -> Task:
        """A validated task, not stored (``task_id`` 0): what CreateTask and a
        plan's approval store."""
        project_id = check_project_id(new.project_id)
        _check_name(new.name)
        if not (0 <= new.priority <= MAX_PRIORITY):
            raise InvalidArgument("priority", f"must be between 0 and {MAX_PRIORITY}")
        _check_task_input(new)
        self._check_budget(new.context_budget, new.model, new.role)
        now = self._clock()
        status = TaskStatus.WAITING_APPROVAL if new.requires_approval else TaskStatus.READY
        task = Task(
            task_id=0,
            project_id=project_id,
            name=new.name.strip(),
            status=status,
            input=TaskInput(new.prompt, new.messages),
            priority=new.priority,
            role=new.role,
            model=new.model,
            labels=dict(new.labels),
            requires_approval=new.requires_approval,
            context_budget=new.context_budget,
            created_at=now,
            created_by=new.agent,
            updated_at=now,
            updated_by=new.agent,
        )
        return task

    async def get_task(self, task_id: int) -> Task:
        task = await self._store.get_task(_check_task_id(task_id))
        if task is None:
            raise _task_not_found(task_id)
        return task

    async def task_detail(self, task_id: int) -> TaskDetail:
        task = await self.get_task(task_id)
        outgoing, incoming = await self._store.list_links(task.task_id)
        notes = await self._store.list_notes(task.task_id)
        runs = await self._store.list_runs(task_id=task.task_id, limit=20)
        return TaskDetail(task, notes, outgoing, incoming, runs)

    async def list_tasks(self, project_id: str, status: TaskStatus | None = None) -> list[Task]:
        await self._require_project(project_id)
        return await self._store.list_tasks(project_id, status=status)

    async def add_note(self, task_id: int, agent: str, text: str) -> TaskNote:
        task = await self.get_task(task_id)
        if not text.strip():
            raise InvalidArgument("text", "must not be empty or blank")
        check_text("text", text)
        check_text("agent", agent)
        return await self._store.add_note(task.task_id, agent, text, self._clock())

    async def close_task(self, task_id: int, status: TaskStatus, reason: str, agent: str) -> Task:
        """A person or an agent closes a task: done, failed or cancelled."""
        if status not in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise InvalidArgument("status", "must be DONE, FAILED or CANCELLED")
        check_text("reason", reason)
        task = await self.get_task(task_id)
        if task.task_id in self._running or task.status is TaskStatus.RUNNING:
            raise FailedPrecondition(
                f"task {task_id} is running; cancel its job first", reason="TASK_RUNNING"
            )
        now = self._clock()
        await self._store.update_task(
            replace(
                task,
                status=status,
                status_reason=reason,
                hold_reason="",
                updated_at=now,
                updated_by=agent,
                closed_at=now,
                closed_by=agent,
            )
        )
        await self._store.add_note(task.task_id, agent, f"closed as {status.value}: {reason or '-'}", now)
        await self.refresh(task.project_id, by=agent)
        return await self.get_task(task.task_id)

    async def hold_task(self, task_id: int, reason: str, agent: str) -> Task:
        if not reason.strip():
            raise InvalidArgument("reason", "say why the task is held")
        check_text("reason", reason)
        task = await self._open_task(task_id)
        now = self._clock()
        await self._store.update_task(
            replace(
                task,
                status=TaskStatus.BLOCKED,
                hold_reason=reason,
                status_reason=f"held by {agent or 'someone'}: {reason}",
                updated_at=now,
                updated_by=agent,
            )
        )
        await self.refresh(task.project_id, by=agent)
        return await self.get_task(task.task_id)

    async def release_task(self, task_id: int, agent: str) -> Task:
        task = await self._open_task(task_id)
        now = self._clock()
        status = (
            TaskStatus.WAITING_APPROVAL
            if task.requires_approval and not task.approved
            else TaskStatus.PENDING
        )
        await self._store.update_task(
            replace(task, status=status, hold_reason="", status_reason="", updated_at=now, updated_by=agent)
        )
        await self.refresh(task.project_id, by=agent)
        return await self.get_task(task.task_id)

    # --- links -----------------------------------------------------------

    async def create_link(
        self, from_task: int, to_task: int, kind: LinkKind, agent: str
    ) -> tuple[Link, bool]:
        """Link two tasks of one project. Returns the link and whether it
        existed already."""
        if from_task == to_task:
            raise InvalidArgument("to_task", "a task cannot be linked to itself")
        source = await self.get_task(from_task)
        target = await self.get_task(to_task)
        if source.project_id != target.project_id:
            raise FailedPrecondition(
                f"task {from_task} is in project {source.project_id!r}, task {to_task} in "
                f"{target.project_id!r}; links stay inside one project",
                reason="CROSS_PROJECT_LINK",
            )
        if kind is LinkKind.REQUIRES:
            existing = await self._store.project_links(source.project_id, LinkKind.REQUIRES)
            cycle = find_cycle([(link.from_task, link.to_task) for link in existing], (from_task, to_task))
            if cycle is not None:
                path = " -> ".join(str(task_id) for task_id in cycle)
                raise FailedPrecondition(
                    f"task {from_task} requiring {to_task} would close a cycle: {path} "
                    "(each requires the next); remove one of these links first",
                    reason="DEPENDENCY_CYCLE",
                    metadata={"cycle": ",".join(str(task_id) for task_id in cycle)},
                )
        link = Link(from_task, to_task, kind, self._clock(), agent)
        created = await self._store.add_link(link)
        if kind is LinkKind.REQUIRES and created:
            await self.refresh(source.project_id, by=agent)
        return link, not created

    async def delete_link(self, from_task: int, to_task: int, kind: LinkKind, agent: str = "") -> None:
        source = await self.get_task(from_task)
        if not await self._store.delete_link(from_task, to_task, kind, by=agent):
            raise NotFound(
                f"no {kind.value} link from task {from_task} to {to_task}",
                reason="LINK_NOT_FOUND",
                metadata={"from_task": str(from_task), "to_task": str(to_task), "kind": kind.value},
            )
        if kind is LinkKind.REQUIRES:
            await self.refresh(source.project_id, by="")

    async def list_links(self, task_id: int) -> tuple[list[Link], list[Link]]:
        task = await self.get_task(task_id)
        return await self._store.list_links(task.task_id)

    # --- scheduling ------------------------------------------------------

    async def refresh(self, project_id: str, *, by: str) -> list[Task]:
        """Derive pending / ready / blocked again and write what changed.
        Returns the project's tasks as they are now."""
        tasks = await self._store.list_tasks(project_id)
        links = await self._store.project_links(project_id, LinkKind.REQUIRES)
        changes = _derived_changes(tasks, [(link.from_task, link.to_task) for link in links])
        if changes:
            await self._store.set_statuses(changes, at=self._clock(), by=by)
            tasks = await self._store.list_tasks(project_id)
        return tasks

    async def next_task(self, project_id: str) -> tuple[Task | None, list[Task]]:
        """The next ready task by (priority, created, id), and the blocked set."""
        await self._require_project(project_id)
        tasks = await self.refresh(project_id, by="")
        ready = [t for t in tasks if t.status is TaskStatus.READY and t.task_id not in self._running]
        blocked = [t for t in tasks if t.status is TaskStatus.BLOCKED]
        return (min(ready, key=_schedule_key) if ready else None), blocked

    # --- context ---------------------------------------------------------

    async def preview_context(self, task_id: int, budget: int = 0) -> Preview:
        """The bundle a run of the task would use now, with every candidate's
        fate; nothing is written."""
        task = await self.get_task(task_id)
        if budget < 0:
            raise InvalidArgument("budget", "must not be negative (0: the task's budget)")
        if budget:
            self._check_budget(budget, task.model, task.role)
        return await self._gather(task, budget or task.context_budget, count_left_out=True)

    async def approve_context(
        self, task_id: int, pins: Sequence[str], excludes: Sequence[str], agent: str
    ) -> tuple[Task, Preview]:
        """Store a person's pins and excludes for the task and approve it."""
        task = await self.get_task(task_id)
        for index, source in enumerate(pins):
            await self._check_pin(task, f"pins[{index}]", source)
        for index, source in enumerate(excludes):
            check_text(f"excludes[{index}]", source)
            if not source.strip():
                raise InvalidArgument(f"excludes[{index}]", "must not be empty")
        now = self._clock()
        await self._store.set_override(
            ContextOverride(task.task_id, tuple(pins), tuple(excludes), agent, now)
        )
        status = task.status
        if status is TaskStatus.WAITING_APPROVAL:
            status = TaskStatus.PENDING
        await self._store.update_task(
            replace(task, approved=True, status=status, updated_at=now, updated_by=agent)
        )
        await self._store.add_note(
            task.task_id,
            agent,
            f"context approved: pins {list(pins) or '-'}, excludes {list(excludes) or '-'}",
            now,
        )
        await self.refresh(task.project_id, by=agent)
        task = await self.get_task(task.task_id)
        return task, await self._gather(task, task.context_budget, count_left_out=True)

    async def _gather(
        self,
        task: Task,
        budget: int,
        *,
        count_left_out: bool = False,
        view: ProjectView | None = None,
        make_handoffs: bool = False,
    ) -> Preview:
        """gather_context: the candidates in their tiers, allocated within the
        budget, rendered into the prompt. A preview counts every candidate
        (``count_left_out``); a run counts only what could go in. The task's
        role sets the budget when the task sets none and leaves out the tiers
        its policy does not name. A run (``make_handoffs``) asks memoryd to
        write the handoff summaries it lacks; a preview shows those written."""
        role = self._roles.get(task.role)
        left_out = role.excluded_tiers()
        facts = self._models.resolve(task.model, task.role)
        counter = self._models.counter(facts)
        budget = budget or role.context_budget or self._limits.default_context_budget
        if facts is not None:
            # Never more context than the model can take beside its answer.
            budget = min(budget, max(1, facts.context_length - self._limits.max_tokens))
        if view is not None:
            override = view.overrides.get(task.task_id)
            project = view.project
            links = (view.outgoing.get(task.task_id, []), view.incoming.get(task.task_id, []))
            memory_items = await self._memory_items(task, budget, role)
        else:
            override, project, links, memory_items = await asyncio.gather(
                self._store.get_override(task.task_id),
                self._store.get_project(task.project_id),
                self._store.list_links(task.task_id),
                self._memory_items(task, budget, role),
            )
        known = view.outputs if view is not None else None
        candidates = await self._candidates(task, override, project, links, memory_items, known)
        if Tier.REQUIRED not in left_out:
            candidates += await self._handoff_candidates(task, links[0], view, make=make_handoffs)
        excludes = frozenset(override.excludes) if override else frozenset()
        bundle = allocate(
            candidates,
            budget,
            counter,
            excludes=excludes,
            count_left_out=count_left_out,
            left_out_tiers=left_out,
            tiers_why=f"the {role.name} role's context policy leaves out this tier",
        )
        prompt = render_prompt(task.input.text, bundle)
        return Preview(bundle, prompt, context_hash(bundle, prompt))

    async def _candidates(
        self,
        task: Task,
        override: ContextOverride | None,
        project: Project | None,
        links: tuple[list[Link], list[Link]],
        memory_items: list[ContextItem],
        known: dict[int, tuple[str, str] | None] | None = None,
    ) -> list[Candidate]:
        """Every candidate of the task's bundle, in its tier. The outputs of
        the tasks it draws on come in one query, less those ``known`` (a
        project run's, which it extends)."""
        outgoing, incoming = links
        required = sorted(link.to_task for link in outgoing if link.kind is LinkKind.REQUIRES)
        related = sorted(
            {link.to_task for link in outgoing if link.kind is not LinkKind.REQUIRES}
            | {link.from_task for link in incoming if link.kind is not LinkKind.REQUIRES}
        )
        pins = override.pins if override else ()
        pinned_tasks = [int(m.group(2)) for m in map(_SOURCE.fullmatch, pins) if m is not None and m.group(1)]
        wanted = sorted({*required, *related, *pinned_tasks})
        if known is None:
            outputs = await self._store.latest_outputs(wanted)
        else:
            missing = [task_id for task_id in wanted if task_id not in known]
            if missing:
                found = await self._store.latest_outputs(missing)
                known.update({task_id: found.get(task_id) for task_id in missing})
            outputs = {task_id: out for task_id in wanted if (out := known.get(task_id)) is not None}

        candidates: list[Candidate] = []
        if project is not None and project.index_document.strip():
            candidates.append(Candidate(Tier.INDEX, "index", "index", "INDEX", project.index_document))
        index_text = project.index_document if project is not None else ""
        for task_id in required:
            if task_id in outputs:
                name, output = outputs[task_id]
                if index_text.strip() and output == index_text:
                    continue  # the task that wrote the INDEX: its output is the first item already
                candidates.append(
                    Candidate(Tier.REQUIRED, f"task:{task_id}", "output", name, output, rank=task_id)
                )
        for task_id in related:
            if task_id in outputs:
                name, output = outputs[task_id]
                short = output[:SIBLING_CHARS]
                candidates.append(
                    Candidate(Tier.SIBLING, f"task:{task_id}", "sibling", name, short, rank=task_id)
                )
        for rank, item in enumerate(memory_items):
            source = f"memory:{item.memory_id}"
            candidates.append(
                Candidate(Tier.MEMORY, source, "memory", item.section.value, item.text, rank=rank)
            )
        for rank, source in enumerate(pins):
            pinned = await self._pinned(task, source, outputs)
            if pinned is not None:
                title, text = pinned
                candidates.append(Candidate(Tier.PINNED, f"pin:{source}", "pinned", title, text, rank=rank))
        return candidates

    async def _memory_items(self, task: Task, budget: int, role: RoleProfile) -> list[ContextItem]:
        """memoryd's hits for the task; none (logged) when memoryd fails: a
        bundle without memory beats no run. None asked for when the role's
        policy leaves out the memory tier."""
        if self._memory is None or Tier.MEMORY not in role.tiers:
            return []
        try:
            return await self._memory.context(
                task.input.text,
                task.project_id,
                str(task.task_id),
                budget,
                self._limits.memory_top_k,
                time_limit=self._limits.memory_time_limit,
            )
        except HearthError as err:
            log.warning("task %d: no memory context (%s: %s)", task.task_id, err.reason, err.message)
            return []

    async def _handoff_candidates(
        self, task: Task, outgoing: Sequence[Link], view: ProjectView | None, *, make: bool
    ) -> list[Candidate]:
        """The handoff summaries of the required tasks of other roles (one per
        required task with a done run). A handoff memoryd cannot give is left
        out (logged; noted on the task when a run asked for it)."""
        if self._handoffs is None:
            return []
        required_ids = sorted(link.to_task for link in outgoing if link.kind is LinkKind.REQUIRES)
        if not required_ids:
            return []
        required: dict[int, Task] = {}
        for task_id in required_ids:
            known = view.tasks.get(task_id) if view is not None else None
            found = known if known is not None else await self._store.get_task(task_id)
            # The INDEX task's work is the INDEX itself, the bundle's first item.
            if (
                found is not None
                and not self._roles.same_role(found.role, task.role)
                and not _produces_index(found)
            ):
                required[task_id] = found
        if not required:
            return []
        runs = {i: view.runs[i] for i in required if view is not None and i in view.runs}
        missing = [i for i in required if i not in runs]
        if missing:
            runs.update(await self._store.latest_done_runs(missing))
        summaries: list[HandoffSummary] = []
        for request in handoff_requests(task, required, runs, self._roles):
            try:
                if make:
                    made = await self._handoffs.make(request, time_limit=self._limits.handoff_time_limit)
                    summaries.append(made)
                else:
                    found_summary = await self._handoffs.find(
                        request, time_limit=self._limits.memory_time_limit
                    )
                    if found_summary is not None:
                        summaries.append(found_summary)
            except HearthError as err:
                log.warning(
                    "task %d: no handoff summary from task %d (%s: %s)",
                    task.task_id,
                    request.from_task,
                    err.reason,
                    err.message,
                )
                if make:
                    note = f"no handoff summary from task {request.from_task}: {err.reason}: {err.message}"
                    await self._store.add_note(task.task_id, "orchestratord", note, self._clock())
        return candidates_of(summaries)

    async def _pinned(
        self, task: Task, source: str, outputs: Mapping[int, tuple[str, str]]
    ) -> tuple[str, str] | None:
        match = _SOURCE.fullmatch(source)
        if match is None:
            return None
        if match.group(1):
            return outputs.get(int(match.group(2)))
        if self._memory is None:
            return None
        try:
            text = await self._memory.get(
                task.project_id, match.group(4), time_limit=self._limits.memory_time_limit
            )
        except NotFound:
            return None
        return "memory", text

    async def _check_pin(self, task: Task, where: str, source: str) -> None:
        check_text(where, source)
        match = _SOURCE.fullmatch(source)
        if match is None:
            raise InvalidArgument(where, f"{source!r} is not task:<id> or memory:<id>")
        if match.group(1):
            other = await self._store.get_task(int(match.group(2)))
            if other is None or other.project_id != task.project_id:
                raise NotFound(
                    f"{where}: no task {match.group(2)} in project {task.project_id!r}",
                    reason="PIN_NOT_FOUND",
                    metadata={"field": where, "source": source},
                )
            return
        if self._memory is None:
            raise FailedPrecondition(f"{where}: memory is not configured", reason="MEMORY_UNAVAILABLE")
        try:
            await self._memory.get(task.project_id, match.group(4), time_limit=self._limits.memory_time_limit)
        except NotFound:
            raise NotFound(
                f"{where}: no memory {match.group(4)} in project {task.project_id!r}",
                reason="PIN_NOT_FOUND",
                metadata={"field": where, "source": source},
            ) from None

    # --- runs --------------------------------------------------------------

    async def run_task(self, task_id: int, agent: str) -> tuple[TaskRun, Task]:
        """Run a ready task once, as a job; returns the run and the task when
        the job has ended."""
        task = await self.get_task(task_id)
        self._check_runnable(task)
        run = await self._execute(task, agent)
        await self.refresh(task.project_id, by=agent)
        return run, await self.get_task(task.task_id)

    async def rerun(self, run_id: int, agent: str) -> TaskRun:
        """Run a run's task again with its stored snapshot (the same prompt,
        byte for byte) and its model and sampling settings. The task's status
        is left as it is: a rerun reproduces, it does not redo the work."""
        previous = await self.get_run(run_id)
        snapshot = await self._store.get_snapshot(previous.context_hash)
        if snapshot is None:
            raise FailedPrecondition(f"run {run_id} has no stored context", reason="NO_SNAPSHOT")
        task = await self.get_task(previous.task_id)
        run, _ = await self._run_job(
            task,
            snapshot,
            dict(previous.sampling),
            previous.model,
            agent,
            rerun_of=run_id,
            system_prompt=previous.system_prompt,
        )
        await self._store.finish_run(run)
        return run

    async def get_run(self, run_id: int) -> TaskRun:
        if run_id <= 0:
            raise InvalidArgument("run_id", "must be a run id (a positive number)")
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}", reason="RUN_NOT_FOUND", metadata={"run_id": str(run_id)})
        return run

    async def run_with_snapshot(self, run_id: int) -> tuple[TaskRun, ContextSnapshot | None]:
        run = await self.get_run(run_id)
        return run, await self._store.get_snapshot(run.context_hash) if run.context_hash else None

    async def list_runs(self, project_id: str = "", task_id: int = 0, limit: int = 50) -> list[TaskRun]:
        if bool(project_id) == bool(task_id):
            raise InvalidArgument("project_id", "give a project_id or a task_id (one of the two)")
        if limit < 0:
            raise InvalidArgument("page_size", "must not be negative")
        if task_id:
            await self.get_task(task_id)
        else:
            await self._require_project(project_id)
        return await self._store.list_runs(
            project_id=project_id, task_id=task_id, limit=min(limit or 50, 1000)
        )

    async def diff_runs(self, run_a: int, run_b: int) -> RunDiff:
        a, snap_a = await self.run_with_snapshot(run_a)
        b, snap_b = await self.run_with_snapshot(run_b)
        return diff_runs(a, snap_a, b, snap_b)

    # --- projects ----------------------------------------------------------

    async def get_project(self, project_id: str) -> Project:
        return await self._require_project(project_id)

    async def set_project_index(self, project_id: str, text: str, agent: str) -> Project:
        project_id = check_project_id(project_id)
        check_text("index_document", text)
        return await self._store.set_project_index(project_id, text, at=self._clock(), by=agent)

    async def run_project(
        self, project_id: str, *, strategy: str, parallelism: int, continue_on_failure: bool, agent: str
    ) -> AsyncIterator[ProjectRunUpdate]:
        """Run the project's ready tasks as jobs until none is ready.

        At most ``parallelism`` tasks run at once. ``strategy`` "dag" starts
        ready tasks level by level of the graph (depth first, then priority),
        "priority" by (priority, created, id) alone. After a failure no new
        task starts unless ``continue_on_failure``; the failed task's
        dependants are blocked with the reason either way. Yields a
        :class:`TaskUpdate` for every start and end, then the summary.
        """
        await self._require_project(project_id)
        if strategy not in ("dag", "priority"):
            raise InvalidArgument("strategy", "must be dag or priority")
        if parallelism < 0 or parallelism > self._limits.max_parallelism:
            raise InvalidArgument("parallelism", f"must be between 0 and {self._limits.max_parallelism}")
        if project_id in self._project_runs:
            raise FailedPrecondition(f"project {project_id!r} is already running", reason="PROJECT_RUNNING")
        slots = parallelism or self._limits.default_parallelism
        self._project_runs.add(project_id)
        running: dict[asyncio.Task[TaskRun], Task] = {}
        stopped = False
        try:
            # The project's state is read once and kept here: each end
            # updates it in memory and writes only what changed, so a run
            # of n tasks costs O(n) reads, not O(n^2).
            tasks = {t.task_id: t for t in await self.refresh(project_id, by=agent)}
            view = replace(await self._project_view(project_id), tasks=tasks)
            requires = [
                (link.from_task, link.to_task)
                for links in view.outgoing.values()
                for link in links
                if link.kind is LinkKind.REQUIRES
            ]
            depth = _depths(list(tasks), requires)

            def order(task: Task) -> tuple[float, ...]:
                key = _schedule_key(task)
                return (depth.get(task.task_id, 0), *key) if strategy == "dag" else key

            ready: list[tuple[tuple[float, ...], int]] = []
            queued: set[int] = set()

            def enqueue_ready() -> None:
                for task in tasks.values():
                    if (
                        task.status is TaskStatus.READY
                        and task.task_id not in queued
                        and task.task_id not in self._running
                    ):
                        queued.add(task.task_id)
                        heapq.heappush(ready, (order(task), task.task_id))

            def start_ready() -> list[Task]:
                """Start ready tasks while slots are free; the tasks started."""
                enqueue_ready()
                started = []
                while not stopped and ready and len(running) < slots:
                    _, task_id = heapq.heappop(ready)
                    task = tasks[task_id]
                    if task.status is not TaskStatus.READY or task_id in self._running:
                        continue
                    self._running.add(task_id)
                    work = asyncio.create_task(
                        self._execute(task, agent, claimed=True, view=view), name=f"task-{task_id}"
                    )
                    running[work] = task
                    tasks[task_id] = replace(task, status=TaskStatus.RUNNING)
                    started.append(tasks[task_id])
                return started

            for task in start_ready():
                yield TaskUpdate(task)
            while True:
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                ended = []
                ends = []
                for work in done:
                    task = running.pop(work)
                    run = work.result()
                    status, reason = _task_outcome(run)
                    tasks[task.task_id] = replace(task, status=status, status_reason=reason)
                    ended.append(run)
                    ends.append((run, status, reason))
                    if status is not TaskStatus.DONE and not continue_on_failure:
                        stopped = True
                changes = _derived_changes(list(tasks.values()), requires)
                for task_id, status, reason in changes:
                    tasks[task_id] = replace(tasks[task_id], status=status, status_reason=reason)
                indexes = []
                for run in ended:
                    if run.status is RunStatus.DONE:
                        view.outputs[run.task_id] = (tasks[run.task_id].name, run.output)
                        view.runs[run.task_id] = run
                        if _produces_index(tasks[run.task_id]):
                            indexes.append(run)
                            project = view.project or Project(project_id)
                            view = replace(view, project=replace(project, index_document=run.output))
                # Dependants start at once, on the outputs in memory; the ends
                # and the statuses they change are written meanwhile, in one
                # transaction (a task started now gets RUNNING from its own).
                starting = start_ready()
                written = [c for c in changes if tasks[c[0]].status is not TaskStatus.RUNNING]
                await self._store.end_runs(ends, written, at=self._clock(), by=agent)
                for run in indexes:
                    await self._write_index(run, agent)
                for run in ended:
                    await self._note_failure(run, agent)
                for run in ended:
                    yield TaskUpdate(tasks[run.task_id], run)
                for task in starting:
                    yield TaskUpdate(task)
        finally:
            for work in running:
                work.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            self._project_runs.discard(project_id)
        final = await self._store.list_tasks(project_id)
        blocked = [t for t in final if t.status is TaskStatus.BLOCKED]
        left = [t for t in final if not t.status.is_closed and t.status is not TaskStatus.BLOCKED]
        yield ProjectRunSummary(
            done=sum(t.status is TaskStatus.DONE for t in final),
            failed=sum(t.status is TaskStatus.FAILED for t in final),
            blocked=len(blocked),
            not_run=len(left),
            stopped_on_failure=stopped and bool(left),
            blocked_tasks=blocked,
        )

    async def _project_view(self, project_id: str) -> ProjectView:
        project, links, overrides = await asyncio.gather(
            self._store.get_project(project_id),
            self._store.project_links(project_id),
            self._store.project_overrides(project_id),
        )
        outgoing: dict[int, list[Link]] = {}
        incoming: dict[int, list[Link]] = {}
        for link in links:
            outgoing.setdefault(link.from_task, []).append(link)
            incoming.setdefault(link.to_task, []).append(link)
        return ProjectView(project, outgoing, incoming, overrides)

    # --- internals ---------------------------------------------------------

    def _check_runnable(self, task: Task) -> None:
        if task.task_id in self._running or task.status is TaskStatus.RUNNING:
            raise FailedPrecondition(f"task {task.task_id} is running", reason="TASK_RUNNING")
        if task.status is TaskStatus.WAITING_APPROVAL:
            raise FailedPrecondition(
                f"task {task.task_id} waits for approval of its context "
                f"(hearth context approve {task.task_id})",
                reason="NOT_APPROVED",
            )
        if task.status is not TaskStatus.READY:
            why = f": {task.status_reason}" if task.status_reason else ""
            raise FailedPrecondition(
                f"task {task.task_id} is {task.status.value}, not ready{why}", reason="TASK_NOT_READY"
            )

    async def _execute(
        self, task: Task, agent: str, *, claimed: bool = False, view: ProjectView | None = None
    ) -> TaskRun:
        """Assemble, snapshot and run one task. A context that cannot be
        assembled is a failed run too (recorded, without a snapshot), never
        an exception. Without a ``view`` (a single RunTask) the run's end and
        the task's status are written here; a project run (with its view)
        writes them itself, together with the statuses they change."""
        if not claimed:
            self._running.add(task.task_id)
        try:
            sampling = {
                "max_tokens": self._limits.max_tokens,
                "temperature": self._limits.temperature,
                "seed": self._limits.seed,
            }
            role = self._roles.get(task.role)
            try:
                preview = await self._gather(task, task.context_budget, view=view, make_handoffs=True)
            except HearthError as err:
                now = self._clock()
                failed = TaskRun(
                    run_id=0,
                    task_id=task.task_id,
                    project_id=task.project_id,
                    status=RunStatus.FAILED,
                    context_hash="",
                    model=task.model,
                    sampling=sampling,
                    end_reason=err.reason,
                    end_message=f"the context could not be assembled: {err.message}",
                    started_at=now,
                    ended_at=now,
                    started_by=agent,
                    role=task.role,
                )
                run = await self._store.start_run(None, failed, by=agent)
            else:
                snapshot = preview.snapshot()
                run, chain = await self._run_job(
                    task, snapshot, sampling, task.model, agent, system_prompt=role.system_prompt
                )
                escalation = escalation_of(run, chain, self._models.facts) if self._limits.escalate else None
                if escalation is not None:
                    run = await self._escalate(task, snapshot, sampling, agent, role, run, escalation)
            if view is None:
                status, reason = _task_outcome(run)
                await self._store.end_runs([(run, status, reason)], at=self._clock(), by=agent)
                await self._note_failure(run, agent)
                if run.status is RunStatus.DONE and _produces_index(task):
                    await self._write_index(run, agent)
            return run
        finally:
            self._running.discard(task.task_id)

    async def _escalate(
        self,
        task: Task,
        snapshot: ContextSnapshot,
        sampling: Mapping[str, Any],
        agent: str,
        role: RoleProfile,
        failed: TaskRun,
        escalation: Escalation,
    ) -> TaskRun:
        """End the failed run and run the task again, once, on the next
        target of its chain, with the same snapshot and settings; the new
        run (not written) names the failed one."""
        await self._store.finish_run(failed)
        await self._note_failure(failed, agent)
        note = (
            f"run {failed.run_id} failed on {escalation.from_target} ({escalation.cause}); "
            f"escalated to {escalation.to_target}"
        )
        await self._store.add_note(task.task_id, agent, note, self._clock())
        log.info("task %d: %s", task.task_id, note)
        run, _ = await self._run_job(
            task,
            snapshot,
            sampling,
            escalation.to_target,
            agent,
            system_prompt=role.system_prompt,
            escalated_from=failed.run_id,
            escalation=escalation,
        )
        return run

    async def _write_index(self, run: TaskRun, agent: str) -> None:
        """A done run of the task that produces the INDEX: its output becomes the INDEX."""
        await self._store.set_project_index(run.project_id, run.output, at=self._clock(), by=agent)
        await self._store.add_note(
            run.task_id, agent, f"run {run.run_id}'s output is now the project's INDEX", self._clock()
        )

    async def _run_job(
        self,
        task: Task,
        snapshot: ContextSnapshot,
        sampling: Mapping[str, Any],
        model: str,
        agent: str,
        *,
        rerun_of: int = 0,
        system_prompt: str = "",
        escalated_from: int = 0,
        escalation: Escalation | None = None,
    ) -> tuple[TaskRun, tuple[str, ...]]:
        """Submit the run's job, record the run (with its snapshot, in one
        transaction) while the job starts, and wait for the end; the ended run
        is returned, not written, with the job's chain of targets (empty when
        the job was refused). A first run marks its task RUNNING; a rerun
        leaves the task be. The job is submitted first so that recording the
        run is not on the way to the job's start; a job whose run cannot be
        recorded is cancelled. A ``system_prompt`` goes first, as the system
        message of the job's conversation."""
        prompt, messages = snapshot.prompt, tuple[ChatMessage, ...]()
        if task.input.messages:
            prompt, messages = "", _with_last_user(task.input.messages, snapshot.prompt)
        if system_prompt:
            if not messages:
                messages = (ChatMessage("user", prompt),)
            prompt, messages = "", _with_system(messages, system_prompt)
        draft = JobDraft(
            prompt=prompt,
            messages=messages,
            model=model,
            role=task.role,
            max_tokens=int(sampling.get("max_tokens", self._limits.max_tokens)),
            temperature=float(sampling.get("temperature", 0.0)),
            seed=int(sampling.get("seed", 0)),
            priority="batch",
            project_id=task.project_id,
            task_id=str(task.task_id),
            agent=agent,
            labels={"hearth.task_id": str(task.task_id)},
        )
        run = TaskRun(
            run_id=0,
            task_id=task.task_id,
            project_id=task.project_id,
            status=RunStatus.RUNNING,
            context_hash=snapshot.context_hash,
            rerun_of=rerun_of,
            model=model,
            sampling=dict(sampling),
            started_at=self._clock(),
            started_by=agent,
            role=task.role,
            system_prompt=system_prompt,
            escalated_from=escalated_from,
            escalation=escalation.to_json() if escalation is not None else {},
        )
        # A rerun leaves the task be; an escalation's task is RUNNING already.
        mark_running = not rerun_of and not escalated_from
        try:
            submitted = await self._jobs.submit(draft)
        except HearthError as err:
            refused = replace(
                run,
                status=RunStatus.FAILED,
                end_reason=err.reason,
                end_message=err.message,
                ended_at=self._clock(),
            )
            return await self._store.start_run(snapshot, refused, by=agent, mark_running=mark_running), ()
        job_id = submitted.job.job_id
        chain = tuple(submitted.job.route.chain)
        try:
            run = await self._store.start_run(
                snapshot, replace(run, job_id=job_id), by=agent, mark_running=mark_running
            )
        except BaseException:
            await self._jobs.cancel(job_id, "the task run could not be recorded")
            raise
        try:
            return self._ended(run, await self._jobs.wait_for_end(job_id)), chain
        except HearthError as err:
            failed = replace(
                run,
                status=RunStatus.FAILED,
                end_reason=err.reason,
                end_message=err.message,
                ended_at=self._clock(),
            )
            return failed, chain

    async def _note_failure(self, run: TaskRun, agent: str) -> None:
        if run.status is RunStatus.FAILED and run.end_message:
            note = f"run {run.run_id} failed: {run.end_reason}: {run.end_message}"
            await self._store.add_note(run.task_id, agent, note, self._clock())

    def _ended(self, run: TaskRun, job: JobSnapshot) -> TaskRun:
        record = job.run
        status = {
            JobState.COMPLETED: RunStatus.DONE,
            JobState.CANCELLED: RunStatus.CANCELLED,
        }.get(job.state, RunStatus.FAILED)
        served = record.model if record is not None else ""
        facts = self._models.facts(served) if served else None
        input_tokens = record.input_tokens if record is not None else 0
        output_tokens = record.output_tokens if record is not None else 0
        cost = facts.cost(input_tokens, output_tokens) if facts is not None else 0.0
        return replace(
            run,
            status=status,
            job_id=job.job_id,
            model=served or run.model,
            engine=record.engine if record is not None else "",
            weights_digest=facts.weights_digest if facts is not None else "",
            routing_report=dict(job.route.report),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=round(cost, 6),
            output=job.output,
            end_reason=job.end_reason,
            end_message=job.end_message,
            ended_at=job.ended_at or self._clock(),
            time_to_first_token=record.time_to_first_token if record is not None else None,
        )

    def _check_budget(self, budget: int, model: str, role: str) -> None:
        if budget < 0:
            raise InvalidArgument("context_budget", "must not be negative (0: the default)")
        facts = self._models.resolve(model, role)
        if budget and facts is not None and budget > facts.context_length:
            raise InvalidArgument(
                "context_budget",
                f"is {budget} tokens; {facts.name} takes {facts.context_length} in all",
                reason="BUDGET_TOO_LARGE",
                limit=str(facts.context_length),
            )

    async def _open_task(self, task_id: int) -> Task:
        task = await self.get_task(task_id)
        if task.status.is_closed:
            raise FailedPrecondition(f"task {task_id} is {task.status.value}", reason="TASK_CLOSED")
        if task.task_id in self._running or task.status is TaskStatus.RUNNING:
            raise FailedPrecondition(f"task {task_id} is running", reason="TASK_RUNNING")
        return task

    async def _require_project(self, project_id: str) -> Project:
        project = await self._store.get_project(check_project_id(project_id))
        if project is None:
            raise NotFound(
                f"no project {project_id!r}", reason="PROJECT_NOT_FOUND", metadata={"project_id": project_id}
            )
        return project


def _derived_changes(
    tasks: Sequence[Task], requires: Iterable[tuple[int, int]]
) -> list[tuple[int, TaskStatus, str]]:
    classification = classify(tasks, requires)
    changes = []
    for task in tasks:
        status = classification.statuses.get(task.task_id)
        if status is None:
            continue
        reason = classification.reasons.get(task.task_id, "")
        if status is not task.status or reason != task.status_reason:
            changes.append((task.task_id, status, reason))
    return changes


def _task_outcome(run: TaskRun) -> tuple[TaskStatus, str]:
    """The task's status after a run, and its reason (the run's end reason)."""
    if run.status is RunStatus.DONE:
        return TaskStatus.DONE, ""
    if run.status is RunStatus.CANCELLED:
        return TaskStatus.CANCELLED, run.end_reason or "CANCELLED"
    return TaskStatus.FAILED, run.end_reason or "FAILED"


def _schedule_key(task: Task) -> tuple[int, float, int]:
    return (task.priority, task.created_at, task.task_id)


def _depths(task_ids: Sequence[int], requires: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Each task's level: 0 for a task that requires nothing, else one more
    than the deepest task it requires."""
    needs: dict[int, list[int]] = {}
    for source, target in requires:
        needs.setdefault(source, []).append(target)
    depth: dict[int, int] = {}

    def level(task_id: int) -> int:
        stack = [task_id]
        while stack:
            current = stack[-1]
            pending = [n for n in needs.get(current, ()) if n not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[current] = 1 + max((depth[n] for n in needs.get(current, ())), default=-1)
        return depth[task_id]

    for task_id in task_ids:
        if task_id not in depth:
            level(task_id)
    return depth


def _produces_index(task: Task) -> bool:
    return task.labels.get(INDEX_LABEL) == "true"


def _with_system(messages: Sequence[ChatMessage], system_prompt: str) -> tuple[ChatMessage, ...]:
    """The conversation with the role's system prompt first: before its own
    system message's text when it has one, else as a new first message."""
    if messages and messages[0].role == "system":
        first = replace(messages[0], content=f"{system_prompt}\n\n{messages[0].content}")
        return (first, *messages[1:])
    return (ChatMessage("system", system_prompt), *messages)


def _with_last_user(messages: Sequence[ChatMessage], content: str) -> tuple[ChatMessage, ...]:
    """The conversation with its last user message's content replaced (by
    the rendered prompt: the message, then its context)."""
    out = list(messages)
    for index in range(len(out) - 1, -1, -1):
        if out[index].role == "user":
            out[index] = replace(out[index], content=content)
            break
    return tuple(out)


def check_project_id(project_id: str) -> str:
    if not _PROJECT_ID.fullmatch(project_id):
        raise InvalidArgument(
            "project_id",
            "must be 1-128 letters, digits, dots, colons, dashes or underscores, starting alphanumeric",
        )
    return project_id


def _check_task_id(task_id: int) -> int:
    if task_id <= 0:
        raise InvalidArgument("task_id", "must be a task id (a positive number)")
    return task_id


def _check_name(name: str) -> None:
    if not name.strip():
        raise InvalidArgument("name", "must not be empty or blank")
    if len(name) > 200:
        raise InvalidArgument("name", "must be at most 200 characters")
    check_text("name", name)


def _check_task_input(new: NewTask) -> None:
    """The task's input, model, role, labels and agent as SubmitJob would
    check them (a task run is a job), with the task's field names."""
    try:
        validate_submission(
            JobDraft(
                prompt=new.prompt,
                messages=new.messages,
                model=new.model,
                role=new.role,
                labels=new.labels,
                agent=new.agent,
                project_id=new.project_id,
            ),
            _TASK_LIMITS,
        )
    except InvalidArgument as err:
        field_name = err.field.removeprefix("spec.")
        message = err.message.split(": ", 1)[-1]
        raise InvalidArgument(field_name, message, reason=err.reason) from None


def _task_not_found(task_id: int) -> NotFound:
    return NotFound(f"no task {task_id}", reason="TASK_NOT_FOUND", metadata={"task_id": str(task_id)})

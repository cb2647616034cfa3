"""The ports: what the orchestrator needs from the world, as small protocols.

The adapters implement them over gRPC, Postgres and NATS; the unit tests
implement them with small fakes. Errors from the router, pool and memory
ports are ``hearth.errors`` exceptions carrying the callee's reason (e.g.
``ResourceExhausted`` with reason NO_CAPACITY); the worker port raises
:class:`WorkerError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from hearth.chat import ChatMessage, Tool, ToolCall, ToolCallDelta
from orchestratord.domain.bundles import TokenCount
from orchestratord.domain.context import ContextItem
from orchestratord.domain.events import WorkEvent
from orchestratord.domain.handoffs import HandoffRequest, HandoffSummary
from orchestratord.domain.jobs import JobEnd, JobEvent, JobSnapshot, JobState, RouteDecision
from orchestratord.domain.plans import Plan, PlanAttempt, PlanStatus
from orchestratord.domain.stats import StatsQuery, StatsReport
from orchestratord.domain.tasks import (
    ContextOverride,
    ContextSnapshot,
    Link,
    LinkKind,
    Project,
    Task,
    TaskNote,
    TaskRun,
    TaskStatus,
)

# --- router ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What routing looks at. The job's text is not among them: only the
    kinds of secrets found in it."""

    job_id: str
    model: str
    role: str
    #: Estimated tokens of the prompt (or conversation and tools) plus the
    #: memory context budget when the job asks for context.
    prompt_tokens: int
    max_tokens: int
    #: The job offers tools (only conformant targets may run it).
    needs_tools: bool = False
    paths: tuple[str, ...] = ()
    #: The declared class ("L0".."L3"), "" for the policy's default.
    data_class: str = ""
    project_id: str = ""
    agent: str = ""
    #: Kinds of secrets found in the job's text (hearth.runtime.find_secrets).
    secret_kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget held for one attempt on a priced target; ``reservation_id`` is
    empty when nothing was reserved."""

    reservation_id: str = ""
    amount: float = 0.0
    currency: str = ""


NO_RESERVATION = Reservation()


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """How one attempt of a job on one target ended, for the router: it
    settles the reservation with the real usage and feeds the target's
    circuit breaker."""

    job_id: str
    attempt: int
    target: str
    reservation_id: str
    #: True when the target served the job (completed, or ended by the client).
    success: bool
    #: For failures: the stable cause (ENGINE_ERROR, TIMEOUT, WORKER_LOST, ...).
    cause: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


class Router(Protocol):
    async def route(self, facts: RouteFacts) -> RouteDecision:
        """Decide the chain of targets for a job. Raises the router's error
        (NotFound MODEL_NOT_FOUND, InvalidArgument CONTEXT_TOO_LONG,
        PermissionDenied POLICY_DENIED, ResourceExhausted BUDGET_EXCEEDED or
        RATE_LIMITED with retry_after, FailedPrecondition NO_TOOL_CAPABLE_TARGET)."""
        ...

    async def reserve(
        self,
        job_id: str,
        attempt: int,
        target: str,
        project_id: str,
        agent: str,
        prompt_tokens: int,
        max_tokens: int,
    ) -> Reservation:
        """Hold the worst-case cost of an attempt on a priced target.
        Idempotent by (job_id, attempt). Raises ResourceExhausted
        (BUDGET_EXCEEDED) when a hard limit would be passed."""
        ...

    async def report_outcome(self, outcome: AttemptOutcome) -> None:
        """Settle or release the attempt's reservation and feed the breaker.
        Repeating a report changes nothing."""
        ...


# --- pool ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerLease:
    lease_id: str
    worker_id: str
    address: str
    model: str
    context_length: int


class Pool(Protocol):
    async def place(self, job_id: str, model: str, *, time_limit: float) -> WorkerLease:
        """A lease on a worker slot. Raises ResourceExhausted (NO_CAPACITY)
        when every worker is full, NotFound (MODEL_NOT_FOUND) when none
        serves the model."""
        ...

    async def release(self, lease_id: str) -> None:
        """Free a lease's slot; releasing twice is not an error."""
        ...


# --- worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    job_id: str
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    #: A conversation instead of a prompt (then ``prompt`` is empty).
    messages: tuple[ChatMessage, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: str = ""


@dataclass(frozen=True, slots=True)
class GenerationStarted:
    input_tokens: int


@dataclass(frozen=True, slots=True)
class TokenChunk:
    text: str
    token_count: int
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    #: STOP, LENGTH, TOOL_CALLS or ABORTED.
    finish_reason: str
    input_tokens: int
    output_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()


GenerationEvent = GenerationStarted | TokenChunk | GenerationFinished


class WorkerError(Exception):
    """A generation that did not finish. ``reason`` is the job's end reason:
    WORKER_LOST (the worker died or dropped the stream), WORKER_BUSY (the
    worker refused for lack of a slot; retryable after ``retry_after``),
    ENGINE_ERROR, or a stable reason the worker gave (CONTEXT_TOO_LONG,
    MODEL_NOT_FOUND)."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class Workers(Protocol):
    def generate(
        self, address: str, request: GenerationRequest, *, time_limit: float
    ) -> AsyncIterator[GenerationEvent]:
        """Stream one generation from the worker at ``address``: started,
        token chunks, finished. Cancelling the consumer cancels the call, which
        aborts the generation in the worker. Raises WorkerError."""
        ...

    async def abort(self, address: str, job_id: str) -> None:
        """Ask the worker to stop a job's generation; best effort."""
        ...

    async def engine_of(self, address: str) -> str:
        """The engine kind of the worker at ``address`` (cached)."""
        ...


# --- memory ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interaction:
    """A finished job's prompt and answer, to be kept as a raw_interaction
    memory in the job's scope, with who produced it (so compaction can find
    handoffs between roles)."""

    text: str
    project_id: str
    task_id: str
    agent: str
    role: str
    #: The job id.
    source: str


class Memory(Protocol):
    async def context(
        self, text: str, project_id: str, task_id: str, token_budget: int, top_k: int, *, time_limit: float
    ) -> list[ContextItem]:
        """memoryd's GetContext: the items to put before the prompt, in the
        order they go in, together within ``token_budget`` tokens (``top_k``
        0: memoryd's default number of retrieved memories)."""
        ...

    async def get(self, project_id: str, memory_id: str, *, time_limit: float) -> str:
        """A memory's text (pinned into a task's context). Raises NotFound
        (MEMORY_NOT_FOUND) when the project holds no such memory."""
        ...

    async def store_interaction(
        self, interaction: Interaction, request_id: str, *, time_limit: float
    ) -> None:
        """Store a raw_interaction memory; idempotent by request_id."""
        ...


# --- persistence -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """A job left QUEUED by a previous process, with its log."""

    snapshot: JobSnapshot
    events: list[JobEvent]


@dataclass(frozen=True, slots=True)
class Recovery:
    #: The terminal events written for jobs left RUNNING (ORCHESTRATOR_RESTARTED).
    failed: list[JobEvent]
    #: Jobs left QUEUED, oldest first.
    queued: list[RecoveredJob]


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobSnapshot]
    #: (created_at in epoch microseconds, job id) of the last job, when more may follow.
    next_after: tuple[int, str] | None


class JobStore(Protocol):
    """The system of record. Every method is one transaction."""

    async def insert_job(self, job: JobSnapshot, queued: JobEvent) -> bool:
        """Insert the job row and its first event. False (nothing written)
        when a job with the same request_id exists."""
        ...

    async def get_job(self, job_id: str) -> JobSnapshot | None: ...

    async def find_by_request_id(self, request_id: str) -> JobSnapshot | None: ...

    async def list_jobs(
        self, page_size: int, after: tuple[int, str] | None, state: JobState | None
    ) -> JobPage:
        """Newest first; ``after`` continues from a previous page."""
        ...

    async def read_events(self, job_id: str, after_sequence: int) -> list[JobEvent]: ...

    async def write_batch(self, events: Sequence[JobEvent], ends: Sequence[JobEnd]) -> None:
        """In one transaction: append ``events`` (a started event also moves
        its job to RUNNING), then for each end its terminal event, the final
        job row and the run record. Idempotent: rewriting a batch that was
        already written changes nothing."""
        ...

    async def recover(self, now: float) -> Recovery:
        """Fail jobs left RUNNING (ORCHESTRATOR_RESTARTED, a terminal event
        appended) and return jobs left QUEUED, oldest first."""
        ...


# --- events and metrics ----------------------------------------------------


class EventPublisher(Protocol):
    """Copies of lifecycle events for other parties. Never blocks and never
    fails a job: publishing happens in the background."""

    def job_event(self, event: JobEvent) -> None: ...

    def cancel_requested(self, job_id: str, reason: str) -> None: ...


class JobMetrics(Protocol):
    def job_submitted(self, priority: str) -> None: ...

    def job_ended(self, state: str, reason: str) -> None: ...

    def queue_depth(self, band: str, depth: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def tokens_relayed(self, count: int) -> None: ...


# --- models ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the orchestrator knows of a model from the models config."""

    name: str
    context_length: int
    price_input_per_1k: float = 0.0
    price_output_per_1k: float = 0.0
    #: The catalog's revision of the weights ("" when unknown).
    weights_digest: str = ""

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """What a job's usage costs at this model's prices."""
        return input_tokens / 1000 * self.price_input_per_1k + output_tokens / 1000 * self.price_output_per_1k

    #: It runs off this machine (a cloud API): a task failing on it is not escalated.
    remote: bool = False


class ModelCatalog(Protocol):
    def facts(self, model: str) -> ModelFacts | None:
        """The model called ``model``; None when it is not configured."""
        ...

    def resolve(self, model: str, role: str) -> ModelFacts | None:
        """The model a job naming ``model`` and ``role`` would try first: the
        model itself, else the role's first model (else the default role's)."""
        ...

    def counter(self, facts: ModelFacts | None) -> TokenCount:
        """How to count tokens for that model: its own tokenizer when it is
        local, else the estimate (the TokenCount says which)."""
        ...


# --- tasks -------------------------------------------------------------------


class TaskStore(Protocol):
    """Projects, tasks, links, notes, context overrides, snapshots and runs.

    Nothing is ever deleted but links (``delete_link``); a task's history is
    its notes, its status changes (updated_at/by, closed_at/by) and its runs.
    """

    async def get_project(self, project_id: str) -> Project | None:
        """The project with its INDEX and its tasks counted by status;
        None when no task or INDEX was ever written for it."""
        ...

    async def set_project_index(self, project_id: str, text: str, *, at: float, by: str) -> Project:
        """Replace the project's INDEX document (index_updated_at/by set to
        ``at``/``by``) and return the project. Creates the project when it
        is new (created_at/by also ``at``/``by``): a person may write the
        INDEX before the first task."""
        ...

    async def create_task(self, task: Task) -> Task:
        """Insert a task (``task_id`` ignored) and return it with its id;
        creates the project row when it is new."""
        ...

    async def get_task(self, task_id: int) -> Task | None: ...

    async def list_tasks(self, project_id: str, *, status: TaskStatus | None = None) -> list[Task]:
        """A project's tasks ordered by (priority, created_at, task_id)."""
        ...

    async def update_task(self, task: Task) -> Task:
        """Write a task's mutable fields (status, reasons, approval, budget,
        priority, labels, updated/closed times and agents)."""
        ...

    async def set_statuses(
        self, changes: Sequence[tuple[int, TaskStatus, str]], *, at: float, by: str
    ) -> None:
        """Set (task_id, status, status_reason) for many tasks in one transaction."""
        ...

    async def add_note(self, task_id: int, agent: str, text: str, at: float) -> TaskNote: ...

    async def list_notes(self, task_id: int) -> list[TaskNote]: ...

    async def add_link(self, link: Link) -> bool:
        """Insert a link; False when (from, to, kind) already exists."""
        ...

    async def delete_link(self, from_task: int, to_task: int, kind: LinkKind, *, by: str = "") -> bool: ...

    async def list_links(self, task_id: int) -> tuple[list[Link], list[Link]]:
        """(outgoing, incoming) links of a task."""
        ...

    async def project_links(self, project_id: str, kind: LinkKind | None = None) -> list[Link]: ...

    async def set_override(self, override: ContextOverride) -> None: ...

    async def get_override(self, task_id: int) -> ContextOverride | None: ...

    async def put_snapshot(self, snapshot: ContextSnapshot) -> bool:
        """Store a snapshot unless its hash is stored; True when new."""
        ...

    async def get_snapshot(self, context_hash: str) -> ContextSnapshot | None: ...

    async def create_run(self, run: TaskRun) -> TaskRun:
        """Insert a run (``run_id`` ignored) and return it with its id."""
        ...

    async def finish_run(self, run: TaskRun) -> None:
        """Write a run's end: status, job, model, engine, usage, output, times."""
        ...

    async def start_run(
        self, snapshot: ContextSnapshot | None, run: TaskRun, *, by: str, mark_running: bool = True
    ) -> TaskRun:
        """In one transaction: store the snapshot unless stored, insert the
        run (``run_id`` ignored) and, with ``mark_running``, set its task
        RUNNING; the run with its id."""
        ...

    async def end_runs(
        self,
        ends: Sequence[tuple[TaskRun, TaskStatus, str]],
        changes: Sequence[tuple[int, TaskStatus, str]] = (),
        *,
        at: float,
        by: str,
    ) -> None:
        """In one transaction: each run's end (as finish_run) with its task's
        status and reason, then the other tasks' status ``changes``."""
        ...

    async def project_overrides(self, project_id: str) -> dict[int, ContextOverride]:
        """The context overrides of a project's tasks, by task id."""
        ...

    async def latest_outputs(self, task_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """(name, output) of the latest done run of each task that has one."""
        ...

    async def get_run(self, run_id: int) -> TaskRun | None: ...

    async def list_runs(self, *, project_id: str = "", task_id: int = 0, limit: int = 100) -> list[TaskRun]:
        """Runs, newest first, of a project or a task."""
        ...

    async def latest_done_runs(self, task_ids: Sequence[int]) -> dict[int, TaskRun]:
        """The latest done run of each task that has one."""
        ...

    # plans

    async def create_plan(self, plan: Plan) -> Plan:
        """Insert a plan (``plan_id`` ignored), creating its project when new."""
        ...

    async def update_plan(self, plan: Plan, kind: str) -> Plan:
        """Write a plan's fields (all but its id); its event is ``plan.<kind>``."""
        ...

    async def add_plan_attempt(self, attempt: PlanAttempt, project_id: str) -> PlanAttempt: ...

    async def get_plan(self, plan_id: int) -> Plan | None:
        """The plan with its attempts."""
        ...

    async def list_plans(self, project_id: str, status: PlanStatus | None = None) -> list[Plan]:
        """A project's plans, newest first, with their attempts."""
        ...

    async def seed_plan(
        self,
        plan: Plan,
        new_tasks: Sequence[tuple[str, Task]],
        requires: Sequence[tuple[str, str]],
        *,
        index_key: str = "",
    ) -> tuple[Plan, list[Task], list[Link]]:
        """In one transaction: the plan's tasks by key, their requires links
        (from key, to key) and the plan as given, approved, with its task ids."""
        ...

    # the event log and reports

    async def read_events(
        self, *, since: int = 0, limit: int = 1000, project_id: str = ""
    ) -> list[WorkEvent]:
        """Work events with a sequence above ``since``, ascending."""
        ...

    async def stats(self, query: StatsQuery) -> StatsReport:
        """Usage from the run records and plan attempts, never their texts."""
        ...


# --- handoffs and role routes ---------------------------------------------------


class Handoffs(Protocol):
    """memoryd's handoff summaries (see :mod:`orchestratord.domain.handoffs`)."""

    async def find(self, request: HandoffRequest, *, time_limit: float) -> HandoffSummary | None:
        """The handoff summary already written for this run handed over, if any."""
        ...

    async def make(self, request: HandoffRequest, *, time_limit: float) -> HandoffSummary:
        """The handoff summary, written (memoryd's Compact of the handoff's
        scope) unless it exists. Raises hearth errors from memoryd; Aborted
        (the summary job's reason) when the summary job failed."""
        ...


@dataclass(frozen=True, slots=True)
class RoleRoute:
    """Where a job of a role would run now (the router's dry-run answer)."""

    chain: tuple[str, ...] = ()
    chosen: str = ""
    #: The chosen candidate's stable reason (ROLE_DEFAULT, ROLE_FALLBACK, ...) and detail.
    reason: str = ""
    detail: str = ""
    matched_rules: tuple[str, ...] = ()
    #: Set when the router refused: its reason and message.
    error_reason: str = ""
    error_message: str = ""


class RoleRoutes(Protocol):
    async def route(self, role: str, prompt_tokens: int, max_tokens: int) -> RoleRoute:
        """The router's dry-run decision for a job of ``role`` (nothing is
        counted); a refusal is returned in the answer, not raised."""
        ...

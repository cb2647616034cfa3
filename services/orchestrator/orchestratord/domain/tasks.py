"""Tasks: the unit of work people think in, and the dependency graph between them.

A task belongs to one project and carries an input (a prompt or a
conversation), a priority, an optional role and model, labels, and a status.
Tasks are linked: ``requires`` links form a DAG (a cycle is refused), the
other kinds (refers, duplicates, relates_to) only inform context assembly.

Statuses::

    pending ──> ready ──> running ──> done | failed | cancelled
       │          │
       └──> blocked (a required task failed or was cancelled, or a person
                     held the task) ──> ready again once released
    waiting_approval: the task needs a person's approval of its context
                      before it may run; approval makes it pending/ready.

``pending``, ``ready`` and ``blocked`` (unless held by a person) are derived
from the graph: :func:`classify` computes them from the statuses of the tasks
a task requires. ``running``, ``done``, ``failed`` and ``cancelled`` are set
by runs and people.

A lower ``priority`` number runs first (0 before 1), the way P0 outranks P1.

This module is pure: no I/O, no clocks (times are epoch seconds, passed in).
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hearth.chat import ChatMessage


class TaskStatus(enum.Enum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    BLOCKED = "blocked"
    FAILED = "failed"
    CANCELLED = "cancelled"
    WAITING_APPROVAL = "waiting_approval"

    @property
    def is_closed(self) -> bool:
        """Done, failed or cancelled: the task will not run again by itself."""
        return self in _CLOSED


_CLOSED = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})


class LinkKind(enum.Enum):
    #: ``from`` needs ``to`` done before it may run; its output is context.
    REQUIRES = "requires"
    #: ``from`` refers to ``to``: ``to``'s output is lower-priority context.
    REFERS = "refers"
    DUPLICATES = "duplicates"
    RELATES_TO = "relates_to"


@dataclass(frozen=True, slots=True)
class TaskInput:
    """What a task asks: a prompt, or a conversation (then prompt is "")."""

    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()

    @property
    def text(self) -> str:
        """The text the task is about: the prompt, or the last user message."""
        if self.prompt:
            return self.prompt
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(frozen=True, slots=True)
class Task:
    task_id: int
    project_id: str
    name: str
    status: TaskStatus
    input: TaskInput
    priority: int = 0
    role: str = ""
    model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Runs only after a person approved its context (ApproveContext).
    requires_approval: bool = False
    #: True once a person approved its context.
    approved: bool = False
    #: Most tokens of context; 0 for the orchestrator's default.
    context_budget: int = 0
    #: Why the task is blocked or failed, in words a person can act on.
    status_reason: str = ""
    #: Set while a person holds the task (``hearth tasks block``).
    hold_reason: str = ""
    created_at: float = 0.0
    created_by: str = ""
    updated_at: float = 0.0
    updated_by: str = ""
    #: When and by whom the task was closed (done, failed, cancelled).
    closed_at: float | None = None
    closed_by: str = ""


@dataclass(frozen=True, slots=True)
class TaskNote:
    """A note on a task; notes are only ever appended."""

    note_id: int
    task_id: int
    agent: str
    text: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Link:
    """``from_task`` --kind--> ``to_task``; (from, to, kind) is unique."""

    from_task: int
    to_task: int
    kind: LinkKind
    created_at: float = 0.0
    created_by: str = ""


@dataclass(frozen=True, slots=True)
class Classification:
    """The derived status of each open task, and why blocked ones wait."""

    #: task id -> PENDING, READY or BLOCKED (only for tasks whose status is
    #: derived: not running, closed, held, or waiting for approval).
    statuses: Mapping[int, TaskStatus]
    #: task id -> actionable text ("task 12 waits for 9, which failed: CONTEXT_TOO_LONG").
    reasons: Mapping[int, str]


def find_cycle(requires: Iterable[tuple[int, int]], new: tuple[int, int]) -> list[int] | None:
    """The cycle that adding the ``requires`` edge ``new`` (from, to) would
    close, as task ids in order starting with ``new[0]`` and ending where
    it started (``[3, 5, 7, 3]``: 3 requires 5, 5 requires 7, 7 requires 3);
    None when the edge keeps the graph acyclic. A self-link is the cycle
    ``[a, a]``.

    The search is breadth-first from ``new[1]`` over the existing edges,
    neighbours in ascending id order, so the cycle reported is a shortest
    one and the same graph always reports the same cycle. ``new`` itself may
    already be among ``requires``; it is not needed to close the cycle."""
    start, goal = new[1], new[0]
    if start == goal:
        return [goal, goal]
    graph = _adjacency(requires)
    # parent[x] is the task from which the search first reached x: the path
    # back from goal to start is read off it.
    parent: dict[int, int] = {start: start}
    frontier = deque([start])
    while frontier:
        node = frontier.popleft()
        for nxt in graph.get(node, ()):
            if nxt in parent:
                continue
            parent[nxt] = node
            if nxt == goal:
                path = [goal]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                return [goal, *path]
            frontier.append(nxt)
    return None


def topological_order(
    task_ids: Iterable[int],
    requires: Iterable[tuple[int, int]],
    key: Mapping[int, tuple[Any, ...]],
) -> list[int]:
    """Tasks in an order where every task comes after the tasks it requires;
    ties broken by ``key[task_id]`` (e.g. (priority, created_at, task_id)),
    so the order is deterministic.

    Kahn's algorithm over a heap: of the tasks whose requirements are all
    placed, the one with the smallest ``(key[id], id)`` goes next, so equal
    keys fall back to the lower id. Repeated ids and repeated edges count
    once; edges to or from ids outside ``task_ids`` are ignored (those tasks
    are placed elsewhere or gone).

    Raises:
        KeyError: ``key`` has no entry for one of ``task_ids``.
        ValueError: the ``requires`` edges among ``task_ids`` form a cycle;
            the message names every task that could not be placed (the
            cycle and the tasks that wait on it).
    """
    ids = set(task_ids)
    missing = sorted(i for i in ids if i not in key)
    if missing:
        raise KeyError(f"no ordering key for tasks {_id_list(missing)}")
    # waiting[t]: how many of t's requirements are not placed yet;
    # needed_by[t]: the tasks that require t.
    waiting = dict.fromkeys(ids, 0)
    needed_by: dict[int, list[int]] = {}
    for frm, to in set(requires):
        if frm in ids and to in ids:
            waiting[frm] += 1
            needed_by.setdefault(to, []).append(frm)
    heap = [(key[t], t) for t, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, task_id = heapq.heappop(heap)
        order.append(task_id)
        for dependent in needed_by.get(task_id, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(heap, (key[dependent], dependent))
    if len(order) < len(ids):
        left = sorted(ids.difference(order))
        raise ValueError(f"requires links form a cycle; tasks left unordered: {_id_list(left)}")
    return order


#: Statuses :func:`classify` derives; the others are set by runs and people.
_DERIVED = frozenset({TaskStatus.PENDING, TaskStatus.READY, TaskStatus.BLOCKED})


def classify(tasks: Sequence[Task], requires: Iterable[tuple[int, int]]) -> Classification:
    """Derive pending / ready / blocked for the open tasks of a project.

    A task is ready when every task it requires is done; blocked when one of
    them failed, was cancelled or is itself blocked (the reason names the
    chain down to the failure and its reason); pending otherwise.

    Which tasks get what:

    - A task is *derived* when its status is pending, ready or blocked and
      no person holds it (``hold_reason == ""``). Only derived tasks appear
      in ``statuses``: READY when every task it requires is DONE (so a task
      that requires nothing is READY), BLOCKED when any required task failed,
      was cancelled, is held, or is itself derived BLOCKED (transitively),
      PENDING otherwise (it waits for tasks that are pending, ready, running
      or waiting for approval).
    - A *held* task (pending, ready or blocked with a ``hold_reason``) stays
      blocked until a person releases it. It is left out of ``statuses``
      (nothing here may change it) but gets the reason
      ``"held by <updated_by>: <hold_reason>"`` ("a person" when
      ``updated_by`` is empty), and it blocks the tasks that require it.
      A hold_reason on a task in any other status is ignored.
    - Running, waiting-for-approval and closed tasks are neither in
      ``statuses`` nor in ``reasons``.
    - A ``requires`` edge to an id not among ``tasks`` counts as a task not
      done: the requiring task is PENDING (unless something else blocks
      it). Edges from unknown ids are ignored.

    ``reasons`` holds one line per blocked or held task, naming the chain to
    the root cause: ``"task 14 waits for 12, which waits for 9, which failed:
    CONTEXT_TOO_LONG"`` (the failed task's ``status_reason``; just "which
    failed" when it has none), ``"..., which was cancelled"`` (with
    ``": <status_reason>"`` when there is one), ``"..., which is held:
    <hold_reason>"``. When several required tasks block, the chain goes
    through the lowest id. On a requires cycle (which :func:`find_cycle`
    keeps out) the chain skips tasks it already named, and when nothing else
    is left it ends with ``"..., which waits for 3 (a requires cycle)"``.
    """
    by_id = {t.task_id: t for t in tasks}
    required: dict[int, set[int]] = {}
    for frm, to in requires:
        if frm in by_id:
            required.setdefault(frm, set()).add(to)

    held = {i for i, t in by_id.items() if t.status in _DERIVED and t.hold_reason}
    derived = {i for i, t in by_id.items() if t.status in _DERIVED and not t.hold_reason}
    roots = held | {i for i, t in by_id.items() if t.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)}

    # Blocking spreads from the roots to every derived task that requires a
    # blocked one, directly or not: a least fixpoint, so it is well defined
    # even on a (refused, but possibly stored) cycle.
    needed_by: dict[int, list[int]] = {}
    for frm, tos in required.items():
        for to in tos:
            needed_by.setdefault(to, []).append(frm)
    blocked: set[int] = set()
    frontier = deque(sorted(roots))
    while frontier:
        node = frontier.popleft()
        for dependent in needed_by.get(node, ()):
            if dependent in derived and dependent not in blocked:
                blocked.add(dependent)
                frontier.append(dependent)
    blocking = roots | blocked

    statuses: dict[int, TaskStatus] = {}
    for task_id in derived:
        needs = required.get(task_id, set())
        if task_id in blocked:
            statuses[task_id] = TaskStatus.BLOCKED
        elif all(n in by_id and by_id[n].status is TaskStatus.DONE for n in needs):
            statuses[task_id] = TaskStatus.READY
        else:
            statuses[task_id] = TaskStatus.PENDING

    reasons: dict[int, str] = {}
    for task_id in held:
        task = by_id[task_id]
        reasons[task_id] = f"held by {task.updated_by or 'a person'}: {task.hold_reason}"
    for task_id in blocked:
        reasons[task_id] = _blocked_reason(task_id, by_id, required, blocking)
    return Classification(
        statuses=dict(sorted(statuses.items())),
        reasons=dict(sorted(reasons.items())),
    )


def _blocked_reason(
    task_id: int,
    by_id: Mapping[int, Task],
    required: Mapping[int, set[int]],
    blocking: set[int],
) -> str:
    """The chain from a blocked task down to what blocks it, through the
    lowest blocking id at each step."""
    text = f"task {task_id} waits for "
    seen = {task_id}
    node = task_id
    while True:
        # Every task on the chain is blocked, so it requires a blocking one;
        # outside a cycle none of them is on the chain already.
        blockers = sorted(n for n in required[node] if n in blocking)
        nxt = next((n for n in blockers if n not in seen), None)
        if nxt is None:
            return f"{text}{blockers[0]} (a requires cycle)"
        seen.add(nxt)
        task = by_id[nxt]
        if task.status is TaskStatus.FAILED:
            return f"{text}{nxt}, which failed{_colon(task.status_reason)}"
        if task.status is TaskStatus.CANCELLED:
            return f"{text}{nxt}, which was cancelled{_colon(task.status_reason)}"
        if task.hold_reason:
            return f"{text}{nxt}, which is held: {task.hold_reason}"
        text = f"{text}{nxt}, which waits for "
        node = nxt


def _colon(detail: str) -> str:
    return f": {detail}" if detail else ""


def _adjacency(requires: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """from -> the tasks it requires, ascending and without repeats."""
    graph: dict[int, set[int]] = {}
    for frm, to in requires:
        graph.setdefault(frm, set()).add(to)
    return {frm: sorted(tos) for frm, tos in graph.items()}


def _id_list(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids)


@dataclass(frozen=True, slots=True)
class ContextOverride:
    """A person's say over a task's context, used by every later run."""

    task_id: int
    #: Sources to add as PINNED items: "task:<id>" (that task's output) or
    #: "memory:<uuid>".
    pins: tuple[str, ...] = ()
    #: Sources to leave out, whatever their tier.
    excludes: tuple[str, ...] = ()
    set_by: str = ""
    set_at: float = 0.0


class RunStatus(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ContextSnapshot:
    """A bundle as stored, by content hash: the same bundle is stored once."""

    context_hash: str
    #: The bundle's items as JSON ({source, tier, kind, title, fate, tokens, why, text}).
    items: tuple[Mapping[str, object], ...]
    budget: int
    counter: str
    exact: bool
    #: The exact prompt sent to the model.
    prompt: str


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One execution of a task: everything needed to reproduce it."""

    run_id: int
    task_id: int
    project_id: str
    status: RunStatus
    context_hash: str
    #: The Hearth job that ran it ("" before submission).
    job_id: str = ""
    #: The run this one repeats (RerunTask), 0 for none.
    rerun_of: int = 0
    #: The model asked for ("" for the router's choice) and what served it.
    model: str = ""
    engine: str = ""
    #: The catalog digest of the weights, where known.
    weights_digest: str = ""
    #: max_tokens, temperature, seed.
    sampling: Mapping[str, object] = field(default_factory=dict)
    routing_report: Mapping[str, object] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    output: str = ""
    end_reason: str = ""
    end_message: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    started_by: str = ""
    #: The task's role when it ran, and the system prompt it sent ("" for none).
    role: str = ""
    system_prompt: str = ""
    #: The failed run this one escalates (retried on the next target of the
    #: role's chain), 0 for none; and how: {from_target, to_target, cause, message}.
    escalated_from: int = 0
    escalation: Mapping[str, object] = field(default_factory=dict)
    #: Seconds from the job's start to its first token (None: no token came).
    time_to_first_token: float | None = None


@dataclass(frozen=True, slots=True)
class Project:
    """The scope of tasks, and its INDEX document: what a person wrote about
    the project as a whole (goals, conventions, where things are)."""

    project_id: str
    index_document: str = ""
    created_at: float = 0.0
    created_by: str = ""
    #: When and by whom the INDEX was last written (None: never).
    index_updated_at: float | None = None
    index_updated_by: str = ""
    #: Tasks by status value ("pending": 3, ...); a status no task has is absent.
    task_counts: Mapping[str, int] = field(default_factory=dict)

"""Plans: a goal broken into tasks by the manager role, approved by a person.

ProposePlan submits a job to the manager role; its answer must be one JSON
object that matches :func:`plan_schema` (tasks with keys, names, roles,
prompts and the keys they require) and passes the checks JSON Schema cannot
express (unique keys, requires naming tasks of the plan, no cycle, at most
one task producing the INDEX, and that one requiring nothing). An invalid
answer is sent back with the errors, a bounded number of times; each attempt
is kept with its errors, so a person sees what went wrong.

A valid plan is a *draft*. A person may edit it (the whole draft is replaced,
validated the same way), approve it (its tasks and requires links are
created in one transaction) or reject it (the draft stays, with the reason).

A task of the plan may produce the project's INDEX document (conventions,
layout, decisions): on approval every task of the plan that requires nothing
else is made to require it, so it runs first, and once it is done its output
becomes the INDEX that every later bundle includes first.

This module is pure: no I/O, no clocks.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from hearth.chat import ChatMessage
from orchestratord.domain.tasks import find_cycle

#: Most tasks in one plan.
MAX_PLAN_TASKS = 50
#: Most characters of a task's prompt in a plan.
MAX_PROMPT_CHARS = 20_000
MAX_GOAL_CHARS = 20_000
#: Attempts of a proposal when the request says 0, and the most it may ask.
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 5
#: Errors sent back to the manager (and kept) per attempt.
MAX_ERRORS = 20
#: Labels a seeded task carries.
PLAN_LABEL = "hearth.plan"
PLAN_KEY_LABEL = "hearth.plan_task"
INDEX_LABEL = "hearth.produces_index"

_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PlanStatus(enum.Enum):
    #: The manager is at work (ProposePlan has not returned).
    PROPOSING = "proposing"
    #: A valid plan waiting for a person.
    DRAFT = "draft"
    #: Approved: its tasks and links exist.
    APPROVED = "approved"
    #: Rejected by a person; the draft is kept with the reason.
    REJECTED = "rejected"
    #: Every attempt gave an invalid plan (or its job failed).
    FAILED = "failed"


class AttemptStatus(enum.Enum):
    VALID = "valid"
    #: The answer was not a valid plan (see the errors).
    INVALID = "invalid"
    #: The job did not complete.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PlanTask:
    """One task of a plan, before it exists."""

    #: Unique in the plan; what ``requires`` names.
    key: str
    name: str
    role: str
    prompt: str
    requires: tuple[str, ...] = ()
    priority: int = 0
    #: Its output becomes the project's INDEX document.
    produces_index: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "name": self.name, "role": self.role, "prompt": self.prompt}
        if self.requires:
            data["requires"] = list(self.requires)
        if self.priority:
            data["priority"] = self.priority
        if self.produces_index:
            data["produces_index"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanTask:
        return cls(
            key=str(data["key"]),
            name=str(data["name"]),
            role=str(data["role"]),
            prompt=str(data["prompt"]),
            requires=tuple(str(k) for k in data.get("requires") or ()),
            priority=int(data.get("priority", 0)),
            produces_index=bool(data.get("produces_index", False)),
        )


@dataclass(frozen=True, slots=True)
class PlanDraft:
    tasks: tuple[PlanTask, ...] = ()
    #: The manager's one-paragraph summary of the plan.
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tasks": [t.to_json() for t in self.tasks]}
        if self.summary:
            data["summary"] = self.summary
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanDraft:
        return cls(
            tasks=tuple(PlanTask.from_json(t) for t in data.get("tasks") or ()),
            summary=str(data.get("summary", "")),
        )

    def index_task(self) -> PlanTask | None:
        return next((t for t in self.tasks if t.produces_index), None)


@dataclass(frozen=True, slots=True)
class PlanAttempt:
    """One job of a proposal and what came of it."""

    plan_id: int
    attempt: int
    status: AttemptStatus
    job_id: str = ""
    model: str = ""
    engine: str = ""
    role: str = "manager"
    #: The manager's answer as it came (a rejected one included).
    output: str = ""
    #: Why the answer is not a valid plan, or why the job failed.
    errors: tuple[str, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    time_to_first_token: float | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    agent: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: int
    project_id: str
    goal: str
    status: PlanStatus
    draft: PlanDraft = field(default_factory=PlanDraft)
    #: Bumped by every edit; approve and edit may name the revision they saw.
    revision: int = 0
    #: Why it was rejected, or why the proposal failed.
    reason: str = ""
    #: The model asked for ("" for the manager role's choice).
    model: str = ""
    created_at: float = 0.0
    created_by: str = ""
    updated_at: float = 0.0
    updated_by: str = ""
    #: When and by whom it was approved or rejected.
    decided_at: float | None = None
    decided_by: str = ""
    #: Key -> task id, once approved.
    task_ids: Mapping[str, int] = field(default_factory=dict)
    #: The task that produces the INDEX (0: none).
    index_task_id: int = 0
    attempts: tuple[PlanAttempt, ...] = ()


def plan_schema(roles: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a plan whose tasks name one of ``roles``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "summary": {"type": "string", "maxLength": 4000},
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PLAN_TASKS,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["key", "name", "role", "prompt"],
                    "properties": {
                        "key": {"type": "string", "pattern": _KEY},
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "role": {"type": "string", "enum": sorted(roles)},
                        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
                        "requires": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                        "priority": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
                        "produces_index": {"type": "boolean"},
                    },
                },
            },
        },
    }


def _path(parts: Sequence[Any]) -> str:
    """``["tasks", 2, "role"]`` -> ``tasks[2].role`` (``$`` for the whole answer)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


def validate_plan(data: Any, roles: Sequence[str]) -> tuple[PlanDraft | None, list[str]]:
    """A parsed answer as a draft, or the errors that make it no plan.

    Each error is ``"<path>: <what is wrong>"`` (``tasks[2].requires[0]: 'x'
    is not the key of a task of the plan``), sorted by path, at most
    :data:`MAX_ERRORS`. Schema errors come first; the graph is checked only
    when the schema holds."""
    validator = Draft202012Validator(plan_schema(roles))
    schema_errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if schema_errors:
        errors = [f"{_path(list(e.absolute_path))}: {e.message}" for e in schema_errors]
        return None, errors[:MAX_ERRORS]
    draft = PlanDraft.from_json(data)
    errors = check_graph(draft)
    return (None, errors[:MAX_ERRORS]) if errors else (draft, [])


def check_graph(draft: PlanDraft) -> list[str]:
    """What the schema cannot say: unique keys, requires naming other tasks
    of the plan, no cycle, one INDEX task at most, requiring nothing."""
    errors: list[str] = []
    first: dict[str, int] = {}
    for index, task in enumerate(draft.tasks):
        if task.key in first:
            errors.append(f"tasks[{index}].key: {task.key!r} is the key of tasks[{first[task.key]}] too")
        else:
            first[task.key] = index
        if not task.name.strip():
            errors.append(f"tasks[{index}].name: must not be blank")
        if not task.prompt.strip():
            errors.append(f"tasks[{index}].prompt: must not be blank")
    for index, task in enumerate(draft.tasks):
        for position, key in enumerate(task.requires):
            where = f"tasks[{index}].requires[{position}]"
            if key == task.key:
                errors.append(f"{where}: a task cannot require itself")
            elif key not in first:
                errors.append(f"{where}: {key!r} is not the key of a task of the plan")
    producers = [i for i, t in enumerate(draft.tasks) if t.produces_index]
    for index in producers[1:]:
        errors.append(
            f"tasks[{index}].produces_index: only one task may produce the INDEX (tasks[{producers[0]}] does)"
        )
    for index in producers[:1]:
        if draft.tasks[index].requires:
            errors.append(
                f"tasks[{index}].requires: the task that produces the INDEX runs first, requiring nothing"
            )
    if errors:
        return errors
    # A cycle: add the edges one by one, as CreateLink would, and report the first that closes one.
    number = {t.key: i for i, t in enumerate(draft.tasks)}
    edges: list[tuple[int, int]] = []
    for index, task in enumerate(draft.tasks):
        for position, key in enumerate(task.requires):
            edge = (index, number[key])
            cycle = find_cycle(edges, edge)
            if cycle is not None:
                keys = " -> ".join(draft.tasks[i].key for i in cycle)
                errors.append(
                    f"tasks[{index}].requires[{position}]: closes a cycle: {keys} (each requires the next)"
                )
                return errors
            edges.append(edge)
    return errors


def parse_answer(text: str, roles: Sequence[str]) -> tuple[PlanDraft | None, list[str]]:
    """The manager's answer as a draft, or why it is none. The JSON object may
    stand alone, in a ```json fence, or amid prose (the first ``{`` to the
    last ``}``)."""
    body = text.strip()
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1).strip()
    elif not body.startswith("{"):
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end < start:
            return None, ["$: the answer holds no JSON object"]
        body = body[start : end + 1]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        return None, [f"$: the answer is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"]
    return validate_plan(data, roles)


@dataclass(frozen=True, slots=True)
class RoleLine:
    """A role as the manager's prompt lists it."""

    name: str
    description: str


def proposal_messages(
    goal: str,
    project_id: str,
    index_document: str,
    roles: Sequence[RoleLine],
    system_prompt: str,
) -> tuple[ChatMessage, ...]:
    """The conversation of a proposal's first attempt: the manager role's
    system prompt, then the request with the roles, the INDEX (when there is
    one) and the schema. Deterministic: equal inputs, equal bytes."""
    names = [r.name for r in roles]
    lines = [
        "Break this goal into a plan of small tasks for the agents below.",
        "",
        f"Goal: {goal}",
        "",
        f"Project: {project_id}",
    ]
    if index_document.strip():
        lines += ["", "Project INDEX:", index_document.strip()]
    lines += ["", "Agents (role: what it does):"]
    lines += [f"- {r.name}: {r.description or 'no description'}" for r in roles]
    lines += [
        "",
        "Answer with one JSON object only, no prose, that matches this JSON schema:",
        json.dumps(plan_schema(names), sort_keys=True, separators=(",", ":")),
        "",
        'Rules: every task names one role; "requires" lists the keys of the tasks that must be done '
        'before it (no cycles); at most one task may set "produces_index": true: it requires nothing, '
        "runs first, and its answer becomes the project's INDEX document (conventions, layout, "
        "decisions) that every later task sees.",
    ]
    messages = [ChatMessage("user", "\n".join(lines))]
    if system_prompt:
        messages.insert(0, ChatMessage("system", system_prompt))
    return tuple(messages)


def retry_messages(
    previous: Sequence[ChatMessage], answer: str, errors: Sequence[str]
) -> tuple[ChatMessage, ...]:
    """The conversation of the next attempt: the last one, its answer, and
    the errors that made it no plan."""
    listed = "\n".join(f"- {e}" for e in errors)
    correction = (
        f"Your answer is not a valid plan:\n{listed}\n\nAnswer again with the corrected JSON object only."
    )
    return (*previous, ChatMessage("assistant", answer), ChatMessage("user", correction))

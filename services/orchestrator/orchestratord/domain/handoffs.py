"""Handoffs: when work passes from one role to another along a ``requires``
link (the coder's task is done, the tester's task requires it), memoryd's
handoff summary of what the earlier role did goes into the next task's
bundle.

memoryd writes a handoff summary for every change of role within one scope
of its interactions (see memoryd's compaction). Each run handed over along
such a link gets a scope of its own, ``handoff:<from task>:<to task>:<run>``,
holding two raw interactions:
the required task's latest run (its prompt and output, in its role) and the
next task's input (in the next role), in that order; a Compact of the scope
then writes the scope's task summary and the handoff summary (two summary
jobs, routed for memoryd's writer role). The summary is found again by its
scope, so a later run of the same task reuses it and a newer run of the
required task gets a new one.

The summary is a REQUIRED-tier candidate of kind ``handoff`` with source
``handoff:<from task>``, ranked right after that task's output.

This module is pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestratord.domain.bundles import Candidate, Tier
from orchestratord.domain.roles import RoleBook
from orchestratord.domain.tasks import Task, TaskRun

#: Labels of the interactions stored for a handoff.
FROM_TASK_LABEL = "hearth.handoff_from_task"
FROM_RUN_LABEL = "hearth.handoff_from_run"
TO_TASK_LABEL = "hearth.handoff_to_task"

_NAMESPACE = uuid.UUID("0f1d3c52-9b4e-5a27-8d61-2c7e4b9a3f10")


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """One role change along a requires link: ``to_task`` requires
    ``from_task``, whose latest done run is ``from_run``."""

    project_id: str
    from_task: int
    from_role: str
    from_run: int
    from_job: str
    #: The required task's input and output, as memoryd keeps an interaction.
    from_text: str
    from_agent: str
    #: When the required run ended (the interaction's valid_from).
    from_ended_at: float
    to_task: int
    to_role: str
    #: The next task's input (the second interaction).
    to_text: str

    @property
    def scope(self) -> str:
        """memoryd's task id of this handoff's interactions."""
        return f"handoff:{self.from_task}:{self.to_task}:{self.from_run}"

    @property
    def request_id(self) -> str:
        """Idempotency key of its Store and Compact: one handoff per run handed over."""
        return str(uuid.uuid5(_NAMESPACE, f"{self.project_id}:{self.scope}:{self.from_run}"))


@dataclass(frozen=True, slots=True)
class HandoffSummary:
    memory_id: str
    text: str
    from_role: str
    to_role: str
    from_task: int
    from_run: int


def handoff_requests(
    task: Task,
    required: Mapping[int, Task],
    latest_runs: Mapping[int, TaskRun],
    roles: RoleBook,
) -> list[HandoffRequest]:
    """The handoffs ``task`` receives: one per required task of another role
    that has a done run, by required task id."""
    requests = []
    for task_id in sorted(required):
        source = required[task_id]
        run = latest_runs.get(task_id)
        if run is None or roles.same_role(source.role, task.role):
            continue
        requests.append(
            HandoffRequest(
                project_id=task.project_id,
                from_task=task_id,
                from_role=source.role or roles.default_role,
                from_run=run.run_id,
                from_job=run.job_id,
                from_text=f"{source.input.text}\n\n{run.output}",
                from_agent=run.started_by,
                from_ended_at=run.ended_at or run.started_at,
                to_task=task.task_id,
                to_role=task.role or roles.default_role,
                to_text=task.input.text,
            )
        )
    return requests


def handoff_candidate(summary: HandoffSummary) -> Candidate:
    """The bundle candidate of a handoff summary."""
    return Candidate(
        Tier.REQUIRED,
        f"handoff:{summary.from_task}",
        "handoff",
        f"{summary.from_role} -> {summary.to_role} (memory {summary.memory_id})",
        summary.text,
        rank=summary.from_task + 0.5,
    )


def candidates_of(summaries: Sequence[HandoffSummary]) -> list[Candidate]:
    return [handoff_candidate(s) for s in summaries]

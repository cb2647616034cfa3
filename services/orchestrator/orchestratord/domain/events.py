"""The work event log: every change of a project, task, link, note, context
override, plan, plan attempt or run, as one event.

Events are written by the task store in the same transaction as the change
they describe, numbered 1, 2, 3, ... without gaps in commit order, and carry
the changed entity's whole state after the change (its row, as JSON): a
deleted link carries its key. So the views (the rows of the work tables) are
a left fold of the log, :func:`rebuild_views`, and the log can be checked
against the tables, or replayed elsewhere, without knowing what each kind of
change did. Copies go to NATS JetStream (``hearth.events.work.<kind>``);
PostgreSQL is the truth, and ``hearth events export`` reads it.

Context snapshots are not events: they are immutable content named by hash
(a run's event carries the hash).

This module is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The entities events describe, each with the fields of its key.
ENTITY_KEYS: dict[str, tuple[str, ...]] = {
    "project": ("id",),
    "task": ("id",),
    "note": ("id",),
    "link": ("from_task", "to_task", "kind"),
    "override": ("task_id",),
    "run": ("id",),
    "plan": ("id",),
    "plan_attempt": ("plan_id", "attempt"),
}

#: Kinds whose event removes the entity (the data is its key).
DELETIONS = frozenset({"link.deleted"})


@dataclass(frozen=True, slots=True)
class WorkEvent:
    """One change. ``kind`` is ``<entity>.<what happened>`` ("task.created",
    "task.status_changed", "run.ended", "plan.approved", ...)."""

    sequence: int
    #: Epoch seconds of the transaction.
    at: float
    kind: str
    entity: str
    #: The entity's state after the change: its row as JSON (timestamps as
    #: RFC 3339 strings); for a deletion, its key.
    data: Mapping[str, Any]
    project_id: str = ""
    task_id: int = 0
    plan_id: int = 0
    run_id: int = 0
    #: Who made the change ("" when nobody is named).
    agent: str = ""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before the store numbers it."""

    kind: str
    entity: str
    data: Mapping[str, Any]
    project_id: str = ""
    task_id: int = 0
    plan_id: int = 0
    run_id: int = 0
    agent: str = ""


@dataclass
class WorkViews:
    """Entity -> key -> row JSON: the state of the work tables."""

    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(
        default_factory=lambda: {entity: {} for entity in ENTITY_KEYS}
    )

    def of(self, entity: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        return self.rows[entity]

    def only_projects(self, project_ids: Iterable[str]) -> WorkViews:
        """The rows of these projects only (every entity names its project
        directly or through its task or plan)."""
        wanted = set(project_ids)
        tasks = {key for key, row in self.rows["task"].items() if row.get("project_id") in wanted}
        task_ids = {key[0] for key in tasks}
        plans = {key[0] for key, row in self.rows["plan"].items() if row.get("project_id") in wanted}
        keep = {
            "project": lambda row: row.get("id") in wanted,
            "task": lambda row: row.get("project_id") in wanted,
            "note": lambda row: row.get("task_id") in task_ids,
            "link": lambda row: row.get("from_task") in task_ids,
            "override": lambda row: row.get("task_id") in task_ids,
            "run": lambda row: row.get("project_id") in wanted,
            "plan": lambda row: row.get("project_id") in wanted,
            "plan_attempt": lambda row: row.get("plan_id") in plans,
        }
        return WorkViews(
            {entity: {k: r for k, r in rows.items() if keep[entity](r)} for entity, rows in self.rows.items()}
        )


def entity_key(entity: str, data: Mapping[str, Any]) -> tuple[Any, ...]:
    """The key of an entity's row (KeyError for an unknown entity or a row without its key)."""
    return tuple(data[name] for name in ENTITY_KEYS[entity])


def rebuild_views(events: Iterable[WorkEvent], into: WorkViews | None = None) -> WorkViews:
    """The views the events leave, applied in sequence order onto ``into``
    (empty views by default): each event's row replaces the entity's, a
    deletion removes it.

    Raises:
        ValueError: the events are not in ascending sequence order, or one names an unknown entity.
    """
    views = into if into is not None else WorkViews()
    last = 0
    for event in events:
        if event.sequence <= last:
            raise ValueError(f"event {event.sequence} comes after {last}: events must be in sequence order")
        last = event.sequence
        if event.entity not in ENTITY_KEYS:
            raise ValueError(f"event {event.sequence}: unknown entity {event.entity!r}")
        rows = views.rows[event.entity]
        key = entity_key(event.entity, event.data)
        if event.kind in DELETIONS:
            rows.pop(key, None)
        else:
            rows[key] = dict(event.data)
    return views


def view_differences(expected: WorkViews, actual: WorkViews) -> list[str]:
    """Where two sets of views differ, one line per row (empty: equal)."""
    lines: list[str] = []
    for entity in ENTITY_KEYS:
        a, b = expected.rows[entity], actual.rows[entity]
        for key in sorted(a.keys() | b.keys(), key=repr):
            if key not in b:
                lines.append(f"{entity} {key}: only in the first")
            elif key not in a:
                lines.append(f"{entity} {key}: only in the second")
            elif a[key] != b[key]:
                fields = sorted(n for n in a[key].keys() | b[key].keys() if a[key].get(n) != b[key].get(n))
                lines.append(f"{entity} {key}: {', '.join(fields)} differ")
    return lines

"""Usage and cost reports from the run records (``hearth stats``).

The records are the ended task runs and plan attempts (each one job): who
started it (the agent), the role, the model that served it, when it started,
how it ended, tokens in and out, cost and time to first token. Prompts and
outputs are never read for a report.

A report groups the records (by day or month of their start, UTC, by role
or by model, or not at all) and gives per group: jobs, failed jobs (a job
that did not complete; a plan answer that completed but was no valid plan
is not a failed job), the failure rate, tokens, cost, and the mean and 95th
percentile (linear interpolation, as PostgreSQL's ``percentile_cont``) of
the time to first token over the jobs that had one.

:func:`aggregate` is the reference the store's SQL matches.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hearth.errors import InvalidArgument


class Grouping(enum.Enum):
    NONE = "none"
    DAY = "day"
    MONTH = "month"
    ROLE = "role"
    MODEL = "model"


@dataclass(frozen=True, slots=True)
class StatsQuery:
    project_id: str = ""
    agent: str = ""
    group_by: Grouping = Grouping.NONE
    #: Records started at or after / before these epoch seconds (None: unbounded).
    start: float | None = None
    end: float | None = None

    def check(self) -> StatsQuery:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidArgument("end_time", "must be after start_time")
        return self


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One job's usage, as a run record or plan attempt holds it."""

    project_id: str
    agent: str
    role: str
    model: str
    started_at: float
    failed: bool
    input_tokens: int
    output_tokens: int
    cost: float
    time_to_first_token: float | None = None


@dataclass(frozen=True, slots=True)
class StatsRow:
    #: The group: "2025-01-31", "2025-01", a role ("(default)" for none), a
    #: model ("(none)" when no model served it), or "all".
    key: str
    jobs: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    #: Jobs with a time to first token (the means are over these).
    timed_jobs: int = 0
    mean_time_to_first_token: float | None = None
    p95_time_to_first_token: float | None = None

    @property
    def failure_rate(self) -> float:
        return self.failed / self.jobs if self.jobs else 0.0


@dataclass(frozen=True, slots=True)
class StatsReport:
    query: StatsQuery
    rows: list[StatsRow]
    total: StatsRow
    #: What was counted, for people ("task runs and plan attempts").
    sources: tuple[str, ...] = field(default=("task runs", "plan attempts"))


#: The key of a record without a role or a model.
NO_ROLE = "(default)"
NO_MODEL = "(none)"


def group_key(record: UsageRecord, grouping: Grouping) -> str:
    if grouping is Grouping.DAY:
        return datetime.fromtimestamp(record.started_at, tz=UTC).strftime("%Y-%m-%d")
    if grouping is Grouping.MONTH:
        return datetime.fromtimestamp(record.started_at, tz=UTC).strftime("%Y-%m")
    if grouping is Grouping.ROLE:
        return record.role or NO_ROLE
    if grouping is Grouping.MODEL:
        return record.model or NO_MODEL
    return "all"


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(key: str, records: Sequence[UsageRecord]) -> StatsRow:
    timed = [r.time_to_first_token for r in records if r.time_to_first_token is not None]
    return StatsRow(
        key=key,
        jobs=len(records),
        failed=sum(r.failed for r in records),
        input_tokens=sum(r.input_tokens for r in records),
        output_tokens=sum(r.output_tokens for r in records),
        cost=sum(r.cost for r in records),
        timed_jobs=len(timed),
        mean_time_to_first_token=sum(timed) / len(timed) if timed else None,
        p95_time_to_first_token=percentile(timed, 0.95),
    )


def matches(record: UsageRecord, query: StatsQuery) -> bool:
    return (
        (not query.project_id or record.project_id == query.project_id)
        and (not query.agent or record.agent == query.agent)
        and (query.start is None or record.started_at >= query.start)
        and (query.end is None or record.started_at < query.end)
    )


def aggregate(records: Iterable[UsageRecord], query: StatsQuery) -> StatsReport:
    """The report over ``records`` (rows by key, ascending)."""
    chosen = [r for r in records if matches(r, query)]
    groups: dict[str, list[UsageRecord]] = {}
    for record in chosen:
        groups.setdefault(group_key(record, query.group_by), []).append(record)
    rows = [summarise(key, groups[key]) for key in sorted(groups)]
    return StatsReport(query, rows, summarise("all", chosen))

"""Budgets: what a job may cost, which budgets it counts against, and whether they allow it.

Money is :class:`~decimal.Decimal` with nine decimal places everywhere it is added up (the
ledger stores NUMERIC), so that a hard limit is never passed by a rounding error; floats appear
only at the edges (prices in the registry, amounts on the wire).

A job counts against up to four budgets: its project's day and month and, when it names an
agent, that agent's day and month. A job without a project counts against ``project:default``.
Periods are calendar periods in UTC: the day key is ``2026-11-21``, the month key ``2026-11``.
A reservation belongs to the periods in which it was made, also when it is settled later.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Protocol

from routerd.domain.snapshot import BudgetStanding

#: Money is kept to a billionth of the currency unit.
MONEY_QUANTUM = Decimal("0.000000001")
ZERO = Decimal(0)

#: The project of a job that names none.
DEFAULT_PROJECT = "default"


class Period(enum.StrEnum):
    """A budget period (the values are BudgetStanding.period's)."""

    DAY = "day"
    MONTH = "month"


class EntryState(enum.StrEnum):
    """Where a reservation stands in the ledger."""

    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


def money(value: float | Decimal | str, *, round_up: bool = False) -> Decimal:
    """A money amount at the ledger's precision; ``round_up`` for worst cases."""
    rounding = ROUND_CEILING if round_up else ROUND_HALF_EVEN
    return Decimal(str(value)).quantize(MONEY_QUANTUM, rounding=rounding)


@dataclass(frozen=True, slots=True)
class Prices:
    """A target's prices per 1,000 tokens, in the policy's currency."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    @property
    def priced(self) -> bool:
        return self.input_per_1k > 0 or self.output_per_1k > 0

    def cost(self, input_tokens: int, output_tokens: int, *, round_up: bool = False) -> Decimal:
        """What ``input_tokens`` in and ``output_tokens`` out cost at these prices."""
        raw = (Decimal(max(0, input_tokens)) * Decimal(str(self.input_per_1k))) / 1000 + (
            Decimal(max(0, output_tokens)) * Decimal(str(self.output_per_1k))
        ) / 1000
        return money(raw, round_up=round_up)


def worst_case_cost(prompt_tokens: int, max_tokens: int, prices: Prices) -> Decimal:
    """The most a job can cost: its whole prompt in and ``max_tokens`` out, rounded up."""
    return prices.cost(prompt_tokens, max_tokens, round_up=True)


@dataclass(frozen=True, slots=True)
class PeriodKeys:
    """The keys of the day and the month an instant falls in, in UTC."""

    day: str
    month: str

    def key(self, period: Period) -> str:
        return self.day if period is Period.DAY else self.month


def period_keys(now: float) -> PeriodKeys:
    """The UTC day ("2026-11-21") and month ("2026-11") of a Unix time."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    return PeriodKeys(day=moment.strftime("%Y-%m-%d"), month=moment.strftime("%Y-%m"))


def next_day_start(now: float) -> float:
    """The Unix time of the next UTC midnight after ``now`` (where both period keys may change)."""
    return (int(now // 86400) + 1) * 86400.0


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """The limits of one budget; 0 means no limit of that kind."""

    soft: Decimal = ZERO
    hard: Decimal = ZERO

    @property
    def limited(self) -> bool:
        return self.soft > 0 or self.hard > 0


_NO_LIMIT = BudgetLimit()


@dataclass(frozen=True, slots=True)
class BudgetRules:
    """The policy's budgets, as the ledger applies them.

    Args:
        currency: the currency of every limit and price.
        project: the limit of every project's budget, by period.
        agent: the limit of every agent's budget, by period.
        scopes: overrides by scope ("project:acme"), by period; a period an override does not
            name keeps the default of its kind.
    """

    currency: str = "USD"
    project: Mapping[Period, BudgetLimit] = field(default_factory=dict)
    agent: Mapping[Period, BudgetLimit] = field(default_factory=dict)
    scopes: Mapping[str, Mapping[Period, BudgetLimit]] = field(default_factory=dict)

    def limit(self, scope: str, period: Period) -> BudgetLimit:
        override = self.scopes.get(scope)
        if override is not None and period in override:
            return override[period]
        defaults = self.agent if scope.startswith("agent:") else self.project
        return defaults.get(period, _NO_LIMIT)

    @property
    def any_limit(self) -> bool:
        """Whether any budget has a limit (a ledger is then required)."""
        limits = [*self.project.values(), *self.agent.values()]
        limits += [lim for per in self.scopes.values() for lim in per.values()]
        return any(lim.limited for lim in limits)


def job_scopes(project_id: str, agent: str) -> tuple[str, ...]:
    """The budget scopes a job counts against: its project and, if it names one, its agent."""
    scopes = (f"project:{project_id or DEFAULT_PROJECT}",)
    return (*scopes, f"agent:{agent}") if agent else scopes


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget a job counts against, in one period."""

    scope: str
    period: Period
    period_key: str
    limit: BudgetLimit

    @property
    def key(self) -> tuple[str, str]:
        """The ledger's balance key: (scope, period key)."""
        return (self.scope, self.period_key)


def budget_lines(
    rules: BudgetRules, project_id: str, agent: str, now: float, *, keys: PeriodKeys | None = None
) -> tuple[BudgetLine, ...]:
    """Every budget (scope x period) a job made at ``now`` counts against, in a fixed order
    (``keys``: the period keys of ``now``, when the caller has them already)."""
    keys = keys or period_keys(now)
    return tuple(
        BudgetLine(scope, period, keys.key(period), rules.limit(scope, period))
        for scope in job_scopes(project_id, agent)
        for period in Period
    )


@dataclass(frozen=True, slots=True)
class BudgetOverrun:
    """A reservation that would take a budget past its hard limit."""

    line: BudgetLine
    spent: Decimal
    amount: Decimal


def first_overrun(
    lines: Sequence[BudgetLine], spent: Mapping[tuple[str, str], Decimal], amount: Decimal
) -> BudgetOverrun | None:
    """The first budget whose hard limit ``amount`` more would pass (spent + amount > hard)."""
    for line in lines:
        hard = line.limit.hard
        if hard > 0:
            current = spent.get(line.key, ZERO)
            if current + amount > hard:
                return BudgetOverrun(line, current, amount)
    return None


class BudgetExceeded(Exception):
    """A ledger refused a reservation; ``overrun`` names the budget."""

    def __init__(self, overrun: BudgetOverrun) -> None:
        line = overrun.line
        super().__init__(
            f"{line.scope} {line.period.value} {line.period_key}: spent {overrun.spent} + "
            f"{overrun.amount} would pass the hard limit {line.limit.hard}"
        )
        self.overrun = overrun


def standing(line: BudgetLine, spent: Decimal, currency: str) -> BudgetStanding:
    """The snapshot's view of one budget."""
    return BudgetStanding(
        scope=line.scope,
        period=line.period.value,
        spent=float(spent),
        soft_limit=float(line.limit.soft),
        hard_limit=float(line.limit.hard),
        currency=currency,
    )


# -- the ledger port ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    """What a ledger holds against one budget: settled spend plus open reservations.

    ``version`` grows with every change of the row, so that answers of concurrent
    transactions can be applied to a cache in any order.
    """

    scope: str
    period_key: str
    spent: Decimal
    version: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope, self.period_key)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation in the ledger. ``repeated``: it existed already for this (job, attempt)."""

    reservation_id: str
    amount: Decimal
    state: EntryState
    balances: tuple[Balance, ...]
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class Settlement:
    """A settled or released reservation. ``repeated``: it was closed before this call
    (``charged`` is then what the first close charged)."""

    reservation_id: str
    reserved: Decimal
    charged: Decimal
    state: EntryState
    balances: tuple[Balance, ...]
    repeated: bool = False
    clamped: bool = False


class BudgetLedger(Protocol):
    """The budget ledger: reservations against balances, atomically and idempotently.

    Every method is safe to run concurrently from many tasks (and connections).
    """

    async def start(self) -> None:
        """Prepare the store (migrations)."""
        ...

    async def stop(self) -> None:
        """Release connections; safe twice."""
        ...

    async def reserve(
        self, job_id: str, attempt: int, target: str, lines: Sequence[BudgetLine], amount: Decimal
    ) -> Reservation:
        """Hold ``amount`` against every line in one transaction, or nothing.

        Raises BudgetExceeded when a line's hard limit would be passed. A repeat for the same
        (job_id, attempt) returns the first reservation (``repeated``) and holds nothing more.
        """
        ...

    async def settle(self, reservation_id: str, charged: Decimal | None) -> Settlement | None:
        """Close a reservation: charge ``charged`` (clamped to what was reserved) and release
        the rest, or release it all when ``charged`` is None. None for an unknown id; a repeat
        changes nothing."""
        ...

    async def release_stale(self, older_than_seconds: float) -> tuple[Balance, ...]:
        """Release open reservations made more than ``older_than_seconds`` ago; returns the
        balances that changed."""
        ...

    async def balances(self, period_keys: Iterable[str]) -> tuple[Balance, ...]:
        """Every balance of the given period keys."""
        ...


class StandingsCache:
    """Spent per (scope, period key), as this process last saw the ledger.

    routerd is the ledger's only writer, so the balances its own reservations and settlements
    return keep the cache current; the cache never needs a read on the routing path.
    """

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], tuple[Decimal, int]] = {}

    def apply(self, balances: Iterable[Balance]) -> None:
        """Take the newer of the cached and the given value of each balance."""
        for balance in balances:
            cached = self._spent.get(balance.key)
            if cached is None or balance.version >= cached[1]:
                self._spent[balance.key] = (balance.spent, balance.version)

    def spent(self, key: tuple[str, str]) -> Decimal:
        cached = self._spent.get(key)
        return ZERO if cached is None else cached[0]

    def scopes(self, scope_kind: str, period_key: str) -> list[tuple[str, Decimal]]:
        """(scope, spent) of every scope of a kind ("project", "agent") with a balance in one period."""
        prefix = f"{scope_kind}:"
        return [
            (scope, s)
            for (scope, key), (s, _v) in self._spent.items()
            if key == period_key and scope.startswith(prefix)
        ]

    def total(self, scope_kind: str, period_key: str) -> Decimal:
        """The spend of every scope of a kind ("project", "agent") in one period."""
        prefix = f"{scope_kind}:"
        return sum(
            (
                s
                for (scope, key), (s, _v) in self._spent.items()
                if key == period_key and scope.startswith(prefix)
            ),
            ZERO,
        )

"""Accounting: everything routerd counts and remembers between calls — the budget ledger and
its standings, per-project rate limits, per-target circuit breakers and the live load of the
targets from worker heartbeats — behind the small interface the servicer calls.

The routing path (:meth:`Accounting.snapshot`) does no I/O: loads are aggregated when
heartbeats arrive, breaker states are computed from their own clocks, and budget standings come
from an in-memory cache kept current by this process's own reservations and settlements
(routerd is the ledger's only writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal

from prometheus_client import Gauge

from hearth.api.router.v1 import router_pb2
from hearth.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from hearth.runtime import ServiceMetrics
from routerd.adapters.live_snapshot import LiveSnapshot
from routerd.domain.breaker import BreakerBoard, BreakerConfig
from routerd.domain.budget import (
    ZERO,
    Balance,
    BudgetExceeded,
    BudgetLedger,
    BudgetLimit,
    BudgetLine,
    BudgetRules,
    Period,
    PeriodKeys,
    Prices,
    StandingsCache,
    budget_lines,
    money,
    next_day_start,
    period_keys,
    standing,
    worst_case_cost,
)
from routerd.domain.policy import Budgets, PeriodLimits, Policy
from routerd.domain.ratelimit import RateLimiter, RateLimits
from routerd.domain.registry import Registry
from routerd.domain.snapshot import Breaker, BudgetStanding, RouteSnapshot

log = logging.getLogger(__name__)

#: Open reservations older than this are released at start and by the sweep: an attempt
#: cannot run this long (remote engines time out after 600 s, with retries), so such a
#: reservation belongs to an orchestrator that died.
DEFAULT_RESERVATION_TTL_SECONDS = 3600.0

_BREAKER_STATES = {
    Breaker.CLOSED: router_pb2.BREAKER_STATE_CLOSED,
    Breaker.OPEN: router_pb2.BREAKER_STATE_OPEN,
    Breaker.HALF_OPEN: router_pb2.BREAKER_STATE_HALF_OPEN,
}
_PERIODS = {"day": router_pb2.BUDGET_PERIOD_DAY, "month": router_pb2.BUDGET_PERIOD_MONTH}
_RESERVATION_RESULTS = ("reserved", "repeated", "unpriced", "budget_exceeded", "circuit_open", "error")
_SETTLEMENT_RESULTS = ("settled", "released", "repeated", "clamped", "unreserved")
_RATE_LIMITS = ("requests_per_minute", "tokens_per_minute")
# Outcomes remembered so that a repeated ReportOutcome does not feed a breaker twice.
_REMEMBERED_OUTCOMES = 10_000
#: How long an attempt arriving before start() finished waits for it.
_READY_TIMEOUT_SECONDS = 30.0
# (project, agent) pairs whose budget standings are cached at once.
_CACHED_JOBS = 4096


def breaker_state_proto(state: Breaker) -> router_pb2.BreakerState.ValueType:
    """The wire form of a breaker state."""
    return _BREAKER_STATES[state]


def standing_proto(value: BudgetStanding) -> router_pb2.BudgetStanding:
    """The wire form of a budget standing."""
    return router_pb2.BudgetStanding(
        scope=value.scope,
        period=_PERIODS.get(value.period, router_pb2.BUDGET_PERIOD_UNSPECIFIED),
        spent=value.spent,
        soft_limit=value.soft_limit,
        hard_limit=value.hard_limit,
        currency=value.currency,
    )


def budget_rules(budgets: Budgets) -> BudgetRules:
    """The policy's ``budgets:`` block as the ledger applies it."""

    def limits(per: PeriodLimits) -> dict[Period, BudgetLimit]:
        daily, monthly = per.daily, per.monthly
        return {
            Period.DAY: BudgetLimit(money(daily.soft), money(daily.hard)),
            Period.MONTH: BudgetLimit(money(monthly.soft), money(monthly.hard)),
        }

    return BudgetRules(
        currency=budgets.currency,
        project=limits(budgets.project),
        agent=limits(budgets.agent),
        scopes={scope: limits(per) for scope, per in budgets.scopes.items()},
    )


def rate_limits(policy: Policy) -> RateLimits:
    limit = policy.rate_limits.project
    return RateLimits(limit.requests_per_minute, limit.tokens_per_minute)


def breaker_config(policy: Policy, probe_timeout_seconds: float) -> BreakerConfig:
    settings = policy.breaker
    return BreakerConfig(
        failures=settings.failures,
        window_seconds=settings.window_seconds,
        cooldown_seconds=settings.cooldown_seconds,
        probe_timeout_seconds=probe_timeout_seconds,
    )


class Accounting:
    """Budgets, rate limits, breakers and the live snapshot, for RouterServicer.

    Construct it in the composition root (routerd/__main__.py) like this::

        live = LiveSnapshot(host.bus, ttl_seconds=settings.heartbeat_ttl_seconds)  # bus: connect_bus=True
        ledger = PostgresLedger(create_engine(settings.database_url)) if settings.database_url else None
        accounting = Accounting(
            policy, registry, ledger=ledger, live=live, metrics=host.metrics,
            reservation_ttl_seconds=settings.budget_reservation_ttl_seconds,
            probe_timeout_seconds=settings.breaker_probe_timeout_seconds,
        )
        await accounting.start()            # migrates the ledger, releases stale reservations,
        host.on_cleanup(accounting.stop)    # loads the standings, subscribes to heartbeats

    (PostgresLedger and create_engine come from routerd.adapters.ledger_postgres, LiveSnapshot
    from routerd.adapters.live_snapshot.) Without a ledger, priced targets need no reservation
    as long as the policy sets no budget limit; with a limit and no ledger, Reserve on a priced
    target fails FAILED_PRECONDITION (BUDGET_LEDGER_UNAVAILABLE): money is never spent uncounted.

    Lifecycle: start() then stop(); stop() is safe twice and before start(). Every method runs
    on the service's event loop.

    Args:
        policy: the policy in force (budgets, rate limits, breaker settings); see update_policy.
        registry: the targets and their prices.
        ledger: the budget ledger (routerd.adapters.ledger_postgres.PostgresLedger), or None
            when no database is configured. Accounting starts and stops it.
        live: the per-target load from heartbeats. Accounting starts and stops it.
        metrics: registers hearth_router_budget_spent{scope_kind,period},
            hearth_router_reservations_total{result}, hearth_router_settlements_total{result},
            hearth_router_breaker_transitions_total{to}, hearth_router_rate_limited_total{limit},
            hearth_router_attempts_total{result,position}, hearth_router_breakers{state} and
            hearth_router_budget_usage_ratio{scope_kind,period}.
        reservation_ttl_seconds: open reservations older than this are released at start and
            by a sweep every min(ttl / 4, 5 min) (an orchestrator that crashed must not hold
            budget forever).
        probe_timeout_seconds: a half-open breaker's probe without an outcome for this long is
            taken back and the breaker opens again.
        clock: wall-clock Unix seconds (budget periods, in UTC).
        monotonic: monotonic seconds (breakers, rate limits).
    """

    def __init__(
        self,
        policy: Policy,
        registry: Registry,
        *,
        ledger: BudgetLedger | None,
        live: LiveSnapshot,
        metrics: ServiceMetrics,
        reservation_ttl_seconds: float = DEFAULT_RESERVATION_TTL_SECONDS,
        probe_timeout_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._live = live
        self._clock = clock
        self._monotonic = monotonic
        self._reservation_ttl = reservation_ttl_seconds
        self._probe_timeout = probe_timeout_seconds
        self._standings = StandingsCache()
        self._keys = period_keys(clock())
        self._keys_until = next_day_start(clock())
        # The budgets part of snapshot() by (project, agent); cleared when a balance, the rules
        # or the period changes, so a Route usually pays one dict lookup for it.
        self._standings_by_job: dict[tuple[str, str], tuple[BudgetStanding, ...]] = {}
        self._outcomes: OrderedDict[str, router_pb2.ReportOutcomeResponse] = OrderedDict()
        self._sweep: asyncio.Task[None] | None = None
        self._started = False
        # Set once start() has finished: routerd serves while start() runs
        # (it needs the bus), so an attempt arriving meanwhile waits for the
        # ledger. Until start() begins there is nothing to wait for.
        self._ready: asyncio.Event | None = None

        service = metrics.service
        self._spent_gauge = Gauge(
            f"hearth_{service}_budget_spent",
            "Settled spend plus open reservations in the current period, summed over the scopes of a "
            "kind (project, agent), in the policy's currency.",
            ["scope_kind", "period"],
            registry=metrics.registry,
        )
        reservations = metrics.counter("reservations_total", "Reserve calls, by result.", ["result"])
        self._reservations = {r: reservations.labels(r) for r in _RESERVATION_RESULTS}
        settlements = metrics.counter(
            "settlements_total", "ReportOutcome calls by what happened to the reservation.", ["result"]
        )
        self._settlements = {r: settlements.labels(r) for r in _SETTLEMENT_RESULTS}
        transitions = metrics.counter(
            "breaker_transitions_total", "Circuit-breaker state changes, by the new state.", ["to"]
        )
        self._transitions = {b: transitions.labels(b.value) for b in Breaker}
        limited = metrics.counter("rate_limited_total", "Route calls refused by a rate limit.", ["limit"])
        self._rate_limited = {name: limited.labels(name) for name in _RATE_LIMITS}
        attempts = metrics.counter(
            "attempts_total",
            "Attempts reported by ReportOutcome, by result (success, failure) and position in the "
            "job's chain (first: the chosen target; fallback: a later one, after a failure).",
            ["result", "position"],
        )
        self._attempts = {
            (result, position): attempts.labels(result, position)
            for result in ("success", "failure")
            for position in ("first", "fallback")
        }
        self._breakers_gauge = Gauge(
            f"hearth_{service}_breakers",
            "Targets of the registry by circuit-breaker state, as of the last transition.",
            ["state"],
            registry=metrics.registry,
        )
        self._breaker_states: dict[str, Breaker] = {}
        self._usage_gauge = Gauge(
            f"hearth_{service}_budget_usage_ratio",
            "The largest share of its limit (the hard limit, else the soft one) that any budget of a "
            "scope kind has spent in the current period; 0 when none of them has a limit.",
            ["scope_kind", "period"],
            registry=metrics.registry,
        )

        self._policy = policy
        self._registry = registry
        self._rules = budget_rules(policy.budgets)
        self._limiter = RateLimiter(rate_limits(policy))
        self._breakers = BreakerBoard(
            breaker_config(policy, probe_timeout_seconds), monotonic, self._on_transition
        )
        self._update_breaker_gauge()
        self._warn_if_unledgered()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the ledger (migrations), release stale reservations, load the current
        standings, and start listening for heartbeats."""
        if self._started:
            return
        self._started = True
        self._ready = asyncio.Event()
        if self._ledger is not None:
            await self._ledger.start()
            await self.release_stale()
            keys = self._period_keys()
            self._apply(await self._ledger.balances((keys.day, keys.month)))
            interval = min(self._reservation_ttl / 4, 300.0)
            self._sweep = asyncio.create_task(self._sweep_forever(interval), name="router-budget-sweep")
        # The gauges from the start, also for a ledger with no balances yet.
        self._update_gauges()
        await self._live.start()
        self._ready.set()

    async def stop(self) -> None:
        task, self._sweep = self._sweep, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._live.stop()
        if self._started and self._ledger is not None:
            await self._ledger.stop()
        self._started = False
        self._ready = None

    def update_policy(self, policy: Policy, registry: Registry) -> None:
        """Apply a reloaded policy and registry: budget limits, rate limits and breaker settings
        change from now on; spend, bucket levels and breaker states are kept."""
        self._policy = policy
        self._registry = registry
        self._rules = budget_rules(policy.budgets)
        self._standings_by_job.clear()
        self._limiter.reconfigure(rate_limits(policy), self._monotonic())
        self._breakers.reconfigure(breaker_config(policy, self._probe_timeout))
        self._update_breaker_gauge()
        self._update_gauges()
        self._warn_if_unledgered()

    # -- the routing path ----------------------------------------------------------------

    def snapshot(self, project_id: str, agent: str) -> RouteSnapshot:
        """The live state one Route decides over; no I/O.

        Budgets: the standings of the job's project (day, month) and agent (day, month) that
        have a limit or any spend.
        """
        return RouteSnapshot(
            loads=self._live.loads,
            health=self._breakers.health(),
            budgets=self._budget_standings(project_id, agent),
        )

    def breaker_state(self, target: str) -> Breaker:
        """A target's breaker state now (ListTargets)."""
        return self._breakers.state(target)

    async def check_rate(self, project_id: str, tokens: int, *, dry_run: bool) -> None:
        """Take one request and ``tokens`` (prompt + max_tokens) from the project's rate-limit
        buckets. A dry run takes nothing and is never refused.

        Raises:
            ResourceExhausted: reason RATE_LIMITED, retry_after the seconds until the limit has
                room, metadata ``limit`` (requests_per_minute | tokens_per_minute),
                ``per_minute`` and ``project_id``.
        """
        if dry_run:
            return
        refusal = self._limiter.check(project_id, tokens, self._monotonic())
        if refusal is None:
            return
        self._rate_limited[refusal.limit].inc()
        raise ResourceExhausted(
            f"project {project_id or 'default'!r} is over its {refusal.limit.replace('_', ' ')} "
            f"limit ({refusal.per_minute}); retry in {refusal.retry_after:.2f}s",
            reason="RATE_LIMITED",
            retry_after=round(refusal.retry_after + 0.0005, 3),
            metadata={
                "limit": refusal.limit,
                "per_minute": str(refusal.per_minute),
                "project_id": project_id,
            },
        )

    # -- attempts ------------------------------------------------------------------------

    async def _until_ready(self) -> None:
        if self._ready is None or self._ready.is_set():
            return
        try:
            async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
                await self._ready.wait()
        except TimeoutError:
            raise Unavailable(
                "the router's budget ledger is not ready yet", reason="ROUTER_STARTING", retry_after=1.0
            ) from None

    async def reserve(self, request: router_pb2.ReserveRequest) -> router_pb2.ReserveResponse:
        """Admit one attempt of a job on a target and hold its worst-case cost.

        The target's breaker admits the attempt first: OPEN refuses it, and HALF_OPEN hands its
        single probe to the first attempt that asks (the same job and attempt asking again keeps
        it). Then the cost (prompt_tokens at the input price plus max_tokens at the output
        price) is held against every budget of the job's project and agent in one ledger
        transaction. A target without a price holds nothing (no reservation_id), so calling
        Reserve for every attempt, priced or not, is what makes a probe exclusive. A repeat for
        the same (job_id, attempt) returns the first reservation.

        Raises:
            InvalidArgument: job_id or target empty, negative numbers.
            Unavailable: ROUTER_STARTING, the ledger did not get ready in time.
            NotFound: MODEL_NOT_FOUND, the target is not in the registry.
            Unavailable: CIRCUIT_OPEN, the breaker does not admit the attempt (metadata target,
                breaker); retry_after is the breaker's cool-down.
            ResourceExhausted: BUDGET_EXCEEDED, metadata scope, period, period_key, spent,
                hard_limit, amount, currency.
            FailedPrecondition: BUDGET_LEDGER_UNAVAILABLE, budgets are set but no database is.
        """
        await self._until_ready()
        _require(request.job_id, "job_id")
        _require(request.target, "target")
        for name in ("attempt", "prompt_tokens", "max_tokens"):
            if getattr(request, name) < 0:
                raise InvalidArgument(name, "must not be negative")
        target = self._registry.get(request.target)
        if target is None:
            self._reservations["error"].inc()
            raise NotFound(
                f"target {request.target!r} is not in the registry",
                reason="MODEL_NOT_FOUND",
                metadata={"model": request.target},
            )
        holder = _holder(request.job_id, request.attempt)
        if not self._breakers.admit(request.target, holder):
            self._reservations["circuit_open"].inc()
            state = self._breakers.state(request.target)
            raise Unavailable(
                f"target {request.target!r} is skipped: its circuit breaker is {state.value}",
                reason="CIRCUIT_OPEN",
                retry_after=self._policy.breaker.cooldown_seconds,
                metadata={"target": request.target, "breaker": state.value},
            )
        try:
            return await self._hold(request, Prices(target.price_input_per_1k, target.price_output_per_1k))
        except BaseException:
            self._breakers.release_probe(request.target, holder)
            raise

    async def _hold(self, request: router_pb2.ReserveRequest, prices: Prices) -> router_pb2.ReserveResponse:
        rules = self._rules
        amount = worst_case_cost(request.prompt_tokens, request.max_tokens, prices) if prices.priced else ZERO
        lines = self._lines(request.project_id, request.agent)
        if amount <= 0:
            self._reservations["unpriced"].inc()
            return router_pb2.ReserveResponse(
                currency=rules.currency, budgets=self._standing_protos(lines, include_all=False)
            )
        if self._ledger is None:
            if rules.any_limit:
                self._reservations["error"].inc()
                raise FailedPrecondition(
                    "budgets are set but routerd has no database_url: priced targets cannot be reserved",
                    reason="BUDGET_LEDGER_UNAVAILABLE",
                    metadata={"target": request.target},
                )
            self._reservations["unpriced"].inc()
            return router_pb2.ReserveResponse(currency=rules.currency)
        try:
            reservation = await self._ledger.reserve(
                request.job_id, request.attempt, request.target, lines, amount
            )
        except BudgetExceeded as err:
            self._reservations["budget_exceeded"].inc()
            overrun = err.overrun
            line = overrun.line
            raise ResourceExhausted(
                f"{line.scope} would pass its hard budget for {line.period_key}: spent "
                f"{overrun.spent.normalize()} + {overrun.amount.normalize()} > "
                f"{line.limit.hard.normalize()} {rules.currency}",
                reason="BUDGET_EXCEEDED",
                metadata={
                    "scope": line.scope,
                    "period": line.period.value,
                    "period_key": line.period_key,
                    "spent": str(overrun.spent.normalize()),
                    "hard_limit": str(line.limit.hard.normalize()),
                    "amount": str(overrun.amount.normalize()),
                    "currency": rules.currency,
                },
            ) from None
        except Exception:
            self._reservations["error"].inc()
            raise
        self._apply(reservation.balances)
        self._reservations["repeated" if reservation.repeated else "reserved"].inc()
        return router_pb2.ReserveResponse(
            reservation_id=reservation.reservation_id,
            amount=float(reservation.amount),
            currency=rules.currency,
            budgets=self._standing_protos(lines, include_all=True),
        )

    async def report_outcome(
        self, request: router_pb2.ReportOutcomeRequest
    ) -> router_pb2.ReportOutcomeResponse:
        """Settle an attempt and feed its target's breaker; a repeat changes nothing.

        Success, or failure with usage reported: the reservation is charged the real usage at
        the target's prices (never more than was reserved: a larger usage is clamped and
        logged) and the rest released. Failure without usage: the reservation is released.

        Raises:
            InvalidArgument: job_id or target empty, negative token counts.
            NotFound: RESERVATION_NOT_FOUND, reservation_id names no reservation.
            Unavailable: ROUTER_STARTING, the ledger did not get ready in time.
        """
        await self._until_ready()
        _require(request.job_id, "job_id")
        _require(request.target, "target")
        for name in ("input_tokens", "output_tokens"):
            if getattr(request, name) < 0:
                raise InvalidArgument(name, "must not be negative")
        holder = _holder(request.job_id, request.attempt)
        remembered = self._outcomes.get(holder)
        if remembered is not None:
            self._settlements["repeated"].inc()
            return remembered
        charged = ZERO
        if request.reservation_id:
            charged = await self._settle(request)
        else:
            self._settlements["unreserved"].inc()
        state = self._breakers.record(request.target, request.success, holder)
        position = "first" if request.attempt <= 1 else "fallback"
        self._attempts[("success" if request.success else "failure", position)].inc()
        if not request.success:
            log.info(
                "target %s failed an attempt (%s): breaker %s",
                request.target,
                request.cause or "UNSPECIFIED",
                state.value,
            )
        response = router_pb2.ReportOutcomeResponse(
            charged=float(charged), breaker=breaker_state_proto(state)
        )
        self._outcomes[holder] = response
        if len(self._outcomes) > _REMEMBERED_OUTCOMES:
            self._outcomes.popitem(last=False)
        return response

    async def _settle(self, request: router_pb2.ReportOutcomeRequest) -> Decimal:
        if self._ledger is None:
            return ZERO
        charged: Decimal | None = None
        if request.success or request.input_tokens or request.output_tokens:
            target = self._registry.get(request.target)
            if target is None:
                log.warning("target %s left the registry: charging its whole reservation", request.target)
                charged = Decimal("Infinity")
            else:
                prices = Prices(target.price_input_per_1k, target.price_output_per_1k)
                charged = prices.cost(request.input_tokens, request.output_tokens)
        settlement = await self._ledger.settle(request.reservation_id, charged)
        if settlement is None:
            raise NotFound(
                f"no reservation {request.reservation_id!r}",
                reason="RESERVATION_NOT_FOUND",
                metadata={"reservation_id": request.reservation_id},
            )
        self._apply(settlement.balances)
        if settlement.repeated:
            self._settlements["repeated"].inc()
        elif settlement.clamped:
            self._settlements["clamped"].inc()
            log.warning(
                "usage of job %s attempt %d on %s cost more than its reservation (%s): charged %s",
                request.job_id,
                request.attempt,
                request.target,
                settlement.reserved,
                settlement.charged,
            )
        else:
            self._settlements[settlement.state.value].inc()
        return settlement.charged

    async def release_stale(self) -> int:
        """Release open reservations older than the reservation TTL; returns how many budget
        balances changed."""
        if self._ledger is None:
            return 0
        changed = await self._ledger.release_stale(self._reservation_ttl)
        self._apply(changed)
        return len(changed)

    # -- internals -----------------------------------------------------------------------

    def _period_keys(self) -> PeriodKeys:
        now = self._clock()
        if now >= self._keys_until or now < self._keys_until - 86400:
            self._keys = period_keys(now)
            self._keys_until = next_day_start(now)
            self._standings_by_job.clear()
        return self._keys

    def _lines(self, project_id: str, agent: str) -> tuple[BudgetLine, ...]:
        keys = self._period_keys()
        return budget_lines(self._rules, project_id, agent, 0.0, keys=keys)

    def _budget_standings(self, project_id: str, agent: str) -> tuple[BudgetStanding, ...]:
        self._period_keys()  # first: a new period clears the cache
        cached = self._standings_by_job.get((project_id, agent))
        if cached is not None:
            return cached
        rules = self._rules
        out = []
        for line in self._lines(project_id, agent):
            spent = self._standings.spent(line.key)
            if line.limit.limited or spent > 0:
                out.append(standing(line, spent, rules.currency))
        standings = tuple(out)
        if len(self._standings_by_job) >= _CACHED_JOBS:
            self._standings_by_job.clear()
        self._standings_by_job[(project_id, agent)] = standings
        return standings

    def _standing_protos(
        self, lines: tuple[BudgetLine, ...], *, include_all: bool
    ) -> list[router_pb2.BudgetStanding]:
        out = []
        for line in lines:
            spent = self._standings.spent(line.key)
            if include_all or line.limit.limited or spent > 0:
                out.append(standing_proto(standing(line, spent, self._rules.currency)))
        return out

    def _apply(self, balances: tuple[Balance, ...]) -> None:
        if balances:
            self._standings.apply(balances)
            self._standings_by_job.clear()
            self._update_gauges()

    def _update_gauges(self) -> None:
        keys = self._period_keys()
        for kind in ("project", "agent"):
            for period in Period:
                key = keys.key(period)
                self._spent_gauge.labels(kind, period.value).set(float(self._standings.total(kind, key)))
                self._usage_gauge.labels(kind, period.value).set(self._largest_usage(kind, period, key))

    def _largest_usage(self, kind: str, period: Period, period_key: str) -> float:
        """The largest spent / limit of the budgets of ``kind`` in one period (0: none limited)."""
        largest = 0.0
        for scope, spent in self._standings.scopes(kind, period_key):
            limit = self._rules.limit(scope, period)
            bound = limit.hard if limit.hard > 0 else limit.soft
            if bound > 0:
                largest = max(largest, float(spent / bound))
        return largest

    def _update_breaker_gauge(self) -> None:
        known = {target.name for target in self._registry.targets}
        states = {t: s for t, s in self._breaker_states.items() if t in known}
        for state in Breaker:
            count = sum(1 for s in states.values() if s is state)
            if state is Breaker.CLOSED:
                count += len(known) - len(states)
            self._breakers_gauge.labels(state.value).set(count)

    def _on_transition(self, target: str, state: Breaker) -> None:
        self._transitions[state].inc()
        if state is Breaker.CLOSED:
            self._breaker_states.pop(target, None)
        else:
            self._breaker_states[target] = state
        self._update_breaker_gauge()
        log.warning("circuit breaker of %s is now %s", target, state.value, extra={"target": target})

    def _warn_if_unledgered(self) -> None:
        if self._ledger is None and self._rules.any_limit:
            log.error(
                "the policy sets budget limits but routerd has no database_url: "
                "Reserve on priced targets fails with BUDGET_LEDGER_UNAVAILABLE"
            )

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.release_stale()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("releasing stale budget reservations failed")


def _holder(job_id: str, attempt: int) -> str:
    return f"{job_id}/{attempt}"


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")

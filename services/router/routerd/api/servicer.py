"""hearth.api.router.v1.RouterService over the pure route() decision."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from opentelemetry import trace

from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.errors import HearthError, InvalidArgument, NotFound
from hearth.runtime import JOB_ID_ATTRIBUTE, ModelConfig, ServiceMetrics
from routerd.adapters.conformance_file import ConformanceFile
from routerd.domain.conformance import Check, Conformance, validate_checks, with_conformance
from routerd.domain.routing import ModelCatalog, RouteDecision, RouteFacts, route

#: Span attributes of a routing decision, besides the job id.
CHOSEN_ATTRIBUTE = "hearth.route.chosen"
POLICY_VERSION_ATTRIBUTE = "hearth.route.policy_version"

# Decision outcomes by error reason; anything else counts as "error", which
# keeps the metric's label set bounded.
_RESULTS = (
    "routed",
    "model_not_found",
    "context_too_long",
    "no_tool_capable_target",
    "invalid_field",
    "error",
)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """The RouterService RPC.

    Args:
        catalog: the models and default role every decision is made over.
        registry: the models config entries (engine, remote, tools), for ListTargets.
        conformance: where probe results are kept; loaded now, saved on each record.
        tracer: for the route span.
        metrics: registers hearth_router_decisions_total{result} on its registry.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        registry: list[ModelConfig],
        conformance: ConformanceFile,
        tracer: trace.Tracer,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base_catalog = catalog
        self._registry = {m.name: m for m in registry}
        self._conformance_file = conformance
        self._results = {n: r for n, r in conformance.load().items() if catalog.get(n) is not None}
        self._catalog = with_conformance(catalog, self._results)
        self._clock = clock
        self._tracer = tracer
        decisions = metrics.counter("decisions_total", "Route calls, by result.", ["result"])
        self._decisions = {result: decisions.labels(result) for result in _RESULTS}

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        with self._tracer.start_as_current_span(
            "router.route", attributes={JOB_ID_ATTRIBUTE: request.job_id}
        ) as span:
            try:
                decision = route(_facts(request), self._catalog)
            except HearthError as err:
                self._decisions.get(err.reason.lower(), self._decisions["error"]).inc()
                raise
            span.set_attribute(CHOSEN_ATTRIBUTE, decision.report.chosen_target)
            span.set_attribute(POLICY_VERSION_ATTRIBUTE, decision.report.policy_version)
            self._decisions["routed"].inc()
            return _response(decision)

    async def ListTargets(
        self, request: router_pb2.ListTargetsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListTargetsResponse:
        return router_pb2.ListTargetsResponse(targets=[self._target(m.name) for m in self._catalog.models])

    async def RecordConformance(
        self, request: router_pb2.RecordConformanceRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RecordConformanceResponse:
        if self._catalog.get(request.target) is None:
            raise NotFound(
                f"target {request.target!r} is not in the registry",
                reason="MODEL_NOT_FOUND",
                metadata={"model": request.target},
            )
        checks = tuple(Check(c.name, c.passed, c.detail) for c in request.checks)
        try:
            validate_checks(checks)
        except ValueError as err:
            raise InvalidArgument("checks", str(err)) from None
        results = {**self._results, request.target: Conformance(checks, self._clock())}
        self._conformance_file.save(results)
        self._results = results
        self._catalog = with_conformance(self._base_catalog, results)
        return router_pb2.RecordConformanceResponse(target=self._target(request.target))

    def _target(self, name: str) -> router_pb2.Target:
        model = self._catalog.get(name)
        assert model is not None
        entry = self._registry.get(name)
        target = router_pb2.Target(
            name=name,
            engine=model.engine,
            context_length=model.context_length,
            roles=model.roles,
            remote=entry.is_remote() if entry else False,
            supports_tools=entry.supports_tools if entry else False,
        )
        result = self._results.get(name)
        if result is not None:
            target.conformance.passed = result.passed
            target.conformance.checks.extend(
                router_pb2.ConformanceCheck(name=c.name, passed=c.passed, detail=c.detail)
                for c in result.checks
            )
            target.conformance.time.FromNanoseconds(int(result.time * 1e9))
        return target


def _facts(request: router_pb2.RouteRequest) -> RouteFacts:
    if request.prompt_tokens < 0:
        raise InvalidArgument("prompt_tokens", "must not be negative")
    if request.max_tokens < 0:
        raise InvalidArgument("max_tokens", "must not be negative")
    return RouteFacts(
        job_id=request.job_id,
        model=request.model,
        role=request.role,
        prompt_tokens=request.prompt_tokens,
        max_tokens=request.max_tokens,
        needs_tools=request.needs_tools,
    )


def _response(decision: RouteDecision) -> router_pb2.RouteResponse:
    report = decision.report
    return router_pb2.RouteResponse(
        chain=decision.chain,
        report=router_pb2.RoutingReport(
            schema_version=report.schema_version,
            policy_version=report.policy_version,
            chosen_target=report.chosen_target,
            candidates=[
                router_pb2.RouteCandidate(
                    target=c.target, selected=c.selected, reason=c.reason, detail=c.detail
                )
                for c in report.candidates
            ],
            matched_rules=report.matched_rules,
        ),
    )

"""hearth.api.router.v1.RouterService over the pure route() decision."""

from __future__ import annotations

import grpc
from opentelemetry import trace

from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.errors import HearthError, InvalidArgument
from hearth.runtime import JOB_ID_ATTRIBUTE, ServiceMetrics
from routerd.domain.routing import ModelCatalog, RouteDecision, RouteFacts, route

#: Span attributes of a routing decision, besides the job id.
CHOSEN_ATTRIBUTE = "hearth.route.chosen"
POLICY_VERSION_ATTRIBUTE = "hearth.route.policy_version"

# Decision outcomes by error reason; anything else counts as "error", which
# keeps the metric's label set bounded.
_RESULTS = ("routed", "model_not_found", "context_too_long", "invalid_field", "error")


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """The RouterService RPC.

    Args:
        catalog: the models and default role every decision is made over.
        tracer: for the route span.
        metrics: registers hearth_router_decisions_total{result} on its registry.
    """

    def __init__(self, catalog: ModelCatalog, *, tracer: trace.Tracer, metrics: ServiceMetrics) -> None:
        self._catalog = catalog
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

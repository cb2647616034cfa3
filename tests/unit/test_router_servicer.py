"""RouterServicer: request validation, the proto report, the span and metrics."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hearth.api.router.v1 import router_pb2
from hearth.errors import InvalidArgument, NotFound
from hearth.runtime import JOB_ID_ATTRIBUTE, ServiceMetrics
from routerd.api.servicer import RouterServicer
from routerd.domain.routing import CatalogModel, ModelCatalog

pytestmark = pytest.mark.unit

CATALOG = ModelCatalog.of(
    [CatalogModel("small", 4096, ("default",)), CatalogModel("coder", 8192, ("coder",))]
)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("router")


@pytest.fixture
def servicer(spans: InMemorySpanExporter, metrics: ServiceMetrics) -> RouterServicer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return RouterServicer(CATALOG, tracer=provider.get_tracer("test"), metrics=metrics)


async def test_route_answers_the_chain_and_the_report(
    servicer: RouterServicer, spans: InMemorySpanExporter, metrics: ServiceMetrics
) -> None:
    reply = await servicer.Route(router_pb2.RouteRequest(job_id="job-3", role="coder", max_tokens=10), None)
    assert list(reply.chain) == ["coder", "small"]
    assert reply.report.schema_version == 1
    assert reply.report.policy_version == CATALOG.version
    assert [(c.target, c.selected, c.reason) for c in reply.report.candidates] == [
        ("coder", True, "ROLE_DEFAULT"),
        ("small", False, "ROLE_FALLBACK"),
    ]
    assert list(reply.report.matched_rules) == ["role_default:coder", "role_fallback:default"]
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[JOB_ID_ATTRIBUTE] == "job-3"
    assert span.attributes["hearth.route.chosen"] == "coder"
    assert metrics.registry.get_sample_value("hearth_router_decisions_total", {"result": "routed"}) == 1.0


async def test_failures_are_counted_by_reason(servicer: RouterServicer, metrics: ServiceMetrics) -> None:
    with pytest.raises(NotFound):
        await servicer.Route(router_pb2.RouteRequest(job_id="j", model="nope"), None)
    with pytest.raises(InvalidArgument) as too_long:
        await servicer.Route(router_pb2.RouteRequest(job_id="j", prompt_tokens=9000, max_tokens=1), None)
    assert too_long.value.reason == "CONTEXT_TOO_LONG"
    count = metrics.registry.get_sample_value
    assert count("hearth_router_decisions_total", {"result": "model_not_found"}) == 1.0
    assert count("hearth_router_decisions_total", {"result": "context_too_long"}) == 1.0


@pytest.mark.parametrize("field", ["prompt_tokens", "max_tokens"])
async def test_negative_token_counts_are_invalid(servicer: RouterServicer, field: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await servicer.Route(router_pb2.RouteRequest(job_id="j", **{field: -1}), None)
    assert bad.value.field == field

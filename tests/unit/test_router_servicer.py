"""RouterServicer: request validation, the proto report, the span and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hearth.api.router.v1 import router_pb2
from hearth.errors import FailedPrecondition, InvalidArgument, NotFound
from hearth.runtime import JOB_ID_ATTRIBUTE, ModelConfig, ServiceMetrics
from routerd.adapters.conformance_file import ConformanceFile
from routerd.api.servicer import RouterServicer
from routerd.domain.conformance import CHECK_NAMES
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


def make_servicer(
    conformance: Path, spans: InMemorySpanExporter | None = None, metrics: ServiceMetrics | None = None
) -> RouterServicer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans or InMemorySpanExporter()))
    return RouterServicer(
        CATALOG,
        registry=[ModelConfig(name="small", engine="sim"), ModelConfig(name="coder", engine="openai")],
        conformance=ConformanceFile(conformance),
        tracer=provider.get_tracer("test"),
        metrics=metrics or ServiceMetrics("router"),
        clock=lambda: 1_700_000_000.0,
    )


@pytest.fixture
def servicer(tmp_path: Path, spans: InMemorySpanExporter, metrics: ServiceMetrics) -> RouterServicer:
    return make_servicer(tmp_path / "conformance.json", spans, metrics)


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


def checks(*failing: str) -> list[router_pb2.ConformanceCheck]:
    return [router_pb2.ConformanceCheck(name=n, passed=n not in failing, detail="seen") for n in CHECK_NAMES]


async def test_a_tools_job_waits_for_a_passed_probe_and_the_result_survives_a_restart(tmp_path: Path) -> None:
    servicer = make_servicer(tmp_path / "router" / "conformance.json")
    tools_job = router_pb2.RouteRequest(job_id="j", role="coder", max_tokens=10, needs_tools=True)
    with pytest.raises(FailedPrecondition) as refused:
        await servicer.Route(tools_job, None)
    assert refused.value.reason == "NO_TOOL_CAPABLE_TARGET"

    failed = await servicer.RecordConformance(
        router_pb2.RecordConformanceRequest(target="coder", checks=checks("ARGUMENTS_PARSE")), None
    )
    assert not failed.target.conformance.passed
    passed = await servicer.RecordConformance(
        router_pb2.RecordConformanceRequest(target="small", checks=checks()), None
    )
    assert passed.target.conformance.passed and passed.target.engine == ""

    reply = await make_servicer(tmp_path / "router" / "conformance.json").Route(tools_job, None)
    assert list(reply.chain) == ["small"]
    assert [(c.target, c.reason) for c in reply.report.candidates] == [
        ("coder", "TOOLS_NOT_CONFORMANT"),
        ("small", "ROLE_DEFAULT"),
    ]
    assert reply.report.policy_version != CATALOG.version  # the results are part of the policy
    listed = await make_servicer(tmp_path / "router" / "conformance.json").ListTargets(
        router_pb2.ListTargetsRequest(), None
    )
    assert [(t.name, t.conformance.passed, len(t.conformance.checks)) for t in listed.targets] == [
        ("small", True, 4),
        ("coder", False, 4),
    ]


async def test_a_probe_result_must_carry_every_check_for_a_known_target(servicer: RouterServicer) -> None:
    with pytest.raises(NotFound):
        await servicer.RecordConformance(
            router_pb2.RecordConformanceRequest(target="x", checks=checks()), None
        )
    with pytest.raises(InvalidArgument) as bad:
        await servicer.RecordConformance(
            router_pb2.RecordConformanceRequest(target="small", checks=checks()[:2]), None
        )
    assert bad.value.field == "checks"

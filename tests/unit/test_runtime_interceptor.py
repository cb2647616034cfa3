"""The server interceptor: spans parented by the caller, RPC metrics on
/metrics, and errors as statuses."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.embedded import free_port
from hearth.errors import NotFound
from hearth.runtime.interceptors import RpcInterceptor, client_interceptors
from hearth.runtime.metrics import ServiceMetrics

pytestmark = pytest.mark.unit


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _Router(router_pb2_grpc.RouterServiceServicer):
    async def Route(self, request, context):
        if request.model == "missing":
            raise NotFound("no such model", reason="MODEL_NOT_FOUND")
        return router_pb2.RouteResponse(chain=[request.model])


async def test_spans_metrics_and_errors(tmp_path: Path) -> None:
    spans = _Collect()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    metrics = ServiceMetrics("router")
    metrics_port = metrics.serve(f"127.0.0.1:{free_port()}")

    server = grpc.aio.server(interceptors=[RpcInterceptor(tracer, metrics)])
    router_pb2_grpc.add_RouterServiceServicer_to_server(_Router(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=client_interceptors(tracer)
        ) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert list((await stub.Route(router_pb2.RouteRequest(model="m"))).chain) == ["m"]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Route(router_pb2.RouteRequest(model="missing"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)

    by_kind = {(s.kind.name, s.status.status_code.name) for s in spans.spans}
    assert ("SERVER", "UNSET") in by_kind and ("SERVER", "ERROR") in by_kind
    client = [s for s in spans.spans if s.kind.name == "CLIENT"]
    server_spans = [s for s in spans.spans if s.kind.name == "SERVER"]
    assert len(client) == len(server_spans) == 2
    # Each server span is the child of its client span: one trace per call.
    for srv in server_spans:
        assert srv.parent is not None
        assert any(c.context.span_id == srv.parent.span_id for c in client)
        assert srv.name == "/hearth.api.router.v1.RouterService/Route"

    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    metrics.stop()
    assert 'hearth_router_rpcs_total{code="OK",method="Route"} 1.0' in body
    assert 'hearth_router_rpcs_total{code="NOT_FOUND",method="Route"} 1.0' in body
    assert "hearth_router_rpc_duration_seconds_bucket" in body

"""The server and client interceptors of every Hearth service.

One server interceptor does the three things every RPC needs, in one wrapper
(each wrapper layer costs a coroutine per call, and RPCs are on every job's hot
path): a SERVER span parented by the caller's W3C trace context, the RPC
counters and latency histogram, and the error mapping: our exceptions become
google.rpc.Status with an ErrorInfo; anything unexpected becomes INTERNAL with
a generic text and the details in the log.

The client interceptors start a CLIENT span and send its context in the call
metadata, so the callee's spans join the caller's trace. Only Hearth's own
services (``/hearth.``) are traced: health checks and reflection are noise.

These are written for Hearth rather than taken from
opentelemetry-instrumentation-grpc, whose interceptors cost about 0.4 ms per
hop on this class of machine (measured), four hops per job's first token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from hearth.errors import HearthError, Internal
from hearth.runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)

_TRACED_PREFIX = "/hearth."


async def _abort(context: grpc.aio.ServicerContext, method: str, err: BaseException) -> None:
    if not isinstance(err, HearthError):
        log.exception("unexpected error in %s", method, exc_info=err)
        err = Internal("internal error; see the service log")
    await context.abort(err.code, err.message, trailing_metadata=err.trailing_metadata())


def _status_name(context: grpc.aio.ServicerContext, err: BaseException | None) -> str:
    if isinstance(err, HearthError):
        return err.code.name
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    if err is not None and not isinstance(err, grpc.aio.AbortError):
        return "INTERNAL"
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Tracing, metrics and error mapping for every RPC of a server.

    Args:
        tracer: starts SERVER spans for Hearth's RPCs; None traces nothing.
        metrics: counts RPCs and their duration; None counts nothing.
    """

    def __init__(self, tracer: Tracer | None = None, metrics: ServiceMetrics | None = None) -> None:
        self._tracer = tracer
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        path = details.method
        tracer = self._tracer if path.startswith(_TRACED_PREFIX) else None
        metrics = self._metrics if path.startswith(_TRACED_PREFIX) else None
        method = path.rsplit("/", 1)[-1]

        def begin(context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
            if tracer is None:
                return None, None
            parent = propagate.extract(dict(context.invocation_metadata() or ()))
            span = tracer.start_span(
                path,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": method},
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            return span, token

        def finish(
            context: grpc.aio.ServicerContext,
            span: Any,
            token: Any,
            started: float,
            err: BaseException | None,
        ) -> None:
            status = _status_name(context, err)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", status)
                if status not in ("OK", "CANCELLED"):
                    span.set_status(Status(StatusCode.ERROR, status))
                span.end()
                otel_context.detach(token)
            if metrics is not None:
                metrics.rpcs.labels(method, status).inc()
                metrics.rpc_seconds.labels(method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                span, token = begin(context)
                error: BaseException | None = None
                try:
                    return await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError) as err:
                    error = err
                    raise
                except Exception as err:  # the one place errors become statuses
                    error = err
                    await _abort(context, path, err)
                finally:
                    finish(context, span, token, started, error)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                span, token = begin(context)
                error: BaseException | None = None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit) as err:
                    error = None if isinstance(err, GeneratorExit) else err
                    raise
                except Exception as err:
                    error = err
                    await _abort(context, path, err)
                finally:
                    finish(context, span, token, started, error)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def ErrorInterceptor() -> RpcInterceptor:
    """The error mapping alone (no tracing, no metrics), for tests and tools."""
    return RpcInterceptor()


def _traced_details(details: grpc.aio.ClientCallDetails, span: trace.Span) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    metadata = list(details.metadata or ()) + list(carrier.items())
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


class _ClientUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        name = _method_name(details)
        if not name.startswith(_TRACED_PREFIX):
            return await continuation(details, request)
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"}
        ) as span:
            call = await continuation(_traced_details(details, span), request)
            try:
                await call
            except grpc.aio.AioRpcError as err:
                span.set_attribute("rpc.grpc.status_code", err.code().name)
                span.set_status(Status(StatusCode.ERROR, err.code().name))
            return call


class _ClientStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        name = _method_name(details)
        if not name.startswith(_TRACED_PREFIX):
            return await continuation(details, request)
        # The span covers the whole stream: it ends when the call is done.
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"})
        call = await continuation(_traced_details(details, span), request)

        def done(finished: Any) -> None:
            code = finished.code() if hasattr(finished, "code") else None
            if code is not None and code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

        call.add_done_callback(done)
        return call


def client_interceptors(tracer: Tracer) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel from one Hearth service to another."""
    return [_ClientUnary(tracer), _ClientStream(tracer)]

"""Per-request telemetry of the HTTP API: a server span, metrics, and the
last-resort 500 for an error nothing else answered."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.runtime import ServiceMetrics
from orchestratord.api.openai_http.errors import internal_error

log = logging.getLogger(__name__)

#: The route label of a request that matched no route (keeps labels bounded).
UNMATCHED_ROUTE = "unmatched"


class HttpMetrics:
    """The HTTP API's metrics, on the service's registry:
    ``hearth_orchestrator_http_requests_total{route,status}`` and
    ``hearth_orchestrator_http_request_duration_seconds{route,status}``.
    ``route`` is the route's template (``/v1/models/{model_id:path}``), never
    the raw path."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.requests: Counter = metrics.counter(
            "http_requests_total", "HTTP API requests, by route and status.", ["route", "status"]
        )
        self.seconds: Histogram = metrics.histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP API request (a stream: until it ends), by route and status.",
            ["route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.seconds.labels(route, str(status)).observe(seconds)


class RequestTelemetry:
    """ASGI middleware around the app.

    Each HTTP request runs in a server span named ``<METHOD> <route>`` (e.g.
    ``POST /v1/chat/completions``), a child of the caller's W3C trace context
    when it sends one. The span is current while the request runs, so a job
    submitted by it starts its trace there (the endpoint adds the job id).
    An exception that escapes the app is logged and answered with a generic
    500 in OpenAI's shape, when the response has not started yet.
    """

    def __init__(self, app: ASGIApp, tracer: Tracer, metrics: HttpMetrics) -> None:
        self.app = app
        self._tracer = tracer
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", ())}
        status = 500
        response_started = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        began = time.perf_counter()
        with self._tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_and_watch)
            except Exception:
                log.exception("HTTP %s %s failed", method, scope.get("path", ""))
                if not response_started:
                    await _send_error(send_and_watch)
            finally:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                if route != UNMATCHED_ROUTE:
                    span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self._metrics.observe(route, status, time.perf_counter() - began)


async def _send_error(send: Send) -> None:
    error = internal_error()
    body: Any = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})

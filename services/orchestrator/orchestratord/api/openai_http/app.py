"""The OpenAI-compatible HTTP API as an ASGI app (FastAPI).

Routes (all under ``/v1``, behind the API keys when any are configured):
``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/embeddings``. Every error is in OpenAI's shape (see ``errors``).
The endpoints are thin: read and check the body, convert, call the job
service or memoryd, convert the answer.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from opentelemetry.trace import Tracer
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hearth.errors import HearthError
from hearth.runtime import JOB_ID_ATTRIBUTE, ModelConfig
from orchestratord.api.openai_http.auth import ApiKeys
from orchestratord.api.openai_http.completions import (
    ChatRequest,
    CompletionWriter,
    JobTicket,
    chat_request_from_body,
    collect_completion,
    stream_completion,
)
from orchestratord.api.openai_http.errors import (
    OpenAIError,
    embedding_param,
    from_hearth_error,
    from_validation_errors,
    openai_param,
)
from orchestratord.api.openai_http.inflight import (
    JobEventStream,
    JobRequests,
    race_client,
    shutting_down_error,
)
from orchestratord.api.openai_http.ports import ChatJobs, Embeddings
from orchestratord.api.openai_http.schemas import ChatCompletionBody, EmbeddingBody
from orchestratord.api.openai_http.telemetry import HttpMetrics, RequestTelemetry

#: The response header that names the job a chat completion ran as.
JOB_ID_HEADER = "X-Hearth-Job-Id"
#: Names /v1/embeddings accepts for memoryd's model besides its own (and
#: the last part of it, e.g. all-MiniLM-L6-v2).
EMBEDDING_MODEL_ALIASES = frozenset({"", "default"})
#: Status recorded for a request whose client went away before the answer.
CLIENT_CLOSED_REQUEST = 499

Body = TypeVar("Body", bound=BaseModel)


def create_app(
    jobs: ChatJobs,
    embeddings: Embeddings,
    models: Sequence[ModelConfig],
    *,
    requests: JobRequests,
    api_keys: ApiKeys,
    tracer: Tracer,
    metrics: HttpMetrics,
    max_request_bytes: int = 8 * 1024 * 1024,
    created: float | None = None,
) -> FastAPI:
    """The HTTP API over the job service and memoryd.

    Args:
        jobs: submits, watches, cancels and reads jobs (the JobService).
        embeddings: memoryd's Embed.
        models: the models registry (``settings.models``) listed by /v1/models.
        requests: the job-owning requests in flight (shared with the server,
            which closes them at shutdown).
        api_keys: empty: no authentication.
        tracer: the host's tracer, for the per-request server spans.
        metrics: request counter and latency histogram.
        max_request_bytes: larger bodies are refused with 413.
        created: the ``created`` time of the listed models (epoch seconds);
            defaults to now.
    """
    models_created = int(time.time() if created is None else created)
    app = FastAPI(title="Hearth (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestTelemetry, tracer=tracer, metrics=metrics)
    _add_error_handlers(app)

    def authenticate(request: Request) -> None:
        api_keys.check(request.headers.get("authorization"))

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])

    @v1.post("/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        body = _parse(ChatCompletionBody, await read_json_object(request, max_request_bytes))
        chat = chat_request_from_body(body, request.headers)
        try:
            submitted = await jobs.submit(chat.draft)
        except HearthError as err:
            raise from_hearth_error(
                err, param_of=partial(openai_param, max_tokens_name=chat.max_tokens_name)
            ) from None
        job = submitted.job
        trace.get_current_span().set_attribute(JOB_ID_ATTRIBUTE, job.job_id)
        ticket = JobTicket(job.job_id)
        writer = CompletionWriter(job.job_id, job.created_at, body.model, include_usage=chat.include_usage)
        if chat.stream:
            return JobEventStream(
                stream_completion(jobs, ticket, writer),
                ticket,
                requests,
                headers={JOB_ID_HEADER: job.job_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(request, chat, ticket, writer)

    async def _complete(
        request: Request, chat: ChatRequest, ticket: JobTicket, writer: CompletionWriter
    ) -> Response:
        """Wait for the job's end, the client going away, or the server closing."""
        headers = {JOB_ID_HEADER: ticket.job_id}
        with requests.track(ticket):
            raced = await race_client(
                collect_completion(jobs, ticket, writer), request.receive, requests.closing
            )
            collect = raced.work
            if collect.done() and not collect.cancelled():
                problem = collect.exception()
                if isinstance(problem, OpenAIError):
                    problem.headers.update(headers)
                    raise problem
                if problem is not None:
                    raise problem
                return JSONResponse(collect.result(), headers=headers)
            if raced.client_gone:
                return Response(status_code=CLIENT_CLOSED_REQUEST, headers=headers)
            error = shutting_down_error()
            error.headers.update(headers)
            raise error

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_object(m.name, models_created) for m in models]}

    @v1.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        for model in models:
            if model.name == model_id:
                return _model_object(model.name, models_created)
        raise OpenAIError(
            404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found"
        )

    @v1.post("/embeddings")
    async def create_embeddings(request: Request) -> dict[str, Any]:
        body = _parse(EmbeddingBody, await read_json_object(request, max_request_bytes))
        texts, single = embedding_inputs(body.input)
        if body.encoding_format not in ("float", "base64"):
            raise OpenAIError(
                400,
                "encoding_format must be 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        try:
            batch = await embeddings.embed(texts)
        except HearthError as err:
            raise from_hearth_error(err, param_of=partial(embedding_param, single=single)) from None
        # Checked after the call: only memoryd knows its model's name.
        if not embedding_model_matches(body.model, batch.model):
            raise OpenAIError(
                404,
                f"The model '{body.model}' does not exist; embeddings come from '{batch.model}'.",
                param="model",
                code="model_not_found",
            )
        if body.dimensions is not None and body.dimensions != batch.dimension:
            raise OpenAIError(
                400,
                f"The embedding model has {batch.dimension} dimensions; others are not supported.",
                param="dimensions",
                code="unsupported_value",
            )
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode_vector(vector, body.encoding_format),
                }
                for index, vector in enumerate(batch.vectors)
            ],
            "model": batch.model,
            "usage": {"prompt_tokens": batch.input_tokens, "total_tokens": batch.input_tokens},
        }

    app.include_router(v1)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def openai_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def hearth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HearthError)
        return await openai_error(request, from_hearth_error(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await openai_error(request, from_validation_errors(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            error = OpenAIError(
                404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
            )
        elif exc.status_code == 405:
            error = OpenAIError(
                405,
                f"Method {request.method} is not allowed for {request.url.path}.",
                code="method_not_allowed",
            )
        else:
            error = OpenAIError(exc.status_code, str(exc.detail), code=None)
        error.headers.update(exc.headers or {})
        return await openai_error(request, error)

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(HearthError, hearth_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, at most ``limit`` bytes (413 past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        value = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise OpenAIError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    return value


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


def _parse(model: type[Body], data: dict[str, Any]) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise from_validation_errors(err.errors()) from None


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "hearth"}


def embedding_inputs(value: Any) -> tuple[list[str], bool]:
    """The texts of an embeddings request and whether it was a single string.

    Raises:
        OpenAIError: 400 for token arrays, an empty list or anything but text.
    """
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list) or not value:
        raise OpenAIError(
            400, "input must be a string or a non-empty list of strings.", param="input", code="invalid_value"
        )
    for index, item in enumerate(value):
        if isinstance(item, int | list):
            raise OpenAIError(
                400,
                "Token arrays are not supported as input; send text.",
                param="input",
                code="unsupported_value",
            )
        if not isinstance(item, str):
            raise OpenAIError(
                400, "Each input must be a string.", param=f"input[{index}]", code="invalid_value"
            )
    return list(value), False


def embedding_model_matches(asked: str, actual: str) -> bool:
    """Whether ``asked`` names memoryd's embedding model: omitted, "default",
    its full name or the last part of it, in any case."""
    asked = asked.strip().lower()
    actual = actual.lower()
    return asked in EMBEDDING_MODEL_ALIASES or asked in (actual, actual.rsplit("/", 1)[-1])


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """float: the list; base64: little-endian float32 bytes, base64, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector

"""The OpenAI-compatible HTTP API as an ASGI app (FastAPI).

Routes (all under ``/v1``, behind the API keys when any are configured):
``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/embeddings``, the Anthropic Messages API (``POST /v1/messages``,
``POST /v1/messages/count_tokens``) and the OpenAI Responses API (``POST
/v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``). Errors are in
OpenAI's shape (see ``errors``), under /v1/messages in Anthropic's. Every
request that asks a model is one job, submitted, watched and cancelled on
disconnect the same way (``_JobCalls``).
The endpoints are thin: read and check the body, convert, call the job
service or memoryd, convert the answer.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
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
from orchestratord.api.openai_http import anthropic_messages, responses
from orchestratord.api.openai_http.auth import ApiKeys
from orchestratord.api.openai_http.completions import (
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
from orchestratord.api.openai_http.job_answers import Answer, answer_events, collect_answer
from orchestratord.api.openai_http.ports import ChatJobs, Embeddings, ResponseStore, StoredResponse
from orchestratord.api.openai_http.schemas import (
    ChatCompletionBody,
    CountTokensBody,
    EmbeddingBody,
    MessagesBody,
    ResponsesBody,
)
from orchestratord.api.openai_http.telemetry import HttpMetrics, RequestTelemetry
from orchestratord.domain.service import SubmitResult
from orchestratord.domain.validation import JobDraft

#: The response header that names the job a chat completion ran as.
JOB_ID_HEADER = "X-Hearth-Job-Id"
#: Names /v1/embeddings accepts for memoryd's model besides its own (and
#: the last part of it, e.g. all-MiniLM-L6-v2).
EMBEDDING_MODEL_ALIASES = frozenset({"", "default"})
#: Status recorded for a request whose client went away before the answer.
CLIENT_CLOSED_REQUEST = 499
#: Routes whose errors are in Anthropic's shape.
ANTHROPIC_PREFIX = "/v1/messages"
#: The key header Anthropic clients send (``Authorization: Bearer`` works too).
ANTHROPIC_KEY_HEADER = "x-api-key"
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

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
    stored_responses: ResponseStore | None = None,
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
        stored_responses: where /v1/responses keeps responses (``store``,
            ``previous_response_id``, GET, DELETE); None: nothing is stored
            and previous_response_id is refused.
    """
    models_created = int(time.time() if created is None else created)
    app = FastAPI(title="Hearth (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestTelemetry, tracer=tracer, metrics=metrics)
    _add_error_handlers(app)

    def authenticate(request: Request) -> None:
        authorization = request.headers.get("authorization")
        key = request.headers.get(ANTHROPIC_KEY_HEADER, "").strip()
        api_keys.check(authorization if authorization or not key else f"Bearer {key}")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)])
    calls = _JobCalls(jobs, requests)

    @v1.post("/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        body = _parse(ChatCompletionBody, await read_json_object(request, max_request_bytes))
        chat = chat_request_from_body(body, request.headers)
        job = await calls.submit(chat.draft, partial(openai_param, max_tokens_name=chat.max_tokens_name))
        ticket = JobTicket(job.job_id)
        writer = CompletionWriter(job.job_id, job.created_at, body.model, include_usage=chat.include_usage)
        if chat.stream:
            return calls.stream(stream_completion(jobs, ticket, writer), ticket)
        return await calls.complete(request, ticket, collect_completion(jobs, ticket, writer))

    @v1.post("/messages")
    async def create_message(request: Request) -> Response:
        body = _parse(MessagesBody, await read_json_object(request, max_request_bytes))
        asked = anthropic_messages.messages_request_from_body(body, request.headers, models)
        job = await calls.submit(asked.draft, asked.param_of)
        ticket = JobTicket(job.job_id)
        answer = partial(
            answer_events, jobs, ticket, stop_sequences=asked.stop_sequences, stop=requests.abandon
        )
        if asked.stream:
            return calls.stream(
                anthropic_messages.stream_message(answer(), job.job_id, asked.model),
                ticket,
                error_event=anthropic_messages.anthropic_error_event,
            )

        async def message() -> dict[str, Any]:
            whole = await collect_answer(
                jobs, ticket, asked.model, stop_sequences=asked.stop_sequences, stop=requests.abandon
            )
            return anthropic_messages.message_json(job.job_id, whole)

        return await calls.complete(request, ticket, message())

    @v1.post("/messages/count_tokens")
    async def count_message_tokens(request: Request) -> dict[str, Any]:
        body = _parse(CountTokensBody, await read_json_object(request, max_request_bytes))
        return {"input_tokens": anthropic_messages.count_tokens(body)}

    @v1.post("/responses")
    async def create_response(request: Request) -> Response:
        body = _parse(ResponsesBody, await read_json_object(request, max_request_bytes))
        project = request.headers.get(responses.PROJECT_HEADER, "").strip()
        previous = None
        if body.previous_response_id:
            previous = await _stored_response(
                body.previous_response_id, project, param="previous_response_id"
            )
        asked = responses.responses_request_from_body(body, request.headers, models, previous)
        job = await calls.submit(asked.draft, asked.param_of)
        ticket = JobTicket(job.job_id)
        writer = responses.ResponseWriter(job.job_id, job.created_at, asked.echo)

        async def keep(answer: Answer, final: dict[str, Any]) -> None:
            if not asked.store or stored_responses is None:
                return
            conversation = (*asked.history, responses.answer_message(answer))
            stored = StoredResponse(
                writer.id,
                project,
                job.job_id,
                body.previous_response_id or "",
                job.created_at,
                conversation,
                final,
            )
            try:
                await stored_responses.save(stored)
            except HearthError as err:
                raise from_hearth_error(err) from None

        if asked.stream:
            return calls.stream(
                responses.stream_response(answer_events(jobs, ticket), writer, keep),
                ticket,
                error_event=responses.error_event,
            )

        async def response() -> dict[str, Any]:
            answer = await collect_answer(jobs, ticket, writer.model)
            final = writer.final(answer)
            await keep(answer, final)
            return final

        return await calls.complete(request, ticket, response())

    async def _stored_response(response_id: str, project: str, *, param: str | None = None) -> StoredResponse:
        if stored_responses is None:
            raise OpenAIError(
                400, "This server does not store responses.", param=param, code="unsupported_parameter"
            )
        try:
            found = await stored_responses.load(response_id, project)
        except HearthError as err:
            raise from_hearth_error(err) from None
        if found is None:
            raise OpenAIError(
                404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found"
            )
        return found

    @v1.get("/responses/{response_id}")
    async def retrieve_response(request: Request, response_id: str) -> dict[str, Any]:
        project = request.headers.get(responses.PROJECT_HEADER, "").strip()
        return dict((await _stored_response(response_id, project)).body)

    @v1.delete("/responses/{response_id}")
    async def delete_response(request: Request, response_id: str) -> dict[str, Any]:
        project = request.headers.get(responses.PROJECT_HEADER, "").strip()
        await _stored_response(response_id, project)
        try:
            deleted = stored_responses is not None and await stored_responses.delete(response_id, project)
        except HearthError as err:
            raise from_hearth_error(err) from None
        if not deleted:
            raise OpenAIError(404, f"Response with id '{response_id}' not found.", code="response_not_found")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

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


class _JobCalls:
    """The one way every endpoint that asks a model runs its job: submit the
    draft (validated, routed, budgeted, persisted, traced under the request's
    span), then either stream its answer (:class:`JobEventStream`) or wait
    for it while watching for the client going away and the server closing;
    a request that ends before its job cancels it (:class:`JobRequests`)."""

    def __init__(self, jobs: ChatJobs, requests: JobRequests) -> None:
        self._jobs = jobs
        self._requests = requests

    async def submit(self, draft: JobDraft, param_of: Callable[[str], str | None]) -> Any:
        """The job's snapshot; Hearth errors as HTTP errors, their field named by ``param_of``."""
        try:
            submitted: SubmitResult = await self._jobs.submit(draft)
        except HearthError as err:
            raise from_hearth_error(err, param_of=param_of) from None
        trace.get_current_span().set_attribute(JOB_ID_ATTRIBUTE, submitted.job.job_id)
        return submitted.job

    def stream(
        self,
        events: AsyncGenerator[bytes, None],
        ticket: JobTicket,
        *,
        error_event: Callable[[OpenAIError], bytes] | None = None,
    ) -> Response:
        return JobEventStream(
            events,
            ticket,
            self._requests,
            headers={JOB_ID_HEADER: ticket.job_id, **_STREAM_HEADERS},
            error_event=error_event,
        )

    async def complete(
        self, request: Request, ticket: JobTicket, work: Coroutine[Any, Any, Mapping[str, Any]]
    ) -> Response:
        """Wait for ``work`` (the whole answer), the client going away, or the server closing."""
        headers = {JOB_ID_HEADER: ticket.job_id}
        with self._requests.track(ticket):
            raced = await race_client(work, request.receive, self._requests.closing)
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


def _add_error_handlers(app: FastAPI) -> None:
    async def openai_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIError)
        if request.url.path.startswith(ANTHROPIC_PREFIX):
            body = anthropic_messages.anthropic_error_body(exc)
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)
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

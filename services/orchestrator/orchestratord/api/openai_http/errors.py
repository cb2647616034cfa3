"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure of the HTTP API becomes an :class:`OpenAIError` with an HTTP
status: Hearth errors by their class and reason (:func:`from_hearth_error`),
a job that failed after it was accepted by its end reason
(:func:`from_job_failure`), a request body that does not validate by the
field it names (:func:`from_validation_errors`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hearth import errors

#: Error types, as OpenAI names them.
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_error"


class OpenAIError(Exception):
    """An error answer of the HTTP API.

    Args:
        status: the HTTP status.
        message: for people.
        type: ``invalid_request_error``, ``rate_limit_error`` or ``server_error``.
        param: the request field it is about, as OpenAI names fields
            (``messages[2].role``), or None.
        code: a stable lower-case code (the Hearth reason, lower-cased), or None.
        headers: extra response headers (Retry-After, x-should-retry).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


GENERIC_MESSAGE = "The server had an error while processing your request."


def internal_error() -> OpenAIError:
    """The answer to anything unexpected: no details (they are in the log)."""
    return OpenAIError(500, GENERIC_MESSAGE, type=SERVER_ERROR, code="internal")


# --- Hearth field paths -> OpenAI parameter names ---------------------------

#: (pattern, replacement) over a field path with its ``spec.`` prefix removed.
_FIELD_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^prompt$", "messages"),
        (r"^tools\[(\d+)\]\.parameters_json$", r"tools[\1].function.parameters"),
        (r"^tools\[(\d+)\]\.(name|description)$", r"tools[\1].function.\2"),
        (
            r"^messages\[(\d+)\]\.tool_calls\[(\d+)\]\.arguments_json$",
            r"messages[\1].tool_calls[\2].function.arguments",
        ),
        (r"^messages\[(\d+)\]\.tool_calls\[(\d+)\]\.name$", r"messages[\1].tool_calls[\2].function.name"),
        (r"^labels(.*)$", r"metadata\1"),
        (r"^project_id$", "X-Hearth-Project"),
        (r"^role$", "X-Hearth-Role"),
    )
)


def openai_param(field: str, *, max_tokens_name: str = "max_tokens") -> str | None:
    """The OpenAI parameter a Hearth field path is about: ``spec.messages[2].role``
    -> ``messages[2].role``, ``spec.max_tokens`` -> ``max_tokens`` (or
    ``max_completion_tokens`` when the request used that name),
    ``spec.tools[0].parameters_json`` -> ``tools[0].function.parameters``.
    Fields set from headers are named by the header."""
    name = field.removeprefix("spec.")
    if not name:
        return None
    if name == "max_tokens":
        return max_tokens_name
    for pattern, replacement in _FIELD_RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name


def embedding_param(field: str, *, single: bool) -> str | None:
    """memoryd's Embed fields (``inputs``, ``inputs[i]``) as /v1/embeddings
    names them (``input``, ``input[i]``; just ``input`` for a single string)."""
    if not field.startswith("inputs"):
        return field or None
    if single:
        return "input"
    return "input" + field.removeprefix("inputs")


# --- Hearth errors -----------------------------------------------------------

#: Hearth reasons whose OpenAI code differs from the lower-cased reason.
_CODES = {"CONTEXT_TOO_LONG": "context_length_exceeded", "MODEL_NOT_FOUND": "model_not_found"}


def openai_code(reason: str) -> str:
    return _CODES.get(reason, reason.lower())


def retry_headers(retry_after: float | None) -> dict[str, str]:
    """Retry-After in whole seconds (HTTP) and retry-after-ms (which the
    OpenAI clients read first)."""
    if retry_after is None or not math.isfinite(retry_after) or retry_after < 0:
        return {}
    return {"Retry-After": str(math.ceil(retry_after)), "retry-after-ms": str(int(retry_after * 1000))}


def from_hearth_error(
    err: errors.HearthError, *, param_of: Callable[[str], str | None] = openai_param
) -> OpenAIError:
    """The HTTP answer to a Hearth error.

    InvalidArgument -> 400 with ``param`` from the field (``param_of``);
    FailedPrecondition -> 400; NotFound -> 404 (``model_not_found`` for
    MODEL_NOT_FOUND); ResourceExhausted -> 429 with Retry-After; Unavailable ->
    503 (with Retry-After when known); DeadlineExceeded -> 504; anything else
    -> 500 with a generic message.
    """
    code = openai_code(err.reason)
    if isinstance(err, errors.InvalidArgument):
        field = getattr(err, "field", "") or err.metadata.get("field", "")
        return OpenAIError(400, err.message, param=param_of(field), code=code)
    if isinstance(err, errors.FailedPrecondition):
        param = "tools" if err.reason == "NO_TOOL_CAPABLE_TARGET" else None
        return OpenAIError(400, err.message, param=param, code=code)
    if isinstance(err, errors.NotFound):
        param = "model" if err.reason == "MODEL_NOT_FOUND" else None
        return OpenAIError(404, err.message, param=param, code=code)
    if isinstance(err, errors.ResourceExhausted):
        return OpenAIError(
            429, err.message, type=RATE_LIMIT, code=code, headers=retry_headers(err.retry_after)
        )
    if isinstance(err, errors.Unavailable):
        return OpenAIError(
            503, err.message, type=SERVER_ERROR, code=code, headers=retry_headers(err.retry_after)
        )
    if isinstance(err, errors.DeadlineExceeded):
        return OpenAIError(504, err.message, type=SERVER_ERROR, code=code)
    return internal_error()


# --- jobs that failed after they were accepted ---------------------------------

_UNAVAILABLE_REASONS = frozenset(
    {
        "WORKER_LOST",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_OVERLOADED",
        "MEMORY_UNAVAILABLE",
        "ORCHESTRATOR_RESTARTED",
    }
)
_TIMEOUT_REASONS = frozenset({"DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT", "CLI_TIMEOUT"})


def from_job_failure(reason: str, message: str) -> OpenAIError:
    """The HTTP answer (or stream error event) for a job that ended FAILED.

    CONTEXT_TOO_LONG -> 400 ``context_length_exceeded``; TOOLS_NOT_SUPPORTED ->
    400; MODEL_NOT_FOUND -> 404; UPSTREAM_RATE_LIMITED -> 429; the job's
    deadline and upstream timeouts -> 504; a lost worker or an unavailable
    dependency -> 503; any other reason -> 500. The code is the reason,
    lower-cased.
    """
    code = openai_code(reason)
    text = f"The job failed ({reason}): {message}" if message else f"The job failed ({reason})."
    if reason == "CONTEXT_TOO_LONG":
        return OpenAIError(400, text, param="messages", code=code)
    if reason == "TOOLS_NOT_SUPPORTED":
        return OpenAIError(400, text, param="tools", code=code)
    if reason == "MODEL_NOT_FOUND":
        return OpenAIError(404, text, param="model", code=code)
    if reason == "UPSTREAM_RATE_LIMITED":
        return OpenAIError(429, text, type=RATE_LIMIT, code=code)
    if reason in _TIMEOUT_REASONS:
        return OpenAIError(504, text, type=SERVER_ERROR, code=code)
    if reason in _UNAVAILABLE_REASONS:
        return OpenAIError(503, text, type=SERVER_ERROR, code=code)
    return OpenAIError(500, text, type=SERVER_ERROR, code=code)


def job_cancelled(message: str) -> OpenAIError:
    """A job cancelled by someone else (CancelJob) while the request waited.
    409, and clients are told not to retry: the cancel was deliberate."""
    return OpenAIError(
        409,
        f"The job was cancelled: {message}" if message else "The job was cancelled.",
        code="cancelled",
        headers={"x-should-retry": "false"},
    )


# --- request body validation -----------------------------------------------


def param_from_location(location: Sequence[str | int]) -> str | None:
    """A pydantic error location as an OpenAI parameter path:
    ``("messages", 0, "content")`` -> ``messages[0].content``."""
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else part
    return param or None


def from_validation_errors(problems: Iterable[Mapping[str, Any]]) -> OpenAIError:
    """A 400 for the first problem pydantic found in a request body (FastAPI's
    own request validation included, whose locations start with ``body``)."""
    for problem in problems:
        location = [p for p in problem.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = param_from_location(location)
        if problem.get("type") == "missing":
            return OpenAIError(
                400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        detail = str(problem.get("msg", "is not valid"))
        where = f" for '{param}'" if param else ""
        return OpenAIError(400, f"Invalid value{where}: {detail}.", param=param, code="invalid_value")
    return OpenAIError(400, "The request body is not valid.", code="invalid_value")

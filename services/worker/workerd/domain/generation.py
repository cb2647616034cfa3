"""Checks on a generation request before it reaches the engine."""

from __future__ import annotations

from collections.abc import Sequence

from hearth.errors import InvalidArgument
from workerd.domain.engine import GenerationRequest, ServedModel, find_model


def validate_generation(request: GenerationRequest, models: Sequence[ServedModel]) -> ServedModel:
    """Return the served model the request asks for, or raise.

    NotFound (``MODEL_NOT_FOUND``) for a model not served here;
    InvalidArgument naming the field for an empty job id, neither or both of
    prompt and messages, tools a model that cannot call them may call
    (``TOOLS_NOT_SUPPORTED``; with tool_choice "none" they are only context),
    ``max_tokens`` below 1, or a negative or non-finite temperature. The
    context-length check needs the tokenizer and is the engine's.
    """
    if not request.job_id:
        raise InvalidArgument("job_id", "must not be empty")
    model = find_model(models, request.model)
    if not request.prompt and not request.messages:
        raise InvalidArgument("prompt", "must not be empty (or messages must be given)")
    if request.prompt and request.messages:
        raise InvalidArgument("messages", "give either prompt or messages, not both")
    if request.tools and request.tool_choice != "none" and not model.supports_tools:
        raise InvalidArgument(
            "tools", f"model {model.name!r} does not make tool calls here", reason="TOOLS_NOT_SUPPORTED"
        )
    if request.max_tokens < 1:
        raise InvalidArgument("max_tokens", f"must be at least 1 (got {request.max_tokens})")
    if not (request.temperature >= 0.0 and request.temperature != float("inf")):
        raise InvalidArgument("temperature", f"must be 0 or more (got {request.temperature})")
    return model

"""workerd's domain: the engine interface and the worker's own state (no I/O)."""

from workerd.domain.engine import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)

__all__ = [
    "Engine",
    "EngineStats",
    "FinishReason",
    "GenerationEvent",
    "GenerationFinished",
    "GenerationRequest",
    "GenerationStarted",
    "ServedModel",
    "TokenDelta",
]

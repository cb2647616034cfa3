"""memoryd's pure rules: memories, validation, idempotent ids, and the
interfaces of the embedder and the store (no grpc, NATS or Qdrant here)."""

from memoryd.domain.memories import (
    IDEMPOTENCY_NAMESPACE,
    MAX_DELETE_IDS,
    Memory,
    MemoryKind,
    MemoryLimits,
    MemoryQuery,
    NewMemory,
    ScoredMemory,
    memory_id_for,
    parse_memory_ids,
    parse_request_id,
    validate_new_memory,
    validate_query,
)
from memoryd.domain.ports import (
    Embedder,
    EmbedderError,
    EmbedderUnavailable,
    EmbeddingInputTooLarge,
    MemoryStore,
    StoreUnavailable,
)
from memoryd.domain.service import MemoryService, StoreResult

__all__ = [
    "IDEMPOTENCY_NAMESPACE",
    "MAX_DELETE_IDS",
    "Embedder",
    "EmbedderError",
    "EmbedderUnavailable",
    "EmbeddingInputTooLarge",
    "Memory",
    "MemoryKind",
    "MemoryLimits",
    "MemoryQuery",
    "MemoryService",
    "MemoryStore",
    "NewMemory",
    "ScoredMemory",
    "StoreResult",
    "StoreUnavailable",
    "memory_id_for",
    "parse_memory_ids",
    "parse_request_id",
    "validate_new_memory",
    "validate_query",
]

"""orchestratord's OpenAI-compatible HTTP API (``/v1/chat/completions``,
``/v1/models``, ``/v1/embeddings``).

Build it with :func:`create_app` over the job service and memoryd's embeddings,
serve it with :class:`HttpApi` (uvicorn in the service's event loop). See
docs/api.md, "OpenAI-compatible HTTP API".
"""

from orchestratord.api.openai_http.app import JOB_ID_HEADER, create_app
from orchestratord.api.openai_http.auth import ApiKeys, ApiKeysError, load_api_keys
from orchestratord.api.openai_http.inflight import JobRequests
from orchestratord.api.openai_http.ports import ChatJobs, EmbeddingBatch, Embeddings
from orchestratord.api.openai_http.server import HttpApi, HttpApiError
from orchestratord.api.openai_http.telemetry import HttpMetrics

__all__ = [
    "JOB_ID_HEADER",
    "ApiKeys",
    "ApiKeysError",
    "ChatJobs",
    "EmbeddingBatch",
    "Embeddings",
    "HttpApi",
    "HttpApiError",
    "HttpMetrics",
    "JobRequests",
    "create_app",
    "load_api_keys",
]

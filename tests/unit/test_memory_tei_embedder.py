"""TeiEmbedder against an httpx.MockTransport playing text-embeddings-inference."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from memoryd.adapters.embedders import EmbedderStartError, TeiEmbedder
from memoryd.domain import EmbedderError, EmbedderUnavailable, EmbeddingInputTooLarge

pytestmark = pytest.mark.unit

DIM = 3


def vector_for(text: str) -> list[float]:
    return [float(len(text)), 0.0, 1.0]


class FakeTei:
    """Answers /info and /embed; ``script`` gives canned replies to the first
    /embed calls, after which it embeds."""

    def __init__(self, script: list[httpx.Response] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[dict[str, object]] = []
        self.info_calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/info"):
            self.info_calls += 1
            return httpx.Response(200, json={"model_id": "BAAI/bge-small-en-v1.5", "max_input_length": 512})
        assert request.method == "POST" and request.url.path.endswith("/embed")
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.script:
            return self.script.pop(0)
        return httpx.Response(200, json=[vector_for(t) for t in body["inputs"]])


class SleepRecorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_embedder(
    handler: Callable[[httpx.Request], httpx.Response],
    sleep: SleepRecorder,
    model_name: str = "m",
    **kw: object,
) -> TeiEmbedder:
    return TeiEmbedder(
        "http://tei.test/",
        model_name,
        transport=httpx.MockTransport(handler),
        sleep=sleep,
        **kw,  # type: ignore[arg-type]
    )


async def test_start_learns_dimension_and_model_then_batches_by_32() -> None:
    tei, sleep = FakeTei(), SleepRecorder()
    embedder = make_embedder(tei, sleep, model_name="")
    await embedder.start()
    try:
        assert (embedder.model_name, embedder.dimension) == ("BAAI/bge-small-en-v1.5", DIM)
        texts = [f"text {'x' * i}" for i in range(70)]
        vectors = await embedder.embed(texts)
    finally:
        await embedder.close()
        await embedder.close()
    assert vectors == [vector_for(t) for t in texts]
    # The probe at start, then 32 + 32 + 6.
    assert [len(b["inputs"]) for b in tei.bodies] == [1, 32, 32, 6]  # type: ignore[arg-type]
    assert all(b["normalize"] is True for b in tei.bodies)
    assert sleep.waits == []


async def test_configured_model_name_skips_info() -> None:
    tei = FakeTei()
    embedder = make_embedder(tei, SleepRecorder(), model_name="my-model")
    await embedder.start()
    await embedder.close()
    assert (embedder.model_name, tei.info_calls) == ("my-model", 0)


async def test_429_and_503_are_retried_honouring_retry_after() -> None:
    tei = FakeTei(
        [
            httpx.Response(
                429, headers={"Retry-After": "2"}, json={"error": "overloaded", "error_type": "Overloaded"}
            ),
            httpx.Response(503, json={"error": "unhealthy", "error_type": "Unhealthy"}),
            httpx.Response(503, json={"error": "unhealthy", "error_type": "Unhealthy"}),
        ]
    )
    sleep = SleepRecorder()
    embedder = make_embedder(tei, sleep, backoff_seconds=0.5)
    await embedder.start()  # the probe takes the scripted failures
    await embedder.close()
    assert sleep.waits == [2.0, 1.0, 2.0]  # Retry-After, then 0.5 * 2**1, 0.5 * 2**2
    assert embedder.dimension == DIM


async def test_gives_up_after_max_attempts() -> None:
    sleep = SleepRecorder()
    embedder = make_embedder(lambda _request: httpx.Response(503, text="loading"), sleep, max_attempts=3)
    with pytest.raises(EmbedderStartError):
        await embedder.start()
    await embedder.close()
    assert len(sleep.waits) == 2

    tei = FakeTei()
    embedder = make_embedder(tei, sleep, max_attempts=3)
    await embedder.start()
    tei.script = [httpx.Response(429, json={"error": "busy"}) for _ in range(3)]
    with pytest.raises(EmbedderUnavailable) as caught:
        await embedder.embed(["a"])
    await embedder.close()
    assert "busy" in str(caught.value) and caught.value.retry_after


async def test_a_long_retry_after_is_passed_on_not_waited() -> None:
    tei, sleep = FakeTei(), SleepRecorder()
    embedder = make_embedder(tei, sleep, max_retry_wait=30.0)
    await embedder.start()
    tei.script = [httpx.Response(429, headers={"Retry-After": "120"}, json={"error": "busy"})]
    with pytest.raises(EmbedderUnavailable) as caught:
        await embedder.embed(["a"])
    await embedder.close()
    assert caught.value.retry_after == 120.0
    assert sleep.waits == []


async def test_413_is_a_clear_error_at_once() -> None:
    tei, sleep = FakeTei(), SleepRecorder()
    embedder = make_embedder(tei, sleep)
    await embedder.start()
    tei.script = [
        httpx.Response(
            413,
            json={
                "error": "Input validation error: inputs must have less than 512 tokens",
                "error_type": "Validation",
            },
        )
    ]
    with pytest.raises(EmbeddingInputTooLarge) as caught:
        await embedder.embed(["a very long text"])
    await embedder.close()
    assert "less than 512 tokens" in str(caught.value)
    assert sleep.waits == [] and len(tei.bodies) == 2


async def test_connection_failures_are_retried_and_other_errors_are_not() -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=[[1.0, 0.0]])

    sleep = SleepRecorder()
    embedder = make_embedder(flaky, sleep)
    await embedder.start()
    await embedder.close()
    assert (embedder.dimension, len(sleep.waits)) == (2, 1)

    tei = FakeTei()
    embedder = make_embedder(tei, sleep)
    await embedder.start()
    tei.script = [httpx.Response(400, json={"error": "bad", "error_type": "Empty"})]
    with pytest.raises(EmbedderError) as caught:
        await embedder.embed(["a"])
    await embedder.close()
    assert type(caught.value) is EmbedderError and "400" in str(caught.value)

"""Shared fixtures.

End-to-end tests run the real stack: a private nats-server and PostgreSQL and
the five services as separate processes (hearth.stack.Stack, the same code as
`hearth up`). Set HEARTH_TEST_KEEP_LOGS=1 to print where each stack's log is.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hearth.embedded import EmbeddedPostgres

if TYPE_CHECKING:
    from hearth.client import AsyncClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama model with its tokenizer, built once."""
    from hearth.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama that vLLM's CPU build serves, built once: head_dim 64 (hidden 256,
    4 heads; its CPU attention refuses 16), 2 layers, and greedy decoding always runs to
    max_tokens (no early </s>), so a long generation stays long enough to cancel or kill."""
    from hearth.tinymodel import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("models") / "tiny-llama-vllm",
        hidden_size=256,
        heads=4,
        runs_to_max_tokens=True,
    )


def start_stack(
    data_dir: Path,
    config: dict[str, Any],
    extra_workers: list[dict[str, Any]] | None = None,
    *,
    health_timeout: float = 180.0,
):
    """Start a Stack whose service logs go to <data_dir>/stack.log."""
    from hearth.stack import Stack, StackOptions

    data_dir.mkdir(parents=True, exist_ok=True)
    sink = (data_dir / "stack.log").open("w")
    stack = Stack(
        StackOptions(
            data_dir=data_dir,
            config=config,
            log_sink=sink,
            pretty_logs=True,
            extra_workers=list(extra_workers or []),
            health_timeout=health_timeout,
        )
    )
    try:
        stack.start()
    except BaseException:
        sink.close()
        print((data_dir / "stack.log").read_text()[-20000:])
        raise
    stack._test_sink = sink  # type: ignore[attr-defined]
    return stack


def stop_stack(stack: Any) -> None:
    stack.stop()
    stack._test_sink.close()
    if os.environ.get("HEARTH_TEST_KEEP_LOGS"):
        print(f"stack log: {stack.data_dir / 'stack.log'}")


def client_for(stack: Any) -> AsyncClient:
    """An AsyncClient (not yet entered) for every service of a started Stack."""
    client: AsyncClient = stack.client()
    return client


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL for one test module.

    In a folder of its own rather than under pytest's base temp folder:
    pytest sessions running side by side prune each other's old base temp
    folders, which can pull the data dir from under a running server."""
    with tempfile.TemporaryDirectory(prefix="hearth-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def create_database(postgres: EmbeddedPostgres) -> str:
    """A fresh, empty database on ``postgres``; returns its URL."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres.url)
    try:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return postgres.url.replace("/postgres?", f"/{name}?", 1)

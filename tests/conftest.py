"""Shared fixtures.

End-to-end tests run the real stack: a private nats-server and PostgreSQL and
the five services as separate processes (hearth.stack.Stack, the same code as
`hearth up`). Set HEARTH_TEST_KEEP_LOGS=1 to print where each stack's log is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

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


def start_stack(data_dir: Path, config: dict[str, Any], extra_workers: list[dict[str, Any]] | None = None):
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

"""Fixtures shared by unit test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.embedded import EmbeddedPostgres
from orchestratord.adapters.migrate import upgrade_database
from orchestratord.adapters.postgres import create_engine
from tests.conftest import create_database
from tests.tei_protocol_server import MiniLmModel, TeiProtocolServer


@pytest.fixture(scope="module")
def minilm() -> MiniLmModel:
    """The real all-MiniLM-L6-v2 behind the TEI stand-in, loaded once per module."""
    return MiniLmModel()


@pytest.fixture
def tei(minilm: MiniLmModel) -> Iterator[TeiProtocolServer]:
    """A TEI stand-in server with default limits, serving ``minilm``; stopped after the test."""
    with TeiProtocolServer(minilm) as server:
        yield server


@pytest.fixture
async def engine(postgres: EmbeddedPostgres) -> AsyncIterator[AsyncEngine]:
    """A fresh orchestrator database per test, migrated, on the engine
    orchestratord builds (its storable JSON serializer included)."""
    engine = create_engine(await create_database(postgres))
    await upgrade_database(engine)
    try:
        yield engine
    finally:
        await engine.dispose()

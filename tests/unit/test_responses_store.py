"""The stored responses of /v1/responses on a real (embedded) Postgres:
saved with their project, read and deleted only under it, NUL made storable."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.chat import ChatMessage, ToolCall
from orchestratord.adapters.responses_store import PostgresResponseStore
from orchestratord.api.openai_http.ports import StoredResponse

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


async def test_a_response_is_kept_per_project(engine: AsyncEngine) -> None:
    store = PostgresResponseStore(engine)
    messages = (
        ChatMessage("user", "hi\x00"),
        ChatMessage("assistant", "", (ToolCall("c1", "read", '{"path": "a"}'),)),
        ChatMessage("tool", "text", tool_call_id="c1"),
    )
    response = StoredResponse(
        "resp_1",
        "p1",
        "5f0c6a4e-8a47-4a51-9a2e-0d6f7c1b2a33",
        "",
        1_700_000_000.0,
        messages,
        {"id": "resp_1"},
    )
    await store.save(response)
    await store.save(response)  # a retried save keeps the first
    loaded = await store.load("resp_1", "p1")
    assert loaded is not None
    assert loaded.messages == (ChatMessage("user", "hi\ufffd"), *messages[1:])
    assert (loaded.body, loaded.created_at, loaded.job_id) == (
        {"id": "resp_1"},
        1_700_000_000.0,
        response.job_id,
    )
    assert await store.load("resp_1", "p2") is None
    assert not await store.delete("resp_1", "p2")
    assert await store.delete("resp_1", "p1")
    assert await store.load("resp_1", "p1") is None

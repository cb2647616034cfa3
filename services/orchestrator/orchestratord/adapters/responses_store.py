"""Stored responses of the OpenAI Responses API on Postgres (the ``responses``
table): one row per response, its conversation and its body as JSONB (made
storable by the engine's serializer)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from hearth.chat import ChatMessage
from hearth.errors import Unavailable
from orchestratord.adapters.schema import responses
from orchestratord.api.openai_http.ports import StoredResponse

_DATABASE_DOWN = (OperationalError, InterfaceError, OSError)


def _unavailable(err: Exception) -> Unavailable:
    return Unavailable(
        f"the response store is unavailable: {type(err).__name__}", reason="DATABASE_UNAVAILABLE"
    )


class PostgresResponseStore:
    """:class:`~orchestratord.api.openai_http.ports.ResponseStore` on the
    orchestrator's engine (``adapters.postgres.create_engine``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, response: StoredResponse) -> None:
        row = {
            "id": response.id,
            "project_id": response.project_id,
            "job_id": response.job_id,
            "previous_response_id": response.previous_response_id,
            "created_at": datetime.fromtimestamp(response.created_at, tz=UTC),
            "messages": [message.to_json() for message in response.messages],
            "body": dict(response.body),
        }
        statement = pg_insert(responses).values(row)
        # A job answers once; a retried save keeps the first row.
        statement = statement.on_conflict_do_nothing(index_elements=["id"])
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement)
        except _DATABASE_DOWN as err:
            raise _unavailable(err) from None
        except DBAPIError as err:
            if err.connection_invalidated:
                raise _unavailable(err) from None
            raise

    async def load(self, response_id: str, project_id: str) -> StoredResponse | None:
        query = select(responses).where(responses.c.id == response_id, responses.c.project_id == project_id)
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
        except _DATABASE_DOWN as err:
            raise _unavailable(err) from None
        if row is None:
            return None
        return StoredResponse(
            id=row.id,
            project_id=row.project_id,
            job_id=str(row.job_id),
            previous_response_id=row.previous_response_id,
            created_at=row.created_at.timestamp(),
            messages=tuple(ChatMessage.from_json(m) for m in row.messages),
            body=row.body,
        )

    async def delete(self, response_id: str, project_id: str) -> bool:
        statement = delete(responses).where(
            responses.c.id == response_id, responses.c.project_id == project_id
        )
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)
        except _DATABASE_DOWN as err:
            raise _unavailable(err) from None
        return bool(result.rowcount)

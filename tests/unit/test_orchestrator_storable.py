"""Text PostgreSQL cannot hold: NUL and lone surrogates from a model or a
caller are stored as U+FFFD, the journal never stalls on them, and one job
whose rows the store refuses holds back no other job."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestratord.adapters.postgres import PostgresJobStore
from orchestratord.adapters.storable import dumps_storable, storable
from orchestratord.domain.jobs import (
    ActiveJob,
    Failed,
    JobEnd,
    JobEvent,
    JobSpec,
    JobState,
    Outcome,
    Queued,
    RouteDecision,
    Tokens,
)
from orchestratord.domain.journal import EventJournal

pytestmark = pytest.mark.unit

ROUTE = RouteDecision(("tiny",), {"schema_version": 1, "chosen_target": "tiny"})
ODD = "a\x00b \ud800 c\udfff \\u0000 \\\\u0000 \U0001f600 é"


@given(st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)))
def test_storable_json_round_trips_to_storable_text(text: str) -> None:
    encoded = dumps_storable({"text": text, "list": [text]})
    assert "\\u0000" not in encoded.replace("\\\\", "")
    decoded = json.loads(encoded)
    assert decoded == {"text": storable(text), "list": [storable(text)]}
    assert "\x00" not in decoded["text"]
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in decoded["text"])


def test_storable_keeps_everything_but_nul_and_lone_surrogates() -> None:
    assert storable(ODD) == "a\ufffdb \ufffd c\ufffd \\u0000 \\\\u0000 \U0001f600 é"
    assert storable("plain") == "plain"
    # A backslash before u0000 is text, not an escape: kept as it was.
    assert json.loads(dumps_storable("\\u0000")) == "\\u0000"


def new_job(created_at: float) -> ActiveJob:
    job_id = str(uuid.uuid4())
    return ActiveJob(
        job_id,
        JobSpec(prompt="hello", model="tiny"),
        ROUTE,
        created_at,
        [JobEvent(job_id, 1, created_at, Queued(0))],
    )


async def test_a_batch_with_nul_and_lone_surrogates_is_stored(engine: AsyncEngine) -> None:
    store = PostgresJobStore(engine)
    job = new_job(1_700_000_000.0)
    assert await store.insert_job(job.snapshot(), job.events[0])
    started = job.start("tiny", "w1", 3, 1_700_000_001.0)
    tokens = [job.append_tokens(ODD, 1, 1_700_000_002.0), job.append_tokens("\x00", 1, 1_700_000_003.0)]
    assert job.claim_end(Outcome.failed("ENGINE_ERROR", "engine said \x00"), 1_700_000_004.0) is not None
    await store.write_batch([started, *tokens], [job.end_record()])  # type: ignore[list-item]
    stored = await store.get_job(job.job_id)
    assert stored is not None and stored.state is JobState.FAILED
    assert stored.output == storable(ODD) + "\ufffd"
    assert stored.end_message == "engine said \ufffd"
    events = await store.read_events(job.job_id, 0)
    assert [e.body.text for e in events if isinstance(e.body, Tokens)] == [storable(ODD), "\ufffd"]
    assert events[-1].body == Failed("ENGINE_ERROR", "engine said \ufffd")


class RefusingStore:
    """A job store that refuses, for good, every batch holding one job's rows."""

    def __init__(self, refused_job: str) -> None:
        self.refused_job = refused_job
        self.written: list[str] = []

    async def write_batch(self, events: Sequence[JobEvent], ends: Sequence[JobEnd]) -> None:
        jobs = {e.job_id for e in events} | {end.event.job_id for end in ends}
        if self.refused_job in jobs:
            raise ValueError("the store refuses this row")
        self.written.extend(e.job_id for e in events)
        self.written.extend(end.event.job_id for end in ends)


async def test_rows_the_store_refuses_hold_back_only_their_own_job() -> None:
    bad, good = new_job(1.0), new_job(2.0)
    store = RefusingStore(bad.job_id)
    journal = EventJournal(store, flush_interval=0.001, retry_delay=0.001)  # type: ignore[arg-type]
    journal.start()
    try:
        for job in (bad, good):
            event = job.start("tiny", "w1", 1, 3.0)
            assert event is not None
            journal.append(event)
        assert good.claim_end(Outcome.completed("STOP", 0), 4.0) is not None
        # The good job's end lands although it shares batches with the bad job.
        await asyncio.wait_for(journal.write_end(good.end_record()), timeout=10)
        assert good.job_id in store.written
        assert bad.job_id not in store.written
        assert journal.pending == 1  # the bad job's started event, still kept
    finally:
        await journal.stop()

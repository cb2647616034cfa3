"""The job state machine: one terminal event ever, late tokens dropped,
watchers woken in order, and the queue's bands, order, bound and removal."""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestratord.domain.jobs import (
    ActiveJob,
    Cancelled,
    Completed,
    Failed,
    JobEvent,
    JobSpec,
    JobState,
    Outcome,
    Priority,
    Queued,
    RouteDecision,
    Tokens,
)
from orchestratord.domain.queue import JobQueue, QueueFull

pytestmark = pytest.mark.unit

ROUTE = RouteDecision(("tiny",), {})


def make_job(job_id: str = "j1") -> ActiveJob:
    return ActiveJob(job_id, JobSpec(prompt="hi"), ROUTE, 100.0, [JobEvent(job_id, 1, 100.0, Queued(0))])


def test_a_job_runs_through_its_states_with_gapless_sequences() -> None:
    job = make_job()
    started = job.start("tiny", "w1", 5, 101.0)
    assert started is not None and started.sequence == 2 and job.state is JobState.RUNNING
    assert job.start("tiny", "w2", 5, 101.5) is None  # started once
    for i, text in enumerate(["Hel", "lo", "!"]):
        event = job.append_tokens(text, 1, 102.0 + i)
        assert event is not None and event.sequence == 3 + i
    terminal = job.claim_end(Outcome.completed("STOP", 3), 110.0)
    assert terminal is not None and terminal.sequence == 6 and terminal.body == Completed("STOP", 3)
    assert job.state is JobState.COMPLETED and job.output == "Hello!"
    # Not visible until durable.
    assert [e.sequence for e in job.events] == [1, 2, 3, 4, 5]
    job.publish_end()
    assert [e.sequence for e in job.events] == [1, 2, 3, 4, 5, 6] and job.closed
    run = job.run_record()
    assert run is not None
    assert run.queue_wait == 1.0 and run.time_to_first_token == 2.0 and run.total_duration == 10.0
    assert run.output_tokens == 3 and run.decode_tokens_per_second == pytest.approx(1.0)


def test_cancel_after_complete_is_a_no_op_and_late_tokens_are_dropped() -> None:
    job = make_job()
    job.start("tiny", "w1", 1, 101.0)
    job.append_tokens("a", 1, 102.0)
    assert job.claim_end(Outcome.completed("STOP"), 103.0) is not None
    assert job.claim_end(Outcome.cancelled("too late"), 104.0) is None
    assert job.claim_end(Outcome.failed("WORKER_LOST", "gone"), 104.0) is None
    assert job.append_tokens("late", 1, 105.0) is None
    job.publish_end()
    assert job.state is JobState.COMPLETED and job.output == "a"
    assert [type(e.body) for e in job.events].count(Completed) == 1
    assert not any(isinstance(e.body, (Cancelled, Failed)) for e in job.events)


def test_a_queued_job_can_be_cancelled_or_failed_but_not_started_after() -> None:
    job = make_job()
    terminal = job.claim_end(Outcome.cancelled("user"), 101.0)
    assert terminal is not None and terminal.body == Cancelled("user")
    assert job.end_reason == "CANCELLED" and job.end_message == "user"
    assert job.start("tiny", "w1", 1, 102.0) is None
    assert job.run_record() is None  # it never reached a worker
    failing = make_job("j2")
    failed = failing.claim_end(Outcome.failed("DEADLINE_EXCEEDED", "too slow"), 101.0)
    assert failed is not None and failed.body == Failed("DEADLINE_EXCEEDED", "too slow")


async def test_exactly_one_terminal_event_when_many_parties_race_to_end_a_job() -> None:
    rng = random.Random(7)
    for round_ in range(50):
        job = make_job(f"j{round_}")
        job.start("tiny", "w1", 1, 101.0)
        outcomes = [
            Outcome.completed("STOP"),
            Outcome.cancelled("user"),
            Outcome.failed("WORKER_LOST", "gone"),
            Outcome.failed("DEADLINE_EXCEEDED", "slow"),
        ]
        rng.shuffle(outcomes)
        appended_after_end: list[JobEvent] = []

        async def relay_tokens(job: ActiveJob = job, log: list[JobEvent] = appended_after_end) -> None:
            for i in range(20):
                ended_before = job.state.is_terminal
                event = job.append_tokens("x", 1, 102.0 + i)
                if ended_before and event is not None:
                    log.append(event)
                await asyncio.sleep(0)

        async def end(outcome: Outcome, job: ActiveJob = job) -> bool:
            for _ in range(rng.randrange(5)):
                await asyncio.sleep(0)
            return job.claim_end(outcome, 110.0) is not None

        results = await asyncio.gather(relay_tokens(), *(end(o) for o in outcomes))
        job.publish_end()
        assert results[1:].count(True) == 1
        assert appended_after_end == []
        terminals = [e for e in job.events if e.is_terminal]
        assert len(terminals) == 1 and job.events[-1] is terminals[0]
        assert [e.sequence for e in job.events] == list(range(1, len(job.events) + 1))


async def test_watchers_are_woken_by_new_events_and_one_leaving_does_not_disturb_another() -> None:
    job = make_job()
    job.start("tiny", "w1", 1, 101.0)
    seen = len(job.events)
    leaving = asyncio.create_task(job.wait_for_events(seen))
    staying = asyncio.create_task(job.wait_for_events(seen))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    assert not staying.done()
    job.append_tokens("a", 1, 102.0)
    await asyncio.wait_for(staying, 1)
    assert leaving.cancelled()
    closing = asyncio.create_task(job.wait_for_events(len(job.events)))
    await asyncio.sleep(0)
    job.claim_end(Outcome.completed("STOP"), 103.0)
    await asyncio.sleep(0)
    assert not closing.done()  # the claim alone shows nothing to watchers
    job.publish_end()
    await asyncio.wait_for(closing, 1)
    assert job.events[-1].is_terminal


def test_the_queue_serves_interactive_before_batch_and_fifo_within_a_band() -> None:
    queue: JobQueue[str] = JobQueue(10)
    assert queue.push("b1", Priority.BATCH, "b1") == 0
    assert queue.push("i1", Priority.INTERACTIVE, "i1") == 0
    assert queue.push("b2", Priority.BATCH, "b2") == 1
    assert queue.push("i2", Priority.INTERACTIVE, "i2") == 1
    assert len(queue) == 4 and queue.depth(Priority.BATCH) == 2
    assert [queue.pop() for _ in range(5)] == ["i1", "i2", "b1", "b2", None]


def test_the_queue_is_bounded_across_bands_including_reservations() -> None:
    queue: JobQueue[str] = JobQueue(3)
    queue.push("a", Priority.INTERACTIVE, "a")
    assert queue.reserve()
    queue.push("b", Priority.BATCH, "b")
    assert not queue.reserve()
    with pytest.raises(QueueFull):
        queue.push("c", Priority.BATCH, "c")
    queue.push("c", Priority.BATCH, "c", reserved=True)  # the reservation becomes the item
    assert len(queue) == 3 and queue.reserved == 0
    queue.push("d", Priority.BATCH, "d", force=True)  # recovered jobs keep their place
    assert len(queue) == 4
    assert queue.pop() == "a" and not queue.reserve()  # still 3 queued
    assert queue.pop() == "b" and queue.reserve()
    queue.unreserve()
    with pytest.raises(ValueError):
        queue.push("c", Priority.BATCH, "c", force=True)


def test_the_queue_removes_cancelled_jobs_from_either_band() -> None:
    queue: JobQueue[str] = JobQueue(10)
    for key, band in (("i1", Priority.INTERACTIVE), ("b1", Priority.BATCH), ("i2", Priority.INTERACTIVE)):
        queue.push(key, band, key)
    assert queue.remove("i1") == "i1"
    assert queue.remove("b1") == "b1"
    assert queue.remove("nope") is None
    assert "i1" not in queue and "i2" in queue
    assert [queue.pop(), queue.pop()] == ["i2", None]


def test_events_round_trip_through_their_payloads() -> None:
    for body in (Queued(2), Tokens("é€", 2), Completed("LENGTH", 9), Failed("X", "y"), Cancelled("z")):
        event = JobEvent("j", 4, 1.5, body)
        assert JobEvent.from_payload("j", 4, 1.5, event.kind, body.payload()) == event

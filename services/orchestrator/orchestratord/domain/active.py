"""The active jobs: the registry of jobs that have not ended, their queue,
their deadlines, and the one path by which any job ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from orchestratord.domain.jobs import ActiveJob, Outcome
from orchestratord.domain.journal import EventJournal, JournalClosed
from orchestratord.domain.ports import JobMetrics
from orchestratord.domain.queue import JobQueue

log = logging.getLogger(__name__)


class ActiveJobs:
    """Jobs from admission until their terminal event is durable.

    Ownership of a job's end: a job still in the queue is ended (cancel,
    deadline) by whoever claims the end, and written by a task of this class;
    once the dispatcher has taken it (``job.dispatched``), the claimer only
    interrupts the dispatcher's work task and the dispatcher writes the end,
    because it holds the lease and the run record. Either way the end is
    claimed synchronously by :meth:`end`, so later tokens are dropped at once.

    A job leaves the registry when its terminal event is durable; from then on
    readers find it in the database.
    """

    def __init__(
        self,
        queue: JobQueue[ActiveJob],
        journal: EventJournal,
        metrics: JobMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self._journal = journal
        self._metrics = metrics
        self._clock = clock
        self._jobs: dict[str, ActiveJob] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: Set whenever a job is queued; the dispatcher waits on it.
        self.work_available = asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> ActiveJob | None:
        return self._jobs.get(job_id)

    def admit(self, job: ActiveJob, *, reserved: bool = False, force: bool = False) -> int:
        """Register and queue a persisted job, and arm its deadline. Returns
        its position in its band. ``reserved``/``force`` as in JobQueue.push."""
        band = job.spec.priority
        position = self.queue.push(job.job_id, band, job, reserved=reserved, force=force)
        self._register(job)
        self._metrics.queue_depth(band.value, self.queue.depth(band))
        self.work_available.set()
        return position

    def admit_dispatched(self, job: ActiveJob) -> None:
        """Register a persisted job that the dispatcher runs at once, without
        queueing it (see Dispatcher.run_now), and arm its deadline."""
        job.dispatched = True
        self._register(job)

    def _register(self, job: ActiveJob) -> None:
        self._jobs[job.job_id] = job
        delay = max(0.0, job.deadline - self._clock())
        job.deadline_timer = asyncio.get_running_loop().call_later(delay, self._deadline_passed, job)

    def take(self) -> ActiveJob | None:
        """The next job to dispatch (interactive first), marked dispatched."""
        job = self.queue.pop()
        if job is None:
            return None
        job.dispatched = True
        band = job.spec.priority
        self._metrics.queue_depth(band.value, self.queue.depth(band))
        return job

    def end(self, job: ActiveJob, outcome: Outcome) -> bool:
        """Claim the job's end; False when it had already ended (no-op).

        A queued job leaves the queue and its end is written in the
        background; a dispatched job's work task is cancelled (which cancels
        its Generate call) and the dispatcher writes the end.
        """
        if job.claim_end(outcome, self._clock()) is None:
            return False
        if job.deadline_timer is not None:
            job.deadline_timer.cancel()
        if job.dispatched:
            if job.work is not None:
                job.work.cancel()
        else:
            band = job.spec.priority
            self.queue.remove(job.job_id)
            self._metrics.queue_depth(band.value, self.queue.depth(band))
            task = asyncio.create_task(self.finalize(job), name=f"finalize-{job.job_id}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return True

    async def finalize(self, job: ActiveJob) -> None:
        """Write a claimed end (after the job's pending events), then show the
        terminal event to watchers and drop the job from the registry."""
        if job.closed:
            return
        try:
            await self._journal.write_end(job.end_record())
        except JournalClosed:
            # The database never got the end; the next start's recovery
            # settles the job from what the database has.
            log.error("job %s ended (%s) but its end could not be written", job.job_id, job.state.value)
            return
        job.publish_end()
        self._jobs.pop(job.job_id, None)
        self._metrics.job_ended(job.state.value, job.end_reason)

    async def stop(self) -> None:
        """Disarm every deadline and wait for ends being written. The jobs
        themselves stay as the database has them, for the next start."""
        for job in self._jobs.values():
            if job.deadline_timer is not None:
                job.deadline_timer.cancel()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _deadline_passed(self, job: ActiveJob) -> None:
        self.end(
            job,
            Outcome.failed(
                "DEADLINE_EXCEEDED", f"the job did not end within {job.spec.timeout_seconds:g}s of submission"
            ),
        )

"""The journal: the one path by which a running job's events reach the store.

Token events arrive far too often for a transaction each, so the journal
keeps them in a buffer and a background task writes the buffer in one batch
(one transaction, one executemany) every ``flush_interval`` seconds, or at
once when ``max_batch`` events are waiting or a job's end is waiting.

A job's end goes through the same buffer: the batch that carries it also
carries every event of that job still pending, written first, so the
terminal transaction never lands before the events it follows, and
:meth:`EventJournal.write_end` returns only once all of it is committed.

A batch that keeps failing is written again job by job, so rows the store
refuses for good hold back only their own job, never every job of the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from orchestratord.domain.jobs import JobEnd, JobEvent
from orchestratord.domain.ports import JobStore

log = logging.getLogger(__name__)


class JournalClosed(Exception):
    """The journal stopped before an end could be written."""


class EventJournal:
    """Batched writer of job events and job ends.

    Lifecycle: :meth:`start` starts the writer task; :meth:`stop` writes what
    is pending (one last attempt) and stops; both are safe to call twice.
    A failed batch is kept and retried with backoff until it is written or
    the journal stops, so a database blip loses nothing.

    Args:
        store: where batches go (:meth:`JobStore.write_batch`).
        on_committed: called with the lifecycle events (not tokens) of each
            committed batch, in order; used to publish copies on NATS after
            the database has them.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        flush_interval: float = 0.02,
        max_batch: int = 500,
        on_committed: Callable[[list[JobEvent]], None] | None = None,
        retry_delay: float = 0.2,
    ) -> None:
        self._store = store
        self._interval = flush_interval
        self._max_batch = max_batch
        self._on_committed = on_committed
        self._retry_delay = retry_delay
        self._events: list[JobEvent] = []
        self._ends: list[JobEnd] = []
        self._end_waiters: list[asyncio.Future[None]] = []
        self._pending = asyncio.Event()
        self._urgent = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._ends)

    def append(self, event: JobEvent) -> None:
        """Queue a non-terminal event for the next batch. Never waits."""
        self._events.append(event)
        waiting = len(self._events)
        if waiting == 1:
            self._pending.set()
        elif waiting >= self._max_batch:
            self._urgent.set()

    async def write_end(self, end: JobEnd) -> None:
        """Write a job's end (terminal event, job row, run record) after its
        pending events; returns once committed. Raises JournalClosed when the
        journal stopped without managing to write it."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ends.append(end)
        self._end_waiters.append(waiter)
        if self._task is None or self._task.done():
            await self.flush()
        else:
            self._pending.set()
            self._urgent.set()
        await waiter

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name="event-journal")

    async def stop(self) -> None:
        """Stop the writer and write what is pending, once."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except Exception as err:
            lost = len(self._events)
            log.error(
                "journal stopped with %d events and %d job ends unwritten: %s", lost, len(self._ends), err
            )
            self._fail_waiters(JournalClosed(str(err)))

    async def flush(self, *, by_job: bool = False) -> None:
        """Write everything pending now, in one batch, or with ``by_job`` in
        one transaction per job. Raises when the store fails; what failed is
        then kept for the next attempt (with ``by_job``, only the jobs whose
        writes failed)."""
        async with self._write_lock:
            if not self._events and not self._ends:
                return
            events, self._events = self._events, []
            ends, self._ends = self._ends, []
            waiters, self._end_waiters = self._end_waiters, []
            self._pending.clear()
            self._urgent.clear()
            batches = _split_by_job(events, ends, waiters) if by_job else [(events, ends, waiters)]
            failed: list[_Batch] = []
            error: BaseException | None = None
            for index, batch in enumerate(batches):
                try:
                    await self._store.write_batch(batch[0], batch[1])
                except BaseException as err:
                    failed.append(batch)
                    error = err
                    if not isinstance(err, Exception):  # cancelled: the rest stays unwritten
                        failed.extend(batches[index + 1 :])
                        break
                else:
                    self._committed(*batch)
            if failed:
                # Keep what failed, in order, ahead of anything that came since.
                self._events[:0] = [e for batch in failed for e in batch[0]]
                self._ends[:0] = [e for batch in failed for e in batch[1]]
                self._end_waiters[:0] = [w for batch in failed for w in batch[2]]
                self._pending.set()
                assert error is not None
                raise error

    def _committed(
        self, events: list[JobEvent], ends: list[JobEnd], waiters: list[asyncio.Future[None]]
    ) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._on_committed is not None:
            lifecycle = [e for e in events if e.kind != "tokens"]
            lifecycle.extend(end.event for end in ends)
            if lifecycle:
                try:
                    self._on_committed(lifecycle)
                except Exception:
                    log.exception("on_committed hook failed")

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._pending.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._urgent.wait()
            try:
                # After a second failure in a row, one job's rows may be what
                # the store refuses: isolate it so every other job goes on.
                await self.flush(by_job=failures >= 2)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:
                failures += 1
                delay = min(self._retry_delay * 2 ** min(failures - 1, 5), 5.0)
                log.warning(
                    "journal write failed (%d pending), retrying in %.1fs: %s", self.pending, delay, err
                )
                await asyncio.sleep(delay)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)


_Batch = tuple[list[JobEvent], list[JobEnd], list[asyncio.Future[None]]]


def _split_by_job(
    events: list[JobEvent], ends: list[JobEnd], waiters: list[asyncio.Future[None]]
) -> list[_Batch]:
    """One batch per job, in order of each job's first pending row; a job's
    end waiter goes with its end."""
    batches: dict[str, _Batch] = {}
    for event in events:
        batches.setdefault(event.job_id, ([], [], []))[0].append(event)
    for end, waiter in zip(ends, waiters, strict=True):
        batch = batches.setdefault(end.event.job_id, ([], [], []))
        batch[1].append(end)
        batch[2].append(waiter)
    return list(batches.values())

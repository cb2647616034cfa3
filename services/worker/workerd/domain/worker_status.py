"""The worker's own state: lifecycle, admission and counters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hearth.errors import AlreadyExists, ResourceExhausted, Unavailable
from workerd.domain.engine import FinishReason

WorkerState = Literal["starting", "ready", "draining"]

#: How long a client should wait before retrying a busy worker.
BUSY_RETRY_AFTER_SECONDS = 0.5


@dataclass(frozen=True)
class GpuStatus:
    """The worker's GPU as last read. ``present`` is False where there is no
    GPU or it cannot be read; the other fields then mean nothing."""

    present: bool = False
    name: str = ""
    index: int = 0
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    memory_free_bytes: int = 0


@dataclass(frozen=True)
class WorkerCounters:
    """Counters since the worker started."""

    requests_total: int = 0
    tokens_generated_total: int = 0
    aborted_total: int = 0


class WorkerStatus:
    """Lifecycle state, running generations and counters of one worker.

    The worker starts in ``starting``, turns ``ready`` once its engine has
    started, and ``draining`` when it leaves: running generations finish, new
    ones are refused.

    Args:
        worker_id: the worker's stable id.
        max_concurrency: most generations admitted at once.
    """

    def __init__(self, worker_id: str, max_concurrency: int, *, started_at: datetime | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.worker_id = worker_id
        self.max_concurrency = max_concurrency
        self.started_at = started_at or datetime.now(UTC)
        self.state: WorkerState = "starting"
        self._running: set[str] = set()
        self._requests_total = 0
        self._tokens_generated_total = 0
        self._aborted_total = 0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def counters(self) -> WorkerCounters:
        return WorkerCounters(self._requests_total, self._tokens_generated_total, self._aborted_total)

    def mark_ready(self) -> None:
        if self.state == "starting":
            self.state = "ready"

    def mark_draining(self) -> None:
        self.state = "draining"

    def check_loads_allowed(self) -> None:
        """Raise Unavailable (``WORKER_DRAINING``) when draining: a worker on
        its way out loads no models."""
        if self.state == "draining":
            raise Unavailable(
                f"worker {self.worker_id} is draining and loads no models",
                reason="WORKER_DRAINING",
                metadata={"worker_id": self.worker_id},
            )

    @contextmanager
    def admit(self, job_id: str) -> Iterator[None]:
        """Hold a concurrency slot for ``job_id`` for the duration of the block.

        Raises ResourceExhausted (``WORKER_BUSY``, retry after 0.5 s) when all
        slots are taken, Unavailable (``WORKER_STARTING`` / ``WORKER_DRAINING``)
        when the worker takes no requests, AlreadyExists
        (``JOB_ALREADY_RUNNING``) for a job id that is already running here.
        """
        if self.state != "ready":
            raise Unavailable(
                f"worker {self.worker_id} is {self.state}",
                reason=f"WORKER_{self.state.upper()}",
                metadata={"worker_id": self.worker_id},
            )
        if job_id in self._running:
            raise AlreadyExists(
                f"job {job_id} is already generating on worker {self.worker_id}",
                reason="JOB_ALREADY_RUNNING",
                metadata={"job_id": job_id},
            )
        if len(self._running) >= self.max_concurrency:
            raise ResourceExhausted(
                f"worker {self.worker_id} is running its maximum of {self.max_concurrency} generations",
                reason="WORKER_BUSY",
                metadata={"worker_id": self.worker_id, "max_concurrency": str(self.max_concurrency)},
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        self._running.add(job_id)
        self._requests_total += 1
        try:
            yield
        finally:
            self._running.discard(job_id)

    def record_tokens(self, count: int) -> None:
        self._tokens_generated_total += count

    def record_finish(self, reason: FinishReason) -> None:
        if reason == "aborted":
            self._aborted_total += 1

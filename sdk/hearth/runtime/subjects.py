"""Every NATS subject and stream Hearth uses, named in one place."""

from __future__ import annotations

#: Worker heartbeats: ``hearth.workers.heartbeat.<worker_id>`` (WorkerHeartbeat).
WORKER_HEARTBEAT = "hearth.workers.heartbeat.{worker_id}"
WORKER_HEARTBEAT_ALL = "hearth.workers.heartbeat.*"

#: Pool changes published by pool-managerd (PoolChanged).
POOL_CHANGED = "hearth.pool.changed"

#: Cancellation broadcast (CancelRequested): every party holding the job stops.
JOB_CANCEL = "hearth.jobs.cancel"

#: Job lifecycle events (JobEvent without tokens): ``hearth.events.job.<kind>``.
JOB_EVENT = "hearth.events.job.{kind}"
JOB_EVENT_ALL = "hearth.events.job.>"

#: Copies of work events (tasks, links, notes, plans, runs; a tasks.v1.WorkEvent):
#: ``hearth.events.work.<kind>`` (``hearth.events.work.task.created``). PostgreSQL holds the log.
WORK_EVENT = "hearth.events.work.{kind}"
WORK_EVENT_ALL = "hearth.events.work.>"

#: The JetStream stream that keeps job lifecycle events replayable.
EVENTS_STREAM = "HEARTH_EVENTS"
EVENTS_STREAM_SUBJECTS = ("hearth.events.>",)


def worker_heartbeat(worker_id: str) -> str:
    return WORKER_HEARTBEAT.format(worker_id=worker_id)


def job_event(kind: str) -> str:
    return JOB_EVENT.format(kind=kind)


def work_event(kind: str) -> str:
    return WORK_EVENT.format(kind=kind)

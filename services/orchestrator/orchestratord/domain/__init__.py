"""The orchestrator's domain: jobs and their state machine, the queue, the
journal, the dispatcher and the job service, over the ports in ``ports``."""

from orchestratord.domain.active import ActiveJobs
from orchestratord.domain.dispatcher import Dispatcher, DispatchSettings
from orchestratord.domain.jobs import ActiveJob, JobEvent, JobSnapshot, JobSpec, JobState, Outcome, Priority
from orchestratord.domain.journal import EventJournal
from orchestratord.domain.queue import JobQueue
from orchestratord.domain.service import JobService
from orchestratord.domain.validation import JobDraft, SubmitLimits

__all__ = [
    "ActiveJob",
    "ActiveJobs",
    "DispatchSettings",
    "Dispatcher",
    "EventJournal",
    "JobDraft",
    "JobEvent",
    "JobQueue",
    "JobService",
    "JobSnapshot",
    "JobSpec",
    "JobState",
    "Outcome",
    "Priority",
    "SubmitLimits",
]

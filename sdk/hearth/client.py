"""The Hearth client SDK: jobs, streams, workers, memory, tasks and health.

Two clients with the same methods:

- :class:`AsyncClient` for asyncio code::

      async with AsyncClient.from_env() as client:
          stream = client.run("Explain KV caches in one paragraph.")
          async for text in stream:
              print(text, end="", flush=True)
          job = await stream.result()

- :class:`Client` for plain scripts; it runs an :class:`AsyncClient` on a
  private event loop in one background thread, which :meth:`Client.close`
  stops and joins::

      with Client.from_env() as client:
          for text in client.run("Hello"):
              print(text, end="")

Tasks (TaskService, served on the orchestrator's address) are projects of
linked prompts whose context can be previewed and steered and whose runs can
be reproduced::

    outline = client.create_task("guide", "outline", "Outline the install guide.")
    draft = client.create_task("guide", "draft", "Write the guide from the outline.")
    client.link_tasks(draft.task_id, outline.task_id, "requires")
    for update in client.run_project("guide"):
        if update.HasField("summary"):
            print(update.summary.done, "done,", update.summary.failed, "failed")

Every gRPC error is raised as the matching class of :mod:`hearth.errors`,
chosen by status code and carrying the server's stable ``reason``, its
``metadata`` and, for retryable errors, ``retry_after`` in seconds::

    try:
        client.submit("hi")
    except hearth.errors.ResourceExhausted as e:
        if e.reason == "QUEUE_FULL":
            time.sleep(e.retry_after or 1.0)

Addresses come from the constructor or from :meth:`AsyncClient.from_env`,
which reads ``HEARTH_<SERVICE>_ADDRESS`` and then the ``stack.json`` that
``hearth up`` writes into its data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, cast

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hearth import chat
from hearth.api.chat.v1 import chat_pb2
from hearth.api.events.v1 import events_pb2
from hearth.api.memory.v1 import memory_pb2, memory_pb2_grpc
from hearth.api.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc
from hearth.api.router.v1 import router_pb2, router_pb2_grpc
from hearth.api.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from hearth.api.worker.v1 import worker_pb2, worker_pb2_grpc
from hearth.errors import FailedPrecondition, HearthError, InvalidArgument, Unavailable, from_rpc_error

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables naming each service's address, read by ``from_env``.
ADDRESS_ENV: Final[Mapping[str, str]] = {
    "orchestrator": "HEARTH_ORCHESTRATOR_ADDRESS",
    "pool": "HEARTH_POOL_ADDRESS",
    "memory": "HEARTH_MEMORY_ADDRESS",
    "router": "HEARTH_ROUTER_ADDRESS",
    "http": "HEARTH_HTTP_ADDRESS",
}
#: Where ``hearth up`` keeps its state unless told otherwise.
DEFAULT_DATA_DIR: Final = ".hearth"
#: The file ``hearth up`` writes into its data dir with the running stack's addresses.
STACK_FILE: Final = "stack.json"

# stack.json key -> client address name.
_STACK_KEYS: Final[Mapping[str, str]] = {
    "orchestrator": "orchestrator",
    "pool_manager": "pool",
    "memory": "memory",
    "router": "router",
    "http_address": "http",
}
_PRIORITIES: Final[Mapping[str, orchestrator_pb2.Priority.ValueType]] = {
    "interactive": orchestrator_pb2.PRIORITY_INTERACTIVE,
    "batch": orchestrator_pb2.PRIORITY_BATCH,
}
_JOB_STATES: Final[Mapping[str, orchestrator_pb2.JobState.ValueType]] = {
    "queued": orchestrator_pb2.JOB_STATE_QUEUED,
    "running": orchestrator_pb2.JOB_STATE_RUNNING,
    "completed": orchestrator_pb2.JOB_STATE_COMPLETED,
    "failed": orchestrator_pb2.JOB_STATE_FAILED,
    "cancelled": orchestrator_pb2.JOB_STATE_CANCELLED,
}
_MEMORY_KINDS: Final[Mapping[str, memory_pb2.MemoryKind.ValueType]] = {
    "raw_interaction": memory_pb2.MEMORY_KIND_RAW_INTERACTION,
    "task_summary": memory_pb2.MEMORY_KIND_TASK_SUMMARY,
    "project_summary": memory_pb2.MEMORY_KIND_PROJECT_SUMMARY,
    "design_doc": memory_pb2.MEMORY_KIND_DESIGN_DOC,
    "code_snippet": memory_pb2.MEMORY_KIND_CODE_SNIPPET,
    "note": memory_pb2.MEMORY_KIND_NOTE,
    "handoff_summary": memory_pb2.MEMORY_KIND_HANDOFF_SUMMARY,
}
_RETRIEVAL_MODES: Final[Mapping[str, memory_pb2.RetrievalMode.ValueType]] = {
    "hybrid": memory_pb2.RETRIEVAL_MODE_HYBRID,
    "dense": memory_pb2.RETRIEVAL_MODE_DENSE,
    "sparse": memory_pb2.RETRIEVAL_MODE_SPARSE,
}
_TASK_STATUSES: Final[Mapping[str, tasks_pb2.TaskStatus.ValueType]] = {
    "pending": tasks_pb2.TASK_STATUS_PENDING,
    "ready": tasks_pb2.TASK_STATUS_READY,
    "running": tasks_pb2.TASK_STATUS_RUNNING,
    "done": tasks_pb2.TASK_STATUS_DONE,
    "blocked": tasks_pb2.TASK_STATUS_BLOCKED,
    "failed": tasks_pb2.TASK_STATUS_FAILED,
    "cancelled": tasks_pb2.TASK_STATUS_CANCELLED,
    "waiting_approval": tasks_pb2.TASK_STATUS_WAITING_APPROVAL,
}
_CLOSE_STATUSES: Final = ("done", "failed", "cancelled")
_LINK_KINDS: Final[Mapping[str, tasks_pb2.LinkKind.ValueType]] = {
    "requires": tasks_pb2.LINK_KIND_REQUIRES,
    "refers": tasks_pb2.LINK_KIND_REFERS,
    "duplicates": tasks_pb2.LINK_KIND_DUPLICATES,
    "relates_to": tasks_pb2.LINK_KIND_RELATES_TO,
}
_RUN_STRATEGIES: Final[Mapping[str, tasks_pb2.RunStrategy.ValueType]] = {
    "dag": tasks_pb2.RUN_STRATEGY_DAG,
    "priority": tasks_pb2.RUN_STRATEGY_PRIORITY,
}
_PLAN_STATUSES: Final[Mapping[str, tasks_pb2.PlanStatus.ValueType]] = {
    "proposing": tasks_pb2.PLAN_STATUS_PROPOSING,
    "draft": tasks_pb2.PLAN_STATUS_DRAFT,
    "approved": tasks_pb2.PLAN_STATUS_APPROVED,
    "rejected": tasks_pb2.PLAN_STATUS_REJECTED,
    "failed": tasks_pb2.PLAN_STATUS_FAILED,
}
_STATS_GROUPINGS: Final[Mapping[str, tasks_pb2.StatsGrouping.ValueType]] = {
    "none": tasks_pb2.STATS_GROUPING_UNSPECIFIED,
    "day": tasks_pb2.STATS_GROUPING_DAY,
    "month": tasks_pb2.STATS_GROUPING_MONTH,
    "role": tasks_pb2.STATS_GROUPING_ROLE,
    "model": tasks_pb2.STATS_GROUPING_MODEL,
}
_TERMINAL_EVENTS: Final = frozenset({"completed", "failed", "cancelled"})
_HEALTH_TIMEOUT_SECONDS: Final = 2.0
_CHANNEL_OPTIONS: Final = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]

#: The job states, by their lower-case names (``queued``, ``running``, ...).
JOB_STATE_NAMES: Final = tuple(_JOB_STATES)
#: The memory kinds, by their lower-case names (``note``, ``design_doc``, ...).
MEMORY_KIND_NAMES: Final = tuple(_MEMORY_KINDS)
#: The retrieval modes of a memory query, by their lower-case names (``hybrid`` first: the default).
RETRIEVAL_MODE_NAMES: Final = tuple(_RETRIEVAL_MODES)
#: The task statuses, by their lower-case names (``pending``, ``ready``, ...).
TASK_STATUS_NAMES: Final = tuple(_TASK_STATUSES)
#: The statuses :meth:`AsyncClient.close_task` accepts (``done`` first: the default).
CLOSE_STATUS_NAMES: Final = _CLOSE_STATUSES
#: The kinds of a link between tasks (``requires`` first: the default).
LINK_KIND_NAMES: Final = tuple(_LINK_KINDS)
#: The strategies of :meth:`AsyncClient.run_project` (``dag`` first: the default).
RUN_STRATEGY_NAMES: Final = tuple(_RUN_STRATEGIES)
#: The plan statuses, by their lower-case names (``proposing``, ``draft``, ...).
PLAN_STATUS_NAMES: Final = tuple(_PLAN_STATUSES)
#: How :meth:`AsyncClient.stats` may group (``none`` first: the default).
STATS_GROUPING_NAMES: Final = tuple(_STATS_GROUPINGS)


class Unset:
    """The type of :data:`UNSET`: "leave this field as it is" where None means "clear it"."""

    def __repr__(self) -> str:
        return "UNSET"


#: Passed for an argument of :meth:`AsyncClient.memory_update`: do not change that field.
UNSET: Final = Unset()


@dataclass(frozen=True)
class StackAddresses:
    """Where the services of one stack listen (``host:port``); empty when unknown."""

    orchestrator: str = ""
    """OrchestratorService: jobs, streams, cancel."""
    pool: str = ""
    """PoolService (pool-managerd): workers and placement."""
    memory: str = ""
    """MemoryService (memoryd)."""
    router: str = ""
    """RouterService (routerd); only its health is used by the SDK."""
    workers: tuple[str, ...] = ()
    """WorkerService addresses; only their health is used by the SDK."""
    http: str = ""
    """The OpenAI-compatible HTTP API of orchestratord (base URL ``http://<http>/v1``)."""

    def named(self) -> dict[str, str]:
        """Every known address by service name (workers as ``worker-1``, ...), unknown ones left out."""
        found = {
            name: address
            for name, address in (
                ("orchestrator", self.orchestrator),
                ("router", self.router),
                ("pool", self.pool),
                ("memory", self.memory),
            )
            if address
        }
        for index, address in enumerate(self.workers, start=1):
            found[f"worker-{index}"] = address
        return found


def discover_addresses(data_dir: str | os.PathLike[str] | None = None) -> StackAddresses:
    """Find a running stack's addresses.

    Each service's address comes from its environment variable
    (``HEARTH_ORCHESTRATOR_ADDRESS``, ``HEARTH_POOL_ADDRESS``,
    ``HEARTH_MEMORY_ADDRESS``, ``HEARTH_ROUTER_ADDRESS``) when set, and
    otherwise from ``<data_dir>/stack.json`` as ``hearth up`` wrote it. A
    stack.json whose ``pid`` names a process that is no longer running is left
    out (``hearth up`` was killed before it could remove it).

    Args:
        data_dir: the stack's data dir; None means ``$HEARTH_DATA_DIR`` or ``./.hearth``.

    Raises:
        FailedPrecondition: reason ``STACK_NOT_FOUND`` when no address is found
            at all, ``STACK_FILE_INVALID`` when stack.json cannot be read.
    """
    if data_dir is None:
        data_dir = os.environ.get("HEARTH_DATA_DIR") or DEFAULT_DATA_DIR
    directory = Path(data_dir)
    found: dict[str, str] = {}
    workers: tuple[str, ...] = ()
    stack_file = directory / STACK_FILE
    stale = ""
    stack = _read_stack_file(stack_file) if stack_file.is_file() else {}
    if stack and not _process_alive(stack.get("pid")):
        stale = f" ({stack_file} is stale: process {stack.get('pid')} is not running)"
        stack = {}
    if stack:
        for key, name in _STACK_KEYS.items():
            value = stack.get(key)
            if isinstance(value, str) and value:
                found[name] = value
        listed = stack.get("workers")
        if isinstance(listed, list):
            workers = tuple(w for w in listed if isinstance(w, str) and w)
    for name, variable in ADDRESS_ENV.items():
        value = os.environ.get(variable, "").strip()
        if value:
            found[name] = value
    if not found and not workers:
        raise FailedPrecondition(
            f"no running stack found{stale}; start one with `hearth up`",
            reason="STACK_NOT_FOUND",
            metadata={"stack_file": str(stack_file)},
        )
    return StackAddresses(workers=workers, **found)


def _process_alive(pid: object) -> bool:
    """False only when ``pid`` is a number and no such process exists."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. EPERM: it exists, owned by someone else
    return True


def _read_stack_file(path: Path) -> dict[str, Any]:
    try:
        stack = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FailedPrecondition(
            f"cannot read {path}: {err}", reason="STACK_FILE_INVALID", metadata={"stack_file": str(path)}
        ) from err
    if not isinstance(stack, dict):
        raise FailedPrecondition(
            f"{path} is not a JSON object", reason="STACK_FILE_INVALID", metadata={"stack_file": str(path)}
        )
    return stack


def job_state_name(state: int) -> str:
    """``JOB_STATE_COMPLETED`` -> ``COMPLETED``."""
    return orchestrator_pb2.JobState.Name(cast(orchestrator_pb2.JobState.ValueType, state)).removeprefix(
        "JOB_STATE_"
    )


def event_kind(event: events_pb2.JobEvent) -> str:
    """The kind of a job event: ``queued``, ``started``, ``tokens``, ``completed``,
    ``failed`` or ``cancelled``."""
    return event.WhichOneof("kind") or ""


def is_terminal(event: events_pb2.JobEvent) -> bool:
    """True for the one event that ends a job's log."""
    return event_kind(event) in _TERMINAL_EVENTS


class AsyncClient:
    """An asyncio client of a Hearth stack.

    Channels are opened on first use, on the running event loop, and closed by
    :meth:`close` (or by leaving ``async with``). One client may serve many
    concurrent calls; use it from one event loop.

    Args:
        orchestrator: ``host:port`` of OrchestratorService.
        pool: ``host:port`` of PoolService (for :meth:`list_workers`).
        memory: ``host:port`` of MemoryService (for the ``memory_*`` methods).
        router: ``host:port`` of RouterService (health only).
        workers: WorkerService addresses (health only).
        rpc_timeout: deadline of every unary call, in seconds; None for none.
        unavailable_retries: how many times a unary call that failed with
            UNAVAILABLE is retried (with backoff) before the error is raised.
            Submissions stay idempotent across retries: they reuse one request_id.
        watch_reconnects: how many times in a row :meth:`watch` reconnects a
            dropped stream without receiving an event before it gives up.
    """

    def __init__(
        self,
        orchestrator: str = "",
        pool: str = "",
        memory: str = "",
        router: str = "",
        *,
        workers: Sequence[str] = (),
        rpc_timeout: float | None = 30.0,
        unavailable_retries: int = 3,
        watch_reconnects: int = 5,
    ) -> None:
        self.addresses = StackAddresses(
            orchestrator=orchestrator, pool=pool, memory=memory, router=router, workers=tuple(workers)
        )
        self.rpc_timeout = rpc_timeout
        self.unavailable_retries = max(0, unavailable_retries)
        self.watch_reconnects = max(0, watch_reconnects)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> AsyncClient:
        """A client of the running stack, found by :func:`discover_addresses`.

        Args:
            data_dir: the stack's data dir; None means ``$HEARTH_DATA_DIR`` or ``./.hearth``.
            options: the keyword options of the constructor (``rpc_timeout``, ...).

        Raises:
            FailedPrecondition: ``STACK_NOT_FOUND`` when no address is found.
        """
        found = discover_addresses(data_dir)
        return cls(
            orchestrator=found.orchestrator,
            pool=found.pool,
            memory=found.memory,
            router=found.router,
            workers=found.workers,
            **options,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel; running calls are cancelled. Safe to call twice."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    # -- jobs ---------------------------------------------------------------

    async def submit(
        self,
        prompt: str,
        *,
        model: str = "",
        role: str = "",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        priority: str | int = "interactive",
        use_memory_context: bool = False,
        store_in_memory: bool = False,
        project_id: str = "",
        task_id: str = "",
        timeout: float | timedelta | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        messages: Sequence[chat.ChatMessage] = (),
        tools: Sequence[chat.Tool] = (),
        tool_choice: str = "",
        paths: Sequence[str] = (),
        data_class: str | int = "",
        agent: str = "",
    ) -> orchestrator_pb2.Job:
        """Submit a job and return it as queued (the ``SubmitJobResponse.job``).

        Args:
            prompt: the prompt; must not be blank (or empty, with ``messages``).
            model: a configured model name; empty means the role's default.
            role: the agent role; empty means the default role.
            max_tokens: upper bound on generated tokens, at least 1; None means the server's default.
            temperature: 0 is greedy decoding; at most 2.
            seed: sampling seed; 0 leaves it unset.
            priority: ``"interactive"`` (served first) or ``"batch"``, or a ``Priority`` value.
            use_memory_context: put the project's memories nearest to the prompt before it.
            store_in_memory: store the prompt and its answer in memory when the job completes.
            project_id: the memory scope; required by the server with either memory flag.
            task_id: narrows the memory scope to one task.
            timeout: the job fails with DEADLINE_EXCEEDED when it has not ended this
                long after submission (seconds or a timedelta); None means the server's default.
            labels: free-form labels kept with the job.
            request_id: idempotency key; None means a fresh UUID4, reused by the
                SDK's own retries so a retried submission never queues twice.
            messages: a conversation instead of a prompt (pass ``prompt=""``).
            tools: functions the model may call; the router then picks only
                targets that passed ``hearth probe``.
            tool_choice: ``auto`` (default), ``none``, ``required`` or a tool's name.
            paths: files the job reads or edits; the router's denylist and
                sensitive list may raise its data class (and so limit where it runs).
            data_class: ``"L0"`` (public) .. ``"L3"`` (secret), or a ``DataClass``
                value; empty means the policy's default. Facts can only raise it.
            agent: the submitting agent; with ``project_id`` the scope of budgets
                and rate limits.

        Raises:
            InvalidArgument: ``INVALID_FIELD`` (the field is in ``e.field``).
            NotFound: ``MODEL_NOT_FOUND``.
            ResourceExhausted: ``QUEUE_FULL``, ``RATE_LIMITED`` (wait ``e.retry_after``
                seconds and retry) or ``BUDGET_EXCEEDED``.
            HearthError: ``POLICY_DENIED`` (PERMISSION_DENIED; the rule is in ``e.metadata``).
        """
        spec = orchestrator_pb2.JobSpec(
            prompt=prompt,
            model=model,
            role=role,
            temperature=temperature,
            seed=seed,
            priority=_priority_value(priority),
            use_memory_context=use_memory_context,
            store_in_memory=store_in_memory,
            project_id=project_id,
            task_id=task_id,
            labels=dict(labels or {}),
            messages=[chat.message_to_proto(m) for m in messages],
            tools=[chat.tool_to_proto(t) for t in tools],
            tool_choice=tool_choice,
            paths=list(paths),
            data_class=_data_class_value(data_class),
            agent=agent,
        )
        if max_tokens is not None:
            spec.max_tokens = max_tokens
        if timeout is not None:
            spec.timeout.CopyFrom(_duration(timeout))
        request = orchestrator_pb2.SubmitJobRequest(spec=spec, request_id=request_id or str(uuid.uuid4()))
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))
        response = await self._unary(stub.SubmitJob, request)
        return response.job

    async def get_job(self, job_id: str) -> orchestrator_pb2.Job:
        """A job with its output so far, run record and routing report.

        Raises:
            NotFound: when no job has this id.
        """
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))
        response = await self._unary(stub.GetJob, orchestrator_pb2.GetJobRequest(job_id=job_id))
        return response.job

    async def list_jobs(
        self, page_size: int = 50, page_token: str = "", state: str | int | None = None
    ) -> tuple[list[orchestrator_pb2.Job], str]:
        """One page of jobs, newest first.

        Args:
            page_size: at most this many (the server caps it at 1000).
            page_token: the ``next_token`` of the previous page; empty for the first.
            state: only jobs in this state: ``"queued"``, ``"running"``,
                ``"completed"``, ``"failed"``, ``"cancelled"`` or a ``JobState`` value.

        Returns:
            ``(jobs, next_token)``; ``next_token`` is empty on the last page.
        """
        request = orchestrator_pb2.ListJobsRequest(
            page_size=page_size, page_token=page_token, state=_job_state_value(state)
        )
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))
        response = await self._unary(stub.ListJobs, request)
        return list(response.jobs), response.next_page_token

    async def cancel_job(self, job_id: str, reason: str = "") -> orchestrator_pb2.Job:
        """Cancel a queued or running job. A job that has already ended is
        returned as it ended; that is not an error."""
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))
        request = orchestrator_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        response = await self._unary(stub.CancelJob, request)
        return response.job

    async def watch(self, job_id: str, after_sequence: int = 0) -> AsyncIterator[events_pb2.JobEvent]:
        """The job's events with a sequence greater than ``after_sequence``, in
        order, ending after the terminal event (completed, failed or cancelled).

        A dropped stream (UNAVAILABLE, or the server closing it before the
        terminal event) is resumed transparently from the last sequence seen,
        with backoff; no event is lost or repeated. After
        ``watch_reconnects`` reconnections in a row without a new event the
        last error is raised. Leaving the loop early cancels the stream.

        Raises:
            NotFound: when no job has this id.
            Unavailable: when the stream cannot be resumed.
        """
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel("orchestrator"))
        last_sequence = after_sequence
        failures = 0
        while True:
            # batch: every waiting event in one message, so a watcher that
            # falls behind under load catches up in few messages.
            call = stub.WatchJob(
                orchestrator_pb2.WatchJobRequest(job_id=job_id, after_sequence=last_sequence, batch=True)
            )
            dropped: HearthError
            try:
                async for response in call:
                    for event in response.events or (response.event,):
                        if event.sequence <= last_sequence:
                            continue  # a resumed stream may repeat what we already have
                        last_sequence = event.sequence
                        failures = 0
                        yield event
                        if is_terminal(event):
                            return
                dropped = Unavailable(
                    "the job stream ended before the job did",
                    reason="STREAM_ENDED",
                    metadata={"job_id": job_id},
                )
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                if not isinstance(error, Unavailable):
                    raise error from None
                dropped = error
            finally:
                call.cancel()
            failures += 1
            if failures > self.watch_reconnects:
                raise dropped
            log.debug("job %s stream dropped (%s); resuming after %d", job_id, dropped.reason, last_sequence)
            await asyncio.sleep(_backoff(failures))

    def run(self, prompt: str, **submit_kwargs: Any) -> JobStream:
        """Submit a job and stream its answer.

        Nothing is sent until the stream is first used (iterated,
        :meth:`JobStream.submitted`, :meth:`JobStream.result`)::

            stream = client.run("Hi", max_tokens=64)
            async for text in stream:
                print(text, end="")
            job = await stream.result()

        Args:
            prompt: the prompt.
            submit_kwargs: the keyword arguments of :meth:`submit`.
        """
        return JobStream(self, prompt, submit_kwargs)

    # -- tasks, context bundles, runs (TaskService) ----------------------------

    async def create_task(
        self,
        project_id: str,
        name: str,
        prompt: str = "",
        *,
        messages: Sequence[chat.ChatMessage | chat_pb2.ChatMessage] = (),
        priority: int = 0,
        role: str = "",
        model: str = "",
        labels: Mapping[str, str] | None = None,
        requires_approval: bool = False,
        context_budget: int = 0,
        agent: str = "",
    ) -> tasks_pb2.Task:
        """Add a task to a project (the project is created with its first task).

        The task starts ``pending`` (``ready`` once nothing it requires is
        open), or ``waiting_approval`` when ``requires_approval`` is set.

        Not retried on UNAVAILABLE: CreateTask has no idempotency key, so a
        retry after a lost answer could add the task twice.

        Args:
            project_id: the project.
            name: a short name for people.
            prompt: the prompt; give either it or ``messages``, not both.
            messages: a conversation instead of a prompt.
            priority: lower runs first (0 before 1).
            role: the agent role that runs it; empty for the default role.
            model: a model name; empty for the router's choice for the role.
            labels: free-form labels kept with the task.
            requires_approval: the task runs only after :meth:`approve_context`.
            context_budget: most tokens of context; 0 for the orchestrator's default.
            agent: who creates it (a person's or an agent's name).

        Raises:
            InvalidArgument: ``INVALID_FIELD``, ``INVALID_TEXT`` or ``BUDGET_TOO_LARGE``.
        """
        request = tasks_pb2.CreateTaskRequest(
            project_id=project_id,
            name=name,
            prompt=prompt,
            messages=[_chat_message_proto(m) for m in messages],
            priority=priority,
            role=role,
            model=model,
            labels=dict(labels or {}),
            requires_approval=requires_approval,
            context_budget=context_budget,
            agent=agent,
        )
        response = await self._unary(self._tasks().CreateTask, request, retry=False)
        return response.task

    async def get_task(self, task_id: int) -> tasks_pb2.GetTaskResponse:
        """A task with its notes, its outgoing and incoming links and its 20 most recent runs.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
        """
        return await self._unary(self._tasks().GetTask, tasks_pb2.GetTaskRequest(task_id=task_id))

    async def list_tasks(self, project_id: str, status: str | int | None = None) -> list[tasks_pb2.Task]:
        """A project's tasks in scheduling order (priority, created, id), with
        statuses derived from the dependency graph.

        Args:
            project_id: the project.
            status: only tasks in this status (a name of :data:`TASK_STATUS_NAMES`
                or a ``TaskStatus`` value); None for every task.

        Raises:
            ValueError: ``status`` is not a known status name.
            NotFound: ``PROJECT_NOT_FOUND``.
        """
        request = tasks_pb2.ListTasksRequest(project_id=project_id, status=_task_status_value(status))
        response = await self._unary(self._tasks().ListTasks, request)
        return list(response.tasks)

    async def add_note(self, task_id: int, text: str, agent: str = "") -> tasks_pb2.Note:
        """Append a note to a task; notes are never changed or deleted.

        Not retried on UNAVAILABLE (a retry could add the note twice).

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
            InvalidArgument: ``INVALID_TEXT`` for a blank note.
        """
        request = tasks_pb2.AddNoteRequest(task_id=task_id, text=text, agent=agent)
        response = await self._unary(self._tasks().AddNote, request, retry=False)
        return response.note

    async def close_task(
        self, task_id: int, status: str | int = "done", reason: str = "", agent: str = ""
    ) -> tasks_pb2.Task:
        """Mark a task done, failed or cancelled, recording who and when; the
        tasks that require it are re-evaluated.

        Args:
            task_id: the task.
            status: ``"done"``, ``"failed"`` or ``"cancelled"`` (or the ``TaskStatus`` value).
            reason: why, for people.
            agent: who closes it.

        Raises:
            ValueError: ``status`` is not one of :data:`CLOSE_STATUS_NAMES`.
            NotFound: ``TASK_NOT_FOUND``.
            FailedPrecondition: ``TASK_CLOSED``, ``TASK_RUNNING``.
        """
        if isinstance(status, str) and _enum_key(status, "task_status_") not in _CLOSE_STATUSES:
            raise ValueError(f"unknown close status {status!r}; one of {', '.join(_CLOSE_STATUSES)}")
        request = tasks_pb2.CloseTaskRequest(
            task_id=task_id, status=_task_status_value(status), reason=reason, agent=agent
        )
        response = await self._unary(self._tasks().CloseTask, request)
        return response.task

    async def hold_task(self, task_id: int, reason: str, agent: str = "") -> tasks_pb2.Task:
        """Block a task with a reason until :meth:`release_task`.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
            InvalidArgument: a blank ``reason``.
            FailedPrecondition: ``TASK_CLOSED``, ``TASK_RUNNING``.
        """
        request = tasks_pb2.HoldTaskRequest(task_id=task_id, reason=reason, agent=agent)
        response = await self._unary(self._tasks().HoldTask, request)
        return response.task

    async def release_task(self, task_id: int, agent: str = "") -> tasks_pb2.Task:
        """Lift a hold: the task is pending or ready again.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
        """
        request = tasks_pb2.ReleaseTaskRequest(task_id=task_id, agent=agent)
        response = await self._unary(self._tasks().ReleaseTask, request)
        return response.task

    async def link_tasks(
        self, from_task: int, to_task: int, kind: str | int = "requires", agent: str = ""
    ) -> tasks_pb2.CreateLinkResponse:
        """Link two tasks of one project; linking twice is not an error
        (``response.existed`` is then True and nothing is written).

        Args:
            from_task: the task the link starts at.
            to_task: the task it points to.
            kind: ``"requires"`` (``from_task`` may run only once ``to_task`` is
                done, and gets its output as context), ``"refers"`` (``to_task``'s
                output is lower-priority context), ``"duplicates"`` or
                ``"relates_to"``; or a ``LinkKind`` value.
            agent: who links them.

        Raises:
            ValueError: ``kind`` is not one of :data:`LINK_KIND_NAMES`.
            NotFound: ``TASK_NOT_FOUND``.
            FailedPrecondition: ``DEPENDENCY_CYCLE`` when a requires link would
                close a cycle (the task ids in order in ``e.metadata["cycle"]``,
                ``"3,5,7,3"``), ``CROSS_PROJECT_LINK``.
        """
        request = tasks_pb2.CreateLinkRequest(
            from_task=from_task, to_task=to_task, kind=_link_kind_value(kind), agent=agent
        )
        return await self._unary(self._tasks().CreateLink, request)

    async def unlink_tasks(self, from_task: int, to_task: int, kind: str | int = "requires") -> None:
        """Remove a link (see :meth:`link_tasks` for ``kind``).

        Raises:
            ValueError: ``kind`` is not one of :data:`LINK_KIND_NAMES`.
            NotFound: ``LINK_NOT_FOUND`` when there is no such link.
        """
        request = tasks_pb2.DeleteLinkRequest(
            from_task=from_task, to_task=to_task, kind=_link_kind_value(kind)
        )
        await self._unary(self._tasks().DeleteLink, request)

    async def list_links(self, task_id: int) -> tasks_pb2.ListLinksResponse:
        """A task's links: ``outgoing`` (it is ``from_task``) and ``incoming``.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
        """
        return await self._unary(self._tasks().ListLinks, tasks_pb2.ListLinksRequest(task_id=task_id))

    async def next_task(self, project_id: str) -> tasks_pb2.NextTaskResponse:
        """The project's next ready task by (priority, created, id), and the
        blocked tasks with their reasons. ``response.HasField("task")`` is
        False when nothing is ready."""
        return await self._unary(self._tasks().NextTask, tasks_pb2.NextTaskRequest(project_id=project_id))

    async def preview_context(self, task_id: int, budget: int = 0) -> tasks_pb2.ContextBundle:
        """The context bundle a run of the task would use, without running it:
        every candidate with its tokens, tier and fate (what the budget did
        to it, and why), the rendered prompt and the bundle's content hash.

        Args:
            task_id: the task.
            budget: tokens of context for this preview only; 0 keeps the task's budget.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
            InvalidArgument: ``BUDGET_TOO_LARGE``.
        """
        request = tasks_pb2.PreviewContextRequest(task_id=task_id, budget=budget)
        response = await self._unary(self._tasks().PreviewContext, request)
        return response.bundle

    async def approve_context(
        self, task_id: int, pins: Sequence[str] = (), excludes: Sequence[str] = (), agent: str = ""
    ) -> tasks_pb2.ApproveContextResponse:
        """Store pins and excludes for the task (every later run uses them)
        and approve it to run.

        Args:
            task_id: the task.
            pins: sources to add as pinned items: ``"task:<id>"`` or ``"memory:<id>"``.
            excludes: sources to leave out, whatever their tier.
            agent: who approves.

        Returns:
            The task and the bundle its next run will use.

        Raises:
            NotFound: ``TASK_NOT_FOUND``, ``PIN_NOT_FOUND``.
        """
        request = tasks_pb2.ApproveContextRequest(
            task_id=task_id, pins=list(pins), excludes=list(excludes), agent=agent
        )
        return await self._unary(self._tasks().ApproveContext, request)

    async def run_task(
        self, task_id: int, agent: str = "", *, timeout: float | None = None
    ) -> tasks_pb2.RunTaskResponse:
        """Run one ready task as a Hearth job and return its run once the job
        has ended (``response.run.status`` says how), with the task after it.

        The call lasts as long as the job, so it has no deadline by default
        (the job's own timeout bounds it) and is not retried on UNAVAILABLE.

        Args:
            task_id: the task.
            agent: who runs it.
            timeout: seconds to wait for the run; None waits as long as the job takes.

        Raises:
            NotFound: ``TASK_NOT_FOUND``.
            FailedPrecondition: ``NOT_APPROVED``, ``TASK_CLOSED``, ``TASK_RUNNING``,
                or the task is not ready.
        """
        request = tasks_pb2.RunTaskRequest(task_id=task_id, agent=agent)
        return await self._unary(self._tasks().RunTask, request, retry=False, timeout=timeout)

    async def run_project(
        self,
        project_id: str,
        strategy: str | int = "dag",
        parallelism: int = 0,
        continue_on_failure: bool = False,
        agent: str = "",
    ) -> AsyncIterator[tasks_pb2.RunProjectResponse]:
        """Run a project's ready tasks as jobs until no task is ready, yielding
        each change: a ``task`` update (started or ended) and, last, the
        ``summary``.

        The stream has no deadline (a project can run for hours) and is not
        resumed when it drops: the error is raised. Leaving the loop early
        cancels the stream (the server then stops starting tasks).

        Args:
            project_id: the project.
            strategy: ``"dag"`` (level by level of the dependency graph, by
                priority inside a level) or ``"priority"`` (any ready task by
                priority, whatever its depth); or a ``RunStrategy`` value.
            parallelism: most tasks running at once; 0 for the orchestrator's default.
            continue_on_failure: keep running the tasks that do not depend on a
                failed one; by default no task is started after the first failure.
            agent: who runs them.

        Raises:
            ValueError: ``strategy`` is not one of :data:`RUN_STRATEGY_NAMES`.
            NotFound: ``PROJECT_NOT_FOUND``.
        """
        request = tasks_pb2.RunProjectRequest(
            project_id=project_id,
            strategy=_run_strategy_value(strategy),
            parallelism=parallelism,
            continue_on_failure=continue_on_failure,
            agent=agent,
        )
        call = self._tasks().RunProject(request)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    async def get_run(self, run_id: int) -> tasks_pb2.GetRunResponse:
        """A run record with its context snapshot (``response.bundle``, unset
        when the snapshot is gone).

        Raises:
            NotFound: ``RUN_NOT_FOUND``.
        """
        return await self._unary(self._tasks().GetRun, tasks_pb2.GetRunRequest(run_id=run_id))

    async def list_runs(
        self, project_id: str = "", task_id: int = 0, page_size: int = 0
    ) -> list[tasks_pb2.Run]:
        """The runs of a project or of one task (exactly one of the two), newest first.

        Args:
            project_id: the project's runs.
            task_id: this task's runs.
            page_size: at most this many; 0 means 50 (the server caps it at 1000).

        Raises:
            InvalidArgument: ``project_id`` when both or neither are given.
        """
        if bool(project_id) == bool(task_id):
            raise InvalidArgument("project_id", "give exactly one of project_id and task_id")
        request = tasks_pb2.ListRunsRequest(project_id=project_id, task_id=task_id, page_size=page_size)
        response = await self._unary(self._tasks().ListRuns, request)
        return list(response.runs)

    async def rerun_task(
        self, run_id: int, agent: str = "", *, timeout: float | None = None
    ) -> tasks_pb2.Run:
        """Run a run's task again with the same context snapshot (the same
        prompt, byte for byte) and the same model and sampling settings;
        returns the new run once its job has ended (``run.rerun_of`` is
        ``run_id``). Like :meth:`run_task`: no deadline by default, no retry.

        Raises:
            NotFound: ``RUN_NOT_FOUND``.
        """
        request = tasks_pb2.RerunTaskRequest(run_id=run_id, agent=agent)
        response = await self._unary(self._tasks().RerunTask, request, retry=False, timeout=timeout)
        return response.run

    async def diff_runs(self, a: int, b: int) -> tasks_pb2.DiffRunsResponse:
        """What differs between run ``a`` and run ``b``: ``same_context``,
        ``same_output`` and, in ``diff_json``, the context items added,
        removed and changed, whether the prompts are identical, the model,
        engine and sampling changes, the tokens and the output's unified diff.

        Raises:
            NotFound: ``RUN_NOT_FOUND``.
        """
        return await self._unary(self._tasks().DiffRuns, tasks_pb2.DiffRunsRequest(run_a=a, run_b=b))

    async def set_project_index(self, project_id: str, text: str, agent: str = "") -> tasks_pb2.Project:
        """Store the project's INDEX document (conventions, layout, decisions),
        the first item of every context bundle of its tasks.

        Raises:
            NotFound: ``PROJECT_NOT_FOUND``.
        """
        request = tasks_pb2.SetProjectIndexRequest(project_id=project_id, index_document=text, agent=agent)
        response = await self._unary(self._tasks().SetProjectIndex, request)
        return response.project

    async def get_project(self, project_id: str) -> tasks_pb2.Project:
        """A project with its INDEX document and its task counts by status name.

        Raises:
            NotFound: ``PROJECT_NOT_FOUND``.
        """
        request = tasks_pb2.GetProjectRequest(project_id=project_id)
        response = await self._unary(self._tasks().GetProject, request)
        return response.project

    # -- plans, roles, stats, events (TaskService) ----------------------------

    async def propose_plan(
        self,
        project_id: str,
        goal: str,
        *,
        agent: str = "",
        max_attempts: int = 0,
        model: str = "",
        timeout: float | None = None,
    ) -> tasks_pb2.Plan:
        """Ask the manager role for a plan of ``goal``: its answer must be a
        JSON plan (tasks with keys, names, roles, prompts and requires); an
        invalid one is sent back with its errors, up to ``max_attempts`` jobs
        in all. Returns the draft (``plan.attempts`` shows every answer).

        The call lasts as long as the manager's jobs, so it has no deadline by
        default and is not retried.

        Args:
            project_id: the project (created with the plan when new).
            goal: what the plan is for.
            agent: who asks.
            max_attempts: jobs in all; 0 for the server's default (3), at most 5.
            model: a model for the manager; empty for the manager role's chain.
            timeout: seconds to wait; None waits as long as the jobs take.

        Raises:
            FailedPrecondition: ``PLAN_FAILED`` when no attempt gave a valid plan
                (``e.metadata["plan_id"]``; :meth:`get_plan` shows the attempts).
            InvalidArgument: a bad project id, goal or attempt count.
        """
        request = tasks_pb2.ProposePlanRequest(
            project_id=project_id, goal=goal, agent=agent, max_attempts=max_attempts, model=model
        )
        response = await self._unary(self._tasks().ProposePlan, request, retry=False, timeout=timeout)
        return response.plan

    async def get_plan(self, plan_id: int) -> tasks_pb2.Plan:
        """A plan with its draft and every attempt.

        Raises:
            NotFound: ``PLAN_NOT_FOUND``.
        """
        response = await self._unary(self._tasks().GetPlan, tasks_pb2.GetPlanRequest(plan_id=plan_id))
        return response.plan

    async def list_plans(self, project_id: str, status: str | int | None = None) -> list[tasks_pb2.Plan]:
        """A project's plans, newest first; ``status`` narrows (a name of
        :data:`PLAN_STATUS_NAMES` or a ``PlanStatus`` value)."""
        request = tasks_pb2.ListPlansRequest(project_id=project_id, status=_plan_status_value(status))
        response = await self._unary(self._tasks().ListPlans, request)
        return list(response.plans)

    async def edit_plan(
        self,
        plan_id: int,
        draft: tasks_pb2.PlanDraft | Mapping[str, Any],
        *,
        revision: int = 0,
        agent: str = "",
    ) -> tasks_pb2.Plan:
        """Replace a draft's tasks (the whole draft: add, remove or change
        tasks in it), validated as a proposal is.

        Args:
            plan_id: the plan (a draft).
            draft: a ``PlanDraft`` or its JSON form (``{"tasks": [{"key", "name",
                "role", "prompt", "requires", "priority", "produces_index"}]}``).
            revision: the revision the edit was made on (0: no check).
            agent: who edits.

        Raises:
            InvalidArgument: ``PLAN_INVALID``, the first error's path in ``e.metadata["field"]``.
            FailedPrecondition: ``PLAN_NOT_DRAFT``.
            Aborted: ``REVISION_MISMATCH`` when the plan changed since ``revision``.
        """
        request = tasks_pb2.EditPlanRequest(
            plan_id=plan_id, draft=plan_draft(draft), revision=revision, agent=agent
        )
        response = await self._unary(self._tasks().EditPlan, request, retry=False)
        return response.plan

    async def approve_plan(
        self,
        plan_id: int,
        draft: tasks_pb2.PlanDraft | Mapping[str, Any] | None = None,
        *,
        revision: int = 0,
        agent: str = "",
    ) -> tasks_pb2.ApprovePlanResponse:
        """Approve a draft (with ``draft``: that edited draft): its tasks and
        requires links are created in one transaction. Returns the plan
        (``task_ids`` by key), the tasks and the links.

        Raises:
            InvalidArgument: ``PLAN_INVALID`` for an invalid ``draft``.
            FailedPrecondition: ``PLAN_NOT_DRAFT``.
            Aborted: ``REVISION_MISMATCH``.
        """
        request = tasks_pb2.ApprovePlanRequest(plan_id=plan_id, revision=revision, agent=agent)
        if draft is not None:
            request.draft.CopyFrom(plan_draft(draft))
        return await self._unary(self._tasks().ApprovePlan, request, retry=False)

    async def reject_plan(self, plan_id: int, reason: str, agent: str = "") -> tasks_pb2.Plan:
        """Reject a draft with a reason; the draft is kept.

        Raises:
            InvalidArgument: a blank ``reason``.
            FailedPrecondition: ``PLAN_NOT_DRAFT``.
        """
        request = tasks_pb2.RejectPlanRequest(plan_id=plan_id, reason=reason, agent=agent)
        response = await self._unary(self._tasks().RejectPlan, request)
        return response.plan

    async def list_roles(self, route: bool = True) -> list[tasks_pb2.Role]:
        """The agent roles with their model chains, system prompts, context
        policies and tool permissions; with ``route``, where each role's jobs
        would run now (``role.route``: the router's dry-run choice and reason)."""
        response = await self._unary(self._tasks().ListRoles, tasks_pb2.ListRolesRequest(route=route))
        return list(response.roles)

    async def stats(
        self,
        *,
        project_id: str = "",
        agent: str = "",
        group_by: str | int = "none",
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> tasks_pb2.StatsResponse:
        """Usage from the run records and plan attempts: jobs, failed jobs and
        the failure rate, tokens in and out, cost, and time to first token, per
        group and in total. Prompts and outputs are never part of it.

        Args:
            project_id: only this project's.
            agent: only the runs this agent started.
            group_by: ``"none"``, ``"day"``, ``"month"`` (UTC), ``"role"`` or
                ``"model"`` (see :data:`STATS_GROUPING_NAMES`), or the value.
            start: only jobs started at or after this time (naive means UTC).
            end: only jobs started before this time.

        Raises:
            ValueError: ``group_by`` is not a known grouping.
        """
        request = tasks_pb2.StatsRequest(
            project_id=project_id, agent=agent, group_by=_stats_grouping_value(group_by)
        )
        if start is not None:
            request.start_time.CopyFrom(_timestamp(start))
        if end is not None:
            request.end_time.CopyFrom(_timestamp(end))
        return await self._unary(self._tasks().Stats, request)

    async def export_events(
        self, since: int = 0, *, project_id: str = "", limit: int = 0
    ) -> AsyncIterator[tasks_pb2.WorkEvent]:
        """The work event log after sequence ``since``, in order: every change
        of a project, task, link, note, context override, plan, plan attempt
        or run, with the entity's state after it (``event.data_json``).

        Args:
            since: events with a higher sequence (0: from the first).
            project_id: only this project's events.
            limit: at most this many (0: all there are now).
        """
        request = tasks_pb2.ExportEventsRequest(since=since, project_id=project_id, limit=limit)
        call = self._tasks().ExportEvents(request)
        try:
            async for response in call:
                for event in response.events:
                    yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    # -- pool, memory, health -------------------------------------------------

    async def list_workers(self) -> list[pool_pb2.PooledWorker]:
        """Every live worker as the pool sees it (all pages), ordered by worker id."""
        stub = pool_pb2_grpc.PoolServiceStub(self._channel("pool"))
        workers: list[pool_pb2.PooledWorker] = []
        token = ""
        while True:
            response = await self._unary(stub.ListWorkers, pool_pb2.ListWorkersRequest(page_token=token))
            workers.extend(response.workers)
            token = response.next_page_token
            if not token:
                return workers

    async def generate_on_target(
        self, request: worker_pb2.GenerateRequest, *, timeout: float = 120.0
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """Run one generation on a worker serving ``request.model``, bypassing
        routing and the job log: a diagnostic path (``hearth probe`` tests a
        target with it before the router may send it tool jobs). The pool
        places it (waiting while the model loads); the lease is always
        released. ``request.job_id`` is set when empty."""
        if not request.job_id:
            request.job_id = f"probe-{uuid.uuid4()}"
        pool = pool_pb2_grpc.PoolServiceStub(self._channel("pool"))
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                placed = await pool.Place(
                    pool_pb2.PlaceRequest(job_id=request.job_id, model=request.model),
                    timeout=self.rpc_timeout,
                )
                break
            except grpc.RpcError as err:
                error = from_rpc_error(err)
            if (
                error.reason not in ("MODEL_LOADING", "NO_CAPACITY")
                or asyncio.get_running_loop().time() > deadline
            ):
                raise error
            await asyncio.sleep(min(error.retry_after or 0.5, 2.0))
        lease = placed.lease
        try:
            worker = worker_pb2_grpc.WorkerServiceStub(self._channel_for(lease.address))
            call = worker.Generate(request, timeout=timeout)
            try:
                async for message in call:
                    yield message
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
        finally:
            with contextlib.suppress(grpc.RpcError):
                await pool.Release(pool_pb2.ReleaseRequest(lease_id=lease.lease_id), timeout=self.rpc_timeout)

    async def list_targets(self) -> list[router_pb2.Target]:
        """The router's registry of targets, with each one's latest tool-call probe result."""
        stub = router_pb2_grpc.RouterServiceStub(self._channel("router"))
        response = await self._unary(stub.ListTargets, router_pb2.ListTargetsRequest())
        return list(response.targets)

    async def record_conformance(
        self, target: str, checks: Sequence[router_pb2.ConformanceCheck]
    ) -> router_pb2.Target:
        """Store a tool-call probe result for ``target`` in the router's registry."""
        stub = router_pb2_grpc.RouterServiceStub(self._channel("router"))
        request = router_pb2.RecordConformanceRequest(target=target, checks=list(checks))
        response = await self._unary(stub.RecordConformance, request)
        return response.target

    async def route(
        self,
        *,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        model: str = "",
        role: str = "",
        needs_tools: bool = False,
        paths: Sequence[str] = (),
        data_class: str | int = "",
        project_id: str = "",
        agent: str = "",
        secret_kinds: Sequence[str] = (),
        job_id: str = "",
        dry_run: bool = True,
    ) -> router_pb2.RouteResponse:
        """Ask the router where a job with these facts would run, and why (``hearth route --explain``).

        Only facts are sent, never a prompt: count its tokens and look for secrets in it on this
        side (:func:`hearth.runtime.redaction.find_secrets`) and pass ``secret_kinds``.

        Args:
            prompt_tokens: tokens in the prompt plus context (an estimate is fine).
            max_tokens: the most tokens the job would generate.
            model: a configured model name; empty means the role's default.
            role: the agent role; empty means the default role.
            needs_tools: the job offers tools (only targets that passed ``hearth probe`` qualify).
            paths: files the job reads or edits (matched against the denylist and sensitive list).
            data_class: ``"L0"`` .. ``"L3"`` or a ``DataClass`` value; empty: the policy's default.
            project_id: the budget and rate-limit scope.
            agent: the agent's budget scope.
            secret_kinds: kinds of secrets found in the job's text; any makes it L3.
            job_id: shown in the router's trace only.
            dry_run: decide and report without counting against rate limits (the default).

        Returns:
            The chain (best first) and the routing report (see docs/routing.md).

        Raises:
            NotFound: ``MODEL_NOT_FOUND``.
            PermissionDenied: ``POLICY_DENIED`` (the rule is in ``e.metadata["rule"]``).
            ResourceExhausted: ``BUDGET_EXCEEDED``, or ``RATE_LIMITED`` when not a dry run.
            Unavailable: ``CIRCUIT_OPEN``.
            FailedPrecondition: ``NO_TOOL_CAPABLE_TARGET``.
            InvalidArgument: ``CONTEXT_TOO_LONG`` or a bad field.
        """
        request = router_pb2.RouteRequest(
            job_id=job_id,
            model=model,
            role=role,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            needs_tools=needs_tools,
            paths=list(paths),
            data_class=_data_class_value(data_class),
            project_id=project_id,
            agent=agent,
            secret_kinds=list(secret_kinds),
            dry_run=dry_run,
        )
        stub = router_pb2_grpc.RouterServiceStub(self._channel("router"))
        return await self._unary(stub.Route, request)

    async def memory_store(
        self,
        text: str,
        project_id: str,
        task_id: str = "",
        kind: str | int = "note",
        labels: Mapping[str, str] | None = None,
        *,
        subtask_id: str = "",
        agent: str = "",
        role: str = "",
        source: str = "",
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        request_id: str | None = None,
    ) -> memory_pb2.Memory:
        """Store one memory and return it with its id, once durably written.

        Args:
            text: what to remember; long texts are chunked by the server.
            project_id: the tenant; queries never cross projects.
            task_id: narrows the scope to one task.
            kind: ``"note"``, ``"design_doc"``, ``"code_snippet"``, ``"task_summary"``,
                ``"project_summary"``, ``"handoff_summary"``, ``"raw_interaction"``
                or a ``MemoryKind`` value.
            labels: free-form labels kept with the memory (filterable as ``labels.<key>``).
            subtask_id: narrows the scope to one subtask of the task.
            agent: the agent that produced it.
            role: the agent's role (coder, tester, ...).
            source: the job or run id it came from.
            valid_from: when what it says became true (e.g. the conversation's
                date); None means the time it is written. A naive datetime is UTC.
            valid_to: when it stopped being true; None while it still holds.
            request_id: idempotency key; None means a fresh UUID4 reused by retries.

        Raises:
            InvalidArgument: ``memories[0].text`` (empty or too long), ``memories[0].kind``, ...
        """
        memory = memory_message(
            text,
            project_id,
            task_id,
            kind,
            labels,
            subtask_id=subtask_id,
            agent=agent,
            role=role,
            source=source,
            valid_from=valid_from,
            valid_to=valid_to,
        )
        response = await self.memory_store_batch([memory], request_id=request_id)
        return response.memories[0]

    async def memory_store_batch(
        self, memories: Sequence[memory_pb2.Memory], *, request_id: str | None = None
    ) -> memory_pb2.StoreResponse:
        """Store a batch of memories (at most 256), all or nothing.

        Build each one with :func:`memory_message` (or as a ``Memory`` proto;
        ``memory_id``, ``create_time``, ``update_time`` and ``chunk_count`` are
        set by the server). The answer comes once every memory is durably
        written; ``response.memories`` are in request order and
        ``response.deduplicated`` is True when ``request_id`` repeated an
        earlier batch (nothing new was written).

        Raises:
            InvalidArgument: the field names the memory, e.g. ``memories[3].text``;
                nothing is written.
        """
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        request = memory_pb2.StoreRequest(memories=list(memories), request_id=request_id or str(uuid.uuid4()))
        return await self._unary(stub.Store, request)

    async def memory_get(self, project_id: str, memory_id: str) -> memory_pb2.Memory:
        """One memory of ``project_id``.

        Raises:
            NotFound: ``MEMORY_NOT_FOUND``, also for a memory of another project.
        """
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        request = memory_pb2.GetRequest(project_id=project_id, memory_id=memory_id)
        response = await self._unary(stub.Get, request)
        return response.memory

    async def memory_search(
        self,
        text: str,
        filter: memory_pb2.MemoryFilter,
        *,
        top_k: int = 5,
        mode: str | int = "hybrid",
        rerank: bool = False,
        score_threshold: float = 0.0,
        recency_half_life: float | timedelta | None = None,
        reference_time: datetime | None = None,
    ) -> memory_pb2.QueryResponse:
        """The memories that best answer ``text`` within ``filter``, best first,
        with the mode that ran and whether a reranker ran.

        Args:
            text: what to look for.
            filter: which memories; build it with :func:`memory_filter`
                (``project_id`` is required).
            top_k: how many results at most (0: the server's default; at most 100).
            mode: ``"hybrid"`` (dense and BM25 fused by reciprocal rank fusion),
                ``"dense"``, ``"sparse"`` or a ``RetrievalMode`` value.
            rerank: rerank the fused candidates with the server's reranker.
            score_threshold: drop results scoring below it; the scale depends on the
                mode (cosine for dense, RRF for hybrid, the reranker's with rerank).
            recency_half_life: weigh recent memories: scores are multiplied by
                ``0.5 ** (age / half_life)``, age from ``valid_from`` (seconds or a timedelta).
            reference_time: "now" for the recency weighting; None: the server's clock.

        Raises:
            InvalidArgument: e.g. ``filter.match[<name>]`` for an unknown field.
            FailedPrecondition: ``RERANKER_NOT_CONFIGURED`` when ``rerank`` and there is none.
        """
        request = memory_pb2.QueryRequest(
            text=text,
            filter=filter,
            top_k=top_k,
            score_threshold=score_threshold,
            mode=_retrieval_mode_value(mode),
            rerank=rerank,
        )
        if recency_half_life is not None:
            request.recency_half_life.CopyFrom(_duration(recency_half_life))
        if reference_time is not None:
            request.reference_time.CopyFrom(_timestamp(reference_time))
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        return await self._unary(stub.Query, request)

    async def memory_query(
        self, text: str, project_id: str, task_id: str = "", top_k: int = 5, **options: Any
    ) -> list[memory_pb2.ScoredMemory]:
        """The results of :meth:`memory_search` in one project (and task), best first.

        Args:
            text: what to look for.
            project_id: the project to search.
            task_id: when set, only memories of this task.
            top_k: how many results at most (the server caps it at 100).
            options: the keyword options of :meth:`memory_search` (``mode``,
                ``rerank``, ``score_threshold``, ``recency_half_life``, ``reference_time``).
        """
        response = await self.memory_search(
            text, memory_filter(project_id, task_id=task_id), top_k=top_k, **options
        )
        return list(response.results)

    async def memory_list(
        self, filter: memory_pb2.MemoryFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[memory_pb2.Memory], str]:
        """One page of the memories that match ``filter``, oldest first.

        Args:
            filter: which memories (:func:`memory_filter`; ``project_id`` is required).
            page_size: at most this many (0: 50; the server caps it at 1000).
            page_token: the ``next_token`` of the previous page; empty for the first.

        Returns:
            ``(memories, next_token)``; ``next_token`` is empty on the last page.

        Raises:
            InvalidArgument: ``page_token`` when it is not one the server gave.
        """
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        request = memory_pb2.ListRequest(filter=filter, page_size=page_size, page_token=page_token)
        response = await self._unary(stub.List, request)
        return list(response.memories), response.next_page_token

    async def memory_iter(
        self, filter: memory_pb2.MemoryFilter, page_size: int = 0
    ) -> AsyncIterator[memory_pb2.Memory]:
        """Every memory that matches ``filter``, oldest first, fetched page by page."""
        token = ""
        while True:
            memories, token = await self.memory_list(filter, page_size, token)
            for memory in memories:
                yield memory
            if not token:
                return

    async def memory_update(
        self,
        project_id: str,
        memory_id: str,
        *,
        text: str | None = None,
        valid_from: datetime | Unset | None = UNSET,
        valid_to: datetime | Unset | None = UNSET,
        labels: Mapping[str, str] | None = None,
    ) -> memory_pb2.Memory:
        """Change a memory; only the arguments given are changed.

        Args:
            text: the new text (re-embedded and re-chunked).
            valid_from: the new start of validity; None resets it to the memory's creation.
            valid_to: the new end of validity; None clears it (it holds again).
            labels: the new labels, replacing all of them.

        Raises:
            InvalidArgument: ``update_mask`` when nothing is to change.
            NotFound: ``MEMORY_NOT_FOUND``.
        """
        memory = memory_pb2.Memory(memory_id=memory_id, project_id=project_id)
        paths: list[str] = []
        if text is not None:
            memory.text = text
            paths.append("text")
        if not isinstance(valid_from, Unset):
            if valid_from is not None:
                memory.valid_from.CopyFrom(_timestamp(valid_from))
            paths.append("valid_from")
        if not isinstance(valid_to, Unset):
            if valid_to is not None:
                memory.valid_to.CopyFrom(_timestamp(valid_to))
            paths.append("valid_to")
        if labels is not None:
            memory.labels.update(labels)
            paths.append("labels")
        if not paths:
            raise InvalidArgument(
                "update_mask", "nothing to change: give text, valid_from, valid_to or labels"
            )
        request = memory_pb2.UpdateRequest(memory=memory, update_mask=field_mask_pb2.FieldMask(paths=paths))
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        response = await self._unary(stub.Update, request)
        return response.memory

    async def memory_delete(
        self,
        project_id: str,
        memory_ids: Sequence[str] = (),
        *,
        filter: memory_pb2.MemoryFilter | None = None,
    ) -> int:
        """Delete memories of ``project_id`` by id, or every one that matches
        ``filter`` (exactly one of the two); returns how many were deleted.
        Ids of other projects or of no memory are not counted.

        Raises:
            InvalidArgument: both or neither of ``memory_ids`` and ``filter``.
        """
        if bool(memory_ids) == (filter is not None):
            raise InvalidArgument("memory_ids", "give exactly one of memory_ids and filter")
        request = memory_pb2.DeleteRequest(project_id=project_id, memory_ids=list(memory_ids))
        if filter is not None:
            request.filter.CopyFrom(filter)
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        response = await self._unary(stub.Delete, request)
        return response.deleted

    async def memory_stats(self, project_id: str) -> memory_pb2.StatsResponse:
        """Counts of a project's memories by kind and by (task, subtask), and
        the collection, embedding model and dimension they are filed under."""
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        return await self._unary(stub.Stats, memory_pb2.StatsRequest(project_id=project_id))

    async def memory_compact(
        self,
        project_id: str,
        task_id: str = "",
        *,
        max_model_calls: int = 0,
        model: str = "",
        request_id: str | None = None,
    ) -> memory_pb2.CompactResponse:
        """Summarise a project's memories: each task's raw interactions into a
        task summary, role changes into handoff summaries, and the task
        summaries into the project summary. Raw memories are kept.

        Summaries are written by jobs memoryd submits through orchestratord, so
        this can take as long as those jobs; give the client an ``rpc_timeout``
        to match.

        Args:
            project_id: the project.
            task_id: only this task (and no project summary); empty: every task, then the project.
            max_model_calls: most summary jobs this call may submit (0: the server's
                default); when reached ``response.capped`` is True and a later call continues.
            model: the model summaries are written by; empty lets the router pick.
            request_id: idempotency key; None means a fresh UUID4 reused by retries.
        """
        request = memory_pb2.CompactRequest(
            project_id=project_id,
            task_id=task_id,
            max_model_calls=max_model_calls,
            model=model,
            request_id=request_id or str(uuid.uuid4()),
        )
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        return await self._unary(stub.Compact, request)

    async def memory_context(
        self, project_id: str, text: str, token_budget: int, *, task_id: str = "", top_k: int = 0
    ) -> memory_pb2.GetContextResponse:
        """The memories memoryd would put in front of a job's prompt, within
        ``token_budget`` tokens, in prompt order: the project summary, the task
        summary, then retrieved memories (the same inputs give the same items).

        Args:
            project_id: the project.
            text: the text to retrieve for (the prompt or last message).
            token_budget: most tokens the items may take together; at least 1.
            task_id: the task whose summary comes second; empty for none.
            top_k: most retrieved memories; 0: the server's default.
        """
        request = memory_pb2.GetContextRequest(
            project_id=project_id, task_id=task_id, text=text, token_budget=token_budget, top_k=top_k
        )
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        return await self._unary(stub.GetContext, request)

    async def memory_embed(self, inputs: Sequence[str]) -> memory_pb2.EmbedResponse:
        """Embeddings of ``inputs`` (at most 256) with memoryd's embedding model, in order."""
        stub = memory_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        return await self._unary(stub.Embed, memory_pb2.EmbedRequest(inputs=list(inputs)))

    async def health(self) -> dict[str, str]:
        """The health of every known service, checked concurrently via grpc.health.v1.

        Returns:
            service name (``orchestrator``, ``router``, ``pool``, ``memory``,
            ``worker-1``, ...) -> ``"SERVING"``, ``"NOT_SERVING"`` or
            ``"UNREACHABLE"``. Addresses are in :attr:`addresses`.
        """
        named = self.addresses.named()
        states = await asyncio.gather(*(self._health_of(address) for address in named.values()))
        return dict(zip(named, states, strict=True))

    async def _health_of(self, address: str) -> str:
        stub = health_pb2_grpc.HealthStub(self._channel_for(address))
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=_HEALTH_TIMEOUT_SECONDS)
        except grpc.RpcError as err:
            code = err.code() if callable(getattr(err, "code", None)) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return "NOT_SERVING"
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return "SERVING"
        return "NOT_SERVING"

    # -- plumbing -------------------------------------------------------------

    def _channel(self, service: str) -> grpc.aio.Channel:
        address = getattr(self.addresses, service)
        if not address:
            variable = ADDRESS_ENV[service]
            raise FailedPrecondition(
                f"no {service} address known; set {variable} or start a stack with `hearth up`",
                reason="ADDRESS_NOT_CONFIGURED",
                metadata={"service": service, "env": variable},
            )
        return self._channel_for(address)

    def _channel_for(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise FailedPrecondition("the client is closed", reason="CLIENT_CLOSED")
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def _tasks(self) -> tasks_pb2_grpc.TaskServiceAsyncStub:
        # TaskService is served by orchestratord beside OrchestratorService.
        stub = tasks_pb2_grpc.TaskServiceStub(self._channel("orchestrator"))
        return cast("tasks_pb2_grpc.TaskServiceAsyncStub", stub)

    async def _unary(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        retry: bool = True,
        timeout: float | Unset | None = UNSET,
    ) -> T:
        """One unary call with the client's deadline (or ``timeout``), its
        error mapped; UNAVAILABLE is retried with backoff unless ``retry`` is
        False (calls that are not idempotent)."""
        deadline = self.rpc_timeout if isinstance(timeout, Unset) else timeout
        retries = self.unavailable_retries if retry else 0
        attempt = 0
        while True:
            try:
                return await method(request, timeout=deadline)
            except grpc.RpcError as err:
                error = from_rpc_error(err)
            if not isinstance(error, Unavailable) or attempt >= retries:
                raise error
            attempt += 1
            await asyncio.sleep(error.retry_after if error.retry_after is not None else _backoff(attempt))


class JobStream:
    """One submitted job's answer, as text chunks, then the final job.

    Made by :meth:`AsyncClient.run`. Iterating it (``async for text in
    stream``) submits the job if needed and yields the text of each token
    event until the job ends. :meth:`result` waits for the end (reading the
    rest of the stream if it was not iterated to the end) and returns the
    final :class:`Job`; it does not raise for failed or cancelled jobs:
    check ``job.state`` and ``job.end_reason``.
    """

    def __init__(self, client: AsyncClient, prompt: str, submit_kwargs: Mapping[str, Any]) -> None:
        self._client = client
        self._prompt = prompt
        self._submit_kwargs = dict(submit_kwargs)
        self._submitted: orchestrator_pb2.Job | None = None
        self._submit_lock = asyncio.Lock()
        self._events: AsyncIterator[events_pb2.JobEvent] | None = None
        self._terminal: events_pb2.JobEvent | None = None
        self._final: orchestrator_pb2.Job | None = None
        self.started: events_pb2.JobStarted | None = None
        """The ``started`` event (model, worker, input tokens) once seen."""

    @property
    def job_id(self) -> str:
        """The job's id; empty until submitted."""
        return self._submitted.job_id if self._submitted is not None else ""

    @property
    def terminal_event(self) -> events_pb2.JobEvent | None:
        """The event that ended the job, once seen."""
        return self._terminal

    async def submitted(self) -> orchestrator_pb2.Job:
        """Submit the job (once) and return it as queued."""
        async with self._submit_lock:
            if self._submitted is None:
                self._submitted = await self._client.submit(self._prompt, **self._submit_kwargs)
            return self._submitted

    async def events(self) -> AsyncIterator[events_pb2.JobEvent]:
        """The job's remaining events, ending after the terminal one; each event is read once."""
        job = await self.submitted()
        if self._events is None:
            self._events = self._client.watch(job.job_id)
        async for event in self._events:
            kind = event_kind(event)
            if kind == "started":
                self.started = event.started
            elif is_terminal(event):
                self._terminal = event
            yield event

    async def __aiter__(self) -> AsyncIterator[str]:
        """The answer's text as it streams. When the job falls back to another
        target after text was yielded (a ``fallback`` event with
        ``output_discarded``), that text is void: iteration raises
        :class:`AnswerRestarted`, and iterating again yields the new answer
        from its start."""
        yielded = False
        async for event in self.events():
            if event.HasField("tokens") and event.tokens.text:
                yielded = True
                yield event.tokens.text
            elif event.HasField("fallback") and event.fallback.output_discarded and yielded:
                raise AnswerRestarted(event.fallback)

    async def result(self) -> orchestrator_pb2.Job:
        """Wait for the job to end and return it (output, run record, routing report)."""
        if self._final is None:
            async for _ in self.events():
                pass
            self._final = await self._client.get_job(self.job_id)
        return self._final

    async def cancel(self, reason: str = "") -> orchestrator_pb2.Job:
        """Cancel the job if it was submitted; returns the job as the server has it."""
        job = await self.submitted()
        return await self._client.cancel_job(job.job_id, reason)


class AnswerRestarted(Exception):
    """The job moved to another target after part of its answer was streamed:
    the text read so far is void and the next target answers afresh.

    Attributes:
        fallback: the event's body (from_target, to_target, cause, message).
    """

    def __init__(self, fallback: events_pb2.JobFallback) -> None:
        super().__init__(
            f"the answer restarts on {fallback.to_target}: {fallback.from_target} failed ({fallback.cause})"
        )
        self.fallback = fallback


class Client:
    """A blocking client of a Hearth stack, for scripts; the same methods as
    :class:`AsyncClient` (and the same arguments and errors).

    It runs an :class:`AsyncClient` on a private event loop in one daemon
    thread. :meth:`close` (or leaving ``with``) closes the channels, stops the
    loop and joins the thread. A KeyboardInterrupt while a call waits cancels
    that call. Streams (:meth:`watch`, :meth:`run`) are plain iterators; the
    client must stay open while they are read.
    """

    def __init__(
        self,
        orchestrator: str = "",
        pool: str = "",
        memory: str = "",
        router: str = "",
        **options: Any,
    ) -> None:
        self._async = AsyncClient(orchestrator, pool, memory, router, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hearth-client", daemon=True)
        self._thread.start()
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Client:
        """A client of the running stack; see :meth:`AsyncClient.from_env`."""
        found = discover_addresses(data_dir)
        return cls(
            found.orchestrator, found.pool, found.memory, found.router, workers=found.workers, **options
        )

    @property
    def addresses(self) -> StackAddresses:
        return self._async.addresses

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels, stop the loop, join its thread. Safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(timeout=5)
            # Streams left unfinished are async generators of this loop: close them here.
            asyncio.run_coroutine_threadsafe(self._loop.shutdown_asyncgens(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, awaitable: Awaitable[T]) -> T:
        if self._closed:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise FailedPrecondition("the client is closed", reason="CLIENT_CLOSED")
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt (or any exit of this thread's wait) cancels the call in the loop.
            future.cancel()
            raise

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(source.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    # "already running" when the consumer was interrupted mid-step; the loop's
                    # async-generator finalizer closes it then.
                    with contextlib.suppress(RuntimeError):
                        self._call(closer())

    def submit(self, prompt: str, **kwargs: Any) -> orchestrator_pb2.Job:
        """See :meth:`AsyncClient.submit`."""
        return self._call(self._async.submit(prompt, **kwargs))

    def get_job(self, job_id: str) -> orchestrator_pb2.Job:
        """See :meth:`AsyncClient.get_job`."""
        return self._call(self._async.get_job(job_id))

    def list_jobs(
        self, page_size: int = 50, page_token: str = "", state: str | int | None = None
    ) -> tuple[list[orchestrator_pb2.Job], str]:
        """See :meth:`AsyncClient.list_jobs`."""
        return self._call(self._async.list_jobs(page_size, page_token, state))

    def cancel_job(self, job_id: str, reason: str = "") -> orchestrator_pb2.Job:
        """See :meth:`AsyncClient.cancel_job`."""
        return self._call(self._async.cancel_job(job_id, reason))

    def watch(self, job_id: str, after_sequence: int = 0) -> Iterator[events_pb2.JobEvent]:
        """See :meth:`AsyncClient.watch`."""
        return self._iterate(self._async.watch(job_id, after_sequence))

    def run(self, prompt: str, **submit_kwargs: Any) -> SyncJobStream:
        """See :meth:`AsyncClient.run`: ``for text in stream`` then ``stream.result()``."""
        return SyncJobStream(self, self._async.run(prompt, **submit_kwargs))

    def create_task(
        self,
        project_id: str,
        name: str,
        prompt: str = "",
        *,
        messages: Sequence[chat.ChatMessage | chat_pb2.ChatMessage] = (),
        priority: int = 0,
        role: str = "",
        model: str = "",
        labels: Mapping[str, str] | None = None,
        requires_approval: bool = False,
        context_budget: int = 0,
        agent: str = "",
    ) -> tasks_pb2.Task:
        """Add a task to a project; see :meth:`AsyncClient.create_task`."""
        return self._call(
            self._async.create_task(
                project_id,
                name,
                prompt,
                messages=messages,
                priority=priority,
                role=role,
                model=model,
                labels=labels,
                requires_approval=requires_approval,
                context_budget=context_budget,
                agent=agent,
            )
        )

    def get_task(self, task_id: int) -> tasks_pb2.GetTaskResponse:
        """A task with its notes, links and recent runs; see :meth:`AsyncClient.get_task`."""
        return self._call(self._async.get_task(task_id))

    def list_tasks(self, project_id: str, status: str | int | None = None) -> list[tasks_pb2.Task]:
        """A project's tasks in scheduling order; see :meth:`AsyncClient.list_tasks`."""
        return self._call(self._async.list_tasks(project_id, status))

    def add_note(self, task_id: int, text: str, agent: str = "") -> tasks_pb2.Note:
        """Append a note to a task; see :meth:`AsyncClient.add_note`."""
        return self._call(self._async.add_note(task_id, text, agent))

    def close_task(
        self, task_id: int, status: str | int = "done", reason: str = "", agent: str = ""
    ) -> tasks_pb2.Task:
        """Mark a task done, failed or cancelled; see :meth:`AsyncClient.close_task`."""
        return self._call(self._async.close_task(task_id, status, reason, agent))

    def hold_task(self, task_id: int, reason: str, agent: str = "") -> tasks_pb2.Task:
        """Block a task until released; see :meth:`AsyncClient.hold_task`."""
        return self._call(self._async.hold_task(task_id, reason, agent))

    def release_task(self, task_id: int, agent: str = "") -> tasks_pb2.Task:
        """Lift a hold; see :meth:`AsyncClient.release_task`."""
        return self._call(self._async.release_task(task_id, agent))

    def link_tasks(
        self, from_task: int, to_task: int, kind: str | int = "requires", agent: str = ""
    ) -> tasks_pb2.CreateLinkResponse:
        """Link two tasks; see :meth:`AsyncClient.link_tasks`."""
        return self._call(self._async.link_tasks(from_task, to_task, kind, agent))

    def unlink_tasks(self, from_task: int, to_task: int, kind: str | int = "requires") -> None:
        """Remove a link; see :meth:`AsyncClient.unlink_tasks`."""
        self._call(self._async.unlink_tasks(from_task, to_task, kind))

    def list_links(self, task_id: int) -> tasks_pb2.ListLinksResponse:
        """A task's outgoing and incoming links; see :meth:`AsyncClient.list_links`."""
        return self._call(self._async.list_links(task_id))

    def next_task(self, project_id: str) -> tasks_pb2.NextTaskResponse:
        """The next ready task and the blocked ones; see :meth:`AsyncClient.next_task`."""
        return self._call(self._async.next_task(project_id))

    def preview_context(self, task_id: int, budget: int = 0) -> tasks_pb2.ContextBundle:
        """A task's context bundle without running it; see :meth:`AsyncClient.preview_context`."""
        return self._call(self._async.preview_context(task_id, budget))

    def approve_context(
        self, task_id: int, pins: Sequence[str] = (), excludes: Sequence[str] = (), agent: str = ""
    ) -> tasks_pb2.ApproveContextResponse:
        """Store pins and excludes and approve the task; see :meth:`AsyncClient.approve_context`."""
        return self._call(self._async.approve_context(task_id, pins, excludes, agent))

    def run_task(
        self, task_id: int, agent: str = "", *, timeout: float | None = None
    ) -> tasks_pb2.RunTaskResponse:
        """Run one task and wait for its run; see :meth:`AsyncClient.run_task`."""
        return self._call(self._async.run_task(task_id, agent, timeout=timeout))

    def run_project(
        self,
        project_id: str,
        strategy: str | int = "dag",
        parallelism: int = 0,
        continue_on_failure: bool = False,
        agent: str = "",
    ) -> Iterator[tasks_pb2.RunProjectResponse]:
        """Run a project's tasks, yielding each change and then the summary;
        see :meth:`AsyncClient.run_project`. The client must stay open while it is read."""
        return self._iterate(
            self._async.run_project(project_id, strategy, parallelism, continue_on_failure, agent)
        )

    def get_run(self, run_id: int) -> tasks_pb2.GetRunResponse:
        """A run with its context snapshot; see :meth:`AsyncClient.get_run`."""
        return self._call(self._async.get_run(run_id))

    def list_runs(self, project_id: str = "", task_id: int = 0, page_size: int = 0) -> list[tasks_pb2.Run]:
        """The runs of a project or a task, newest first; see :meth:`AsyncClient.list_runs`."""
        return self._call(self._async.list_runs(project_id, task_id, page_size))

    def rerun_task(self, run_id: int, agent: str = "", *, timeout: float | None = None) -> tasks_pb2.Run:
        """Run a run's task again with the same snapshot; see :meth:`AsyncClient.rerun_task`."""
        return self._call(self._async.rerun_task(run_id, agent, timeout=timeout))

    def diff_runs(self, a: int, b: int) -> tasks_pb2.DiffRunsResponse:
        """What differs between two runs; see :meth:`AsyncClient.diff_runs`."""
        return self._call(self._async.diff_runs(a, b))

    def set_project_index(self, project_id: str, text: str, agent: str = "") -> tasks_pb2.Project:
        """Store a project's INDEX document; see :meth:`AsyncClient.set_project_index`."""
        return self._call(self._async.set_project_index(project_id, text, agent))

    def get_project(self, project_id: str) -> tasks_pb2.Project:
        """A project with its INDEX and task counts; see :meth:`AsyncClient.get_project`."""
        return self._call(self._async.get_project(project_id))

    def propose_plan(
        self,
        project_id: str,
        goal: str,
        *,
        agent: str = "",
        max_attempts: int = 0,
        model: str = "",
        timeout: float | None = None,
    ) -> tasks_pb2.Plan:
        """Ask the manager role for a plan; see :meth:`AsyncClient.propose_plan`."""
        return self._call(
            self._async.propose_plan(
                project_id, goal, agent=agent, max_attempts=max_attempts, model=model, timeout=timeout
            )
        )

    def get_plan(self, plan_id: int) -> tasks_pb2.Plan:
        """A plan with its attempts; see :meth:`AsyncClient.get_plan`."""
        return self._call(self._async.get_plan(plan_id))

    def list_plans(self, project_id: str, status: str | int | None = None) -> list[tasks_pb2.Plan]:
        """A project's plans, newest first; see :meth:`AsyncClient.list_plans`."""
        return self._call(self._async.list_plans(project_id, status))

    def edit_plan(
        self,
        plan_id: int,
        draft: tasks_pb2.PlanDraft | Mapping[str, Any],
        *,
        revision: int = 0,
        agent: str = "",
    ) -> tasks_pb2.Plan:
        """Replace a draft's tasks; see :meth:`AsyncClient.edit_plan`."""
        return self._call(self._async.edit_plan(plan_id, draft, revision=revision, agent=agent))

    def approve_plan(
        self,
        plan_id: int,
        draft: tasks_pb2.PlanDraft | Mapping[str, Any] | None = None,
        *,
        revision: int = 0,
        agent: str = "",
    ) -> tasks_pb2.ApprovePlanResponse:
        """Approve a draft, creating its tasks; see :meth:`AsyncClient.approve_plan`."""
        return self._call(self._async.approve_plan(plan_id, draft, revision=revision, agent=agent))

    def reject_plan(self, plan_id: int, reason: str, agent: str = "") -> tasks_pb2.Plan:
        """Reject a draft; see :meth:`AsyncClient.reject_plan`."""
        return self._call(self._async.reject_plan(plan_id, reason, agent))

    def list_roles(self, route: bool = True) -> list[tasks_pb2.Role]:
        """The agent roles; see :meth:`AsyncClient.list_roles`."""
        return self._call(self._async.list_roles(route))

    def stats(
        self,
        *,
        project_id: str = "",
        agent: str = "",
        group_by: str | int = "none",
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> tasks_pb2.StatsResponse:
        """Usage from the run records; see :meth:`AsyncClient.stats`."""
        return self._call(
            self._async.stats(project_id=project_id, agent=agent, group_by=group_by, start=start, end=end)
        )

    def export_events(
        self, since: int = 0, *, project_id: str = "", limit: int = 0
    ) -> Iterator[tasks_pb2.WorkEvent]:
        """The work event log after ``since``; see :meth:`AsyncClient.export_events`."""
        return self._iterate(self._async.export_events(since, project_id=project_id, limit=limit))

    def list_workers(self) -> list[pool_pb2.PooledWorker]:
        """See :meth:`AsyncClient.list_workers`."""
        return self._call(self._async.list_workers())

    def memory_store(self, text: str, project_id: str, *args: Any, **kwargs: Any) -> memory_pb2.Memory:
        """See :meth:`AsyncClient.memory_store`."""
        return self._call(self._async.memory_store(text, project_id, *args, **kwargs))

    def memory_store_batch(
        self, memories: Sequence[memory_pb2.Memory], *, request_id: str | None = None
    ) -> memory_pb2.StoreResponse:
        """See :meth:`AsyncClient.memory_store_batch`."""
        return self._call(self._async.memory_store_batch(memories, request_id=request_id))

    def memory_get(self, project_id: str, memory_id: str) -> memory_pb2.Memory:
        """See :meth:`AsyncClient.memory_get`."""
        return self._call(self._async.memory_get(project_id, memory_id))

    def memory_search(
        self, text: str, filter: memory_pb2.MemoryFilter, **options: Any
    ) -> memory_pb2.QueryResponse:
        """See :meth:`AsyncClient.memory_search`."""
        return self._call(self._async.memory_search(text, filter, **options))

    def memory_query(
        self, text: str, project_id: str, task_id: str = "", top_k: int = 5, **options: Any
    ) -> list[memory_pb2.ScoredMemory]:
        """See :meth:`AsyncClient.memory_query`."""
        return self._call(self._async.memory_query(text, project_id, task_id, top_k, **options))

    def memory_list(
        self, filter: memory_pb2.MemoryFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[memory_pb2.Memory], str]:
        """See :meth:`AsyncClient.memory_list`."""
        return self._call(self._async.memory_list(filter, page_size, page_token))

    def memory_iter(self, filter: memory_pb2.MemoryFilter, page_size: int = 0) -> Iterator[memory_pb2.Memory]:
        """See :meth:`AsyncClient.memory_iter`."""
        return self._iterate(self._async.memory_iter(filter, page_size))

    def memory_update(self, project_id: str, memory_id: str, **changes: Any) -> memory_pb2.Memory:
        """See :meth:`AsyncClient.memory_update`."""
        return self._call(self._async.memory_update(project_id, memory_id, **changes))

    def memory_delete(
        self,
        project_id: str,
        memory_ids: Sequence[str] = (),
        *,
        filter: memory_pb2.MemoryFilter | None = None,
    ) -> int:
        """See :meth:`AsyncClient.memory_delete`."""
        return self._call(self._async.memory_delete(project_id, memory_ids, filter=filter))

    def memory_stats(self, project_id: str) -> memory_pb2.StatsResponse:
        """See :meth:`AsyncClient.memory_stats`."""
        return self._call(self._async.memory_stats(project_id))

    def memory_compact(
        self, project_id: str, task_id: str = "", **options: Any
    ) -> memory_pb2.CompactResponse:
        """See :meth:`AsyncClient.memory_compact`."""
        return self._call(self._async.memory_compact(project_id, task_id, **options))

    def memory_context(
        self, project_id: str, text: str, token_budget: int, **options: Any
    ) -> memory_pb2.GetContextResponse:
        """See :meth:`AsyncClient.memory_context`."""
        return self._call(self._async.memory_context(project_id, text, token_budget, **options))

    def memory_embed(self, inputs: Sequence[str]) -> memory_pb2.EmbedResponse:
        """See :meth:`AsyncClient.memory_embed`."""
        return self._call(self._async.memory_embed(inputs))

    def health(self) -> dict[str, str]:
        """See :meth:`AsyncClient.health`."""
        return self._call(self._async.health())


class SyncJobStream:
    """The blocking twin of :class:`JobStream`, made by :meth:`Client.run`:
    ``for text in stream`` then ``stream.result()``."""

    def __init__(self, client: Client, stream: JobStream) -> None:
        self._client = client
        self._stream = stream
        self._texts: Iterator[str] | None = None

    @property
    def job_id(self) -> str:
        return self._stream.job_id

    @property
    def started(self) -> events_pb2.JobStarted | None:
        return self._stream.started

    @property
    def terminal_event(self) -> events_pb2.JobEvent | None:
        return self._stream.terminal_event

    def submitted(self) -> orchestrator_pb2.Job:
        return self._client._call(self._stream.submitted())

    def __iter__(self) -> Iterator[str]:
        if self._texts is None:
            self._texts = self._client._iterate(self._stream.__aiter__())
        return self._texts

    def events(self) -> Iterator[events_pb2.JobEvent]:
        return self._client._iterate(self._stream.events())

    def result(self) -> orchestrator_pb2.Job:
        return self._client._call(self._stream.result())

    def cancel(self, reason: str = "") -> orchestrator_pb2.Job:
        return self._client._call(self._stream.cancel(reason))


def memory_message(
    text: str,
    project_id: str,
    task_id: str = "",
    kind: str | int = "note",
    labels: Mapping[str, str] | None = None,
    *,
    subtask_id: str = "",
    agent: str = "",
    role: str = "",
    source: str = "",
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    source_memory_ids: Sequence[str] = (),
) -> memory_pb2.Memory:
    """A ``Memory`` proto to store (see :meth:`AsyncClient.memory_store` for the fields).

    Raises:
        InvalidArgument: ``memory.kind`` when ``kind`` is not a known kind name.
    """
    memory = memory_pb2.Memory(
        text=text,
        project_id=project_id,
        task_id=task_id,
        subtask_id=subtask_id,
        kind=_memory_kind_value(kind),
        labels=dict(labels or {}),
        agent=agent,
        role=role,
        source=source,
        source_memory_ids=list(source_memory_ids),
    )
    if valid_from is not None:
        memory.valid_from.CopyFrom(_timestamp(valid_from))
    if valid_to is not None:
        memory.valid_to.CopyFrom(_timestamp(valid_to))
    return memory


def memory_filter(
    project_id: str,
    *,
    task_id: str = "",
    subtask_id: str = "",
    kinds: Sequence[str | int] = (),
    agent: str = "",
    role: str = "",
    source: str = "",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    valid_at: datetime | None = None,
    match: Mapping[str, str] | None = None,
) -> memory_pb2.MemoryFilter:
    """A ``MemoryFilter``: the memories of ``project_id``, narrowed by every other argument given.

    Args:
        project_id: the project (required by every call).
        task_id: only this task's memories.
        subtask_id: only this subtask's memories.
        kinds: only these kinds (names as in :data:`MEMORY_KIND_NAMES`, or values).
        agent: only memories of this agent.
        role: only memories of this role.
        source: only memories from this job or run id.
        created_after: only memories written after this time (naive means UTC).
        created_before: only memories written before this time.
        valid_at: only memories valid at this time (``valid_from <= t < valid_to``).
        match: exact matches by field name: ``"labels.<key>"`` or a keyword field
            (``task_id``, ``agent``, ...); the server rejects unknown names.

    Raises:
        InvalidArgument: ``filter.kinds`` when a kind name is unknown.
    """
    try:
        kind_values = [_memory_kind_value(kind) for kind in kinds]
    except InvalidArgument as err:
        raise InvalidArgument("filter.kinds", err.message.split(": ", 1)[-1]) from None
    found = memory_pb2.MemoryFilter(
        project_id=project_id,
        task_id=task_id,
        subtask_id=subtask_id,
        kinds=kind_values,
        agent=agent,
        role=role,
        source=source,
        match=dict(match or {}),
    )
    for name, moment in (
        ("created_after", created_after),
        ("created_before", created_before),
        ("valid_at", valid_at),
    ):
        if moment is not None:
            getattr(found, name).CopyFrom(_timestamp(moment))
    return found


def memory_kind_name(kind: int) -> str:
    """``MEMORY_KIND_DESIGN_DOC`` -> ``design_doc``; ``unspecified`` for 0."""
    try:
        name = memory_pb2.MemoryKind.Name(cast(memory_pb2.MemoryKind.ValueType, kind))
    except ValueError:
        return str(kind)
    return name.removeprefix("MEMORY_KIND_").lower()


def task_status_name(status: int) -> str:
    """``TASK_STATUS_WAITING_APPROVAL`` -> ``waiting_approval``; ``unspecified`` for 0."""
    try:
        name = tasks_pb2.TaskStatus.Name(cast(tasks_pb2.TaskStatus.ValueType, status))
    except ValueError:
        return str(status)
    return name.removeprefix("TASK_STATUS_").lower()


def link_kind_name(kind: int) -> str:
    """``LINK_KIND_RELATES_TO`` -> ``relates_to``; ``unspecified`` for 0."""
    try:
        name = tasks_pb2.LinkKind.Name(cast(tasks_pb2.LinkKind.ValueType, kind))
    except ValueError:
        return str(kind)
    return name.removeprefix("LINK_KIND_").lower()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _backoff(attempt: int) -> float:
    return float(min(0.1 * 2 ** (attempt - 1), 2.0))


def _duration(value: float | timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value if isinstance(value, timedelta) else timedelta(seconds=value))
    return duration


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _retrieval_mode_value(mode: str | int) -> memory_pb2.RetrievalMode.ValueType:
    if isinstance(mode, int):
        return cast(memory_pb2.RetrievalMode.ValueType, mode)
    try:
        return _RETRIEVAL_MODES[mode.lower().removeprefix("retrieval_mode_")]
    except KeyError:
        raise InvalidArgument("mode", f"must be one of {', '.join(_RETRIEVAL_MODES)}, not {mode!r}") from None


def _data_class_value(data_class: str | int) -> router_pb2.DataClass.ValueType:
    """A DataClass from "L0".."L3" (or "" for unspecified), or the value itself."""
    if isinstance(data_class, int):
        return data_class  # type: ignore[return-value]
    names = {"": "DATA_CLASS_UNSPECIFIED", "L0": "DATA_CLASS_L0_PUBLIC", "L1": "DATA_CLASS_L1_ROUTINE"}
    names |= {"L2": "DATA_CLASS_L2_SENSITIVE", "L3": "DATA_CLASS_L3_SECRET"}
    name = names.get(data_class.upper())
    if name is None:
        raise ValueError(f"unknown data class {data_class!r}; one of L0, L1, L2, L3")
    return router_pb2.DataClass.Value(name)


def _priority_value(priority: str | int) -> orchestrator_pb2.Priority.ValueType:
    if isinstance(priority, int):
        return cast(orchestrator_pb2.Priority.ValueType, priority)
    try:
        return _PRIORITIES[priority.lower()]
    except KeyError:
        raise InvalidArgument(
            "spec.priority", f"must be one of {', '.join(_PRIORITIES)}, not {priority!r}"
        ) from None


def _job_state_value(state: str | int | None) -> orchestrator_pb2.JobState.ValueType:
    if state is None or state == "":
        return orchestrator_pb2.JOB_STATE_UNSPECIFIED
    if isinstance(state, int):
        return cast(orchestrator_pb2.JobState.ValueType, state)
    try:
        return _JOB_STATES[state.lower().removeprefix("job_state_")]
    except KeyError:
        raise InvalidArgument("state", f"must be one of {', '.join(_JOB_STATES)}, not {state!r}") from None


def _enum_key(name: str, prefix: str) -> str:
    """``"Waiting-Approval"`` / ``"TASK_STATUS_WAITING_APPROVAL"`` -> ``"waiting_approval"``."""
    return name.strip().lower().replace("-", "_").removeprefix(prefix)


def _task_status_value(status: str | int | None) -> tasks_pb2.TaskStatus.ValueType:
    if status is None or status == "":
        return tasks_pb2.TASK_STATUS_UNSPECIFIED
    if isinstance(status, int):
        return cast(tasks_pb2.TaskStatus.ValueType, status)
    try:
        return _TASK_STATUSES[_enum_key(status, "task_status_")]
    except KeyError:
        raise ValueError(f"unknown task status {status!r}; one of {', '.join(_TASK_STATUSES)}") from None


def _link_kind_value(kind: str | int) -> tasks_pb2.LinkKind.ValueType:
    if isinstance(kind, int):
        return cast(tasks_pb2.LinkKind.ValueType, kind)
    try:
        return _LINK_KINDS[_enum_key(kind, "link_kind_")]
    except KeyError:
        raise ValueError(f"unknown link kind {kind!r}; one of {', '.join(_LINK_KINDS)}") from None


def _plan_status_value(status: str | int | None) -> tasks_pb2.PlanStatus.ValueType:
    if status is None or status == "":
        return tasks_pb2.PLAN_STATUS_UNSPECIFIED
    if isinstance(status, int):
        return cast(tasks_pb2.PlanStatus.ValueType, status)
    try:
        return _PLAN_STATUSES[_enum_key(status, "plan_status_")]
    except KeyError:
        raise ValueError(f"unknown plan status {status!r}; one of {', '.join(_PLAN_STATUSES)}") from None


def _stats_grouping_value(grouping: str | int) -> tasks_pb2.StatsGrouping.ValueType:
    if isinstance(grouping, int):
        return cast(tasks_pb2.StatsGrouping.ValueType, grouping)
    try:
        return _STATS_GROUPINGS[_enum_key(grouping or "none", "stats_grouping_")]
    except KeyError:
        raise ValueError(f"unknown grouping {grouping!r}; one of {', '.join(_STATS_GROUPINGS)}") from None


def plan_draft(draft: tasks_pb2.PlanDraft | Mapping[str, Any]) -> tasks_pb2.PlanDraft:
    """A ``PlanDraft`` from itself or its JSON form (what ``hearth plan show
    --json`` prints under ``draft``, and what a manager answers):
    ``{"summary": ..., "tasks": [{"key", "name", "role", "prompt", "requires",
    "priority", "produces_index"}, ...]}``.

    Raises:
        ValueError: the JSON form has unknown fields or wrong types.
    """
    if isinstance(draft, tasks_pb2.PlanDraft):
        return draft
    try:
        return json_format.ParseDict(dict(draft), tasks_pb2.PlanDraft())
    except json_format.ParseError as err:
        raise ValueError(f"not a plan draft: {err}") from None


def plan_status_name(status: int) -> str:
    """``PLAN_STATUS_DRAFT`` -> ``draft``; ``unspecified`` for 0."""
    try:
        name = tasks_pb2.PlanStatus.Name(cast(tasks_pb2.PlanStatus.ValueType, status))
    except ValueError:
        return str(status)
    return name.removeprefix("PLAN_STATUS_").lower()


def _run_strategy_value(strategy: str | int) -> tasks_pb2.RunStrategy.ValueType:
    if isinstance(strategy, int):
        return cast(tasks_pb2.RunStrategy.ValueType, strategy)
    try:
        return _RUN_STRATEGIES[_enum_key(strategy, "run_strategy_")]
    except KeyError:
        raise ValueError(f"unknown run strategy {strategy!r}; one of {', '.join(_RUN_STRATEGIES)}") from None


def _chat_message_proto(message: chat.ChatMessage | chat_pb2.ChatMessage) -> chat_pb2.ChatMessage:
    return message if isinstance(message, chat_pb2.ChatMessage) else chat.message_to_proto(message)


def _memory_kind_value(kind: str | int) -> memory_pb2.MemoryKind.ValueType:
    if isinstance(kind, int):
        return cast(memory_pb2.MemoryKind.ValueType, kind)
    try:
        return _MEMORY_KINDS[kind.lower().replace("-", "_").removeprefix("memory_kind_")]
    except KeyError:
        raise InvalidArgument(
            "memory.kind", f"must be one of {', '.join(_MEMORY_KINDS)}, not {kind!r}"
        ) from None


__all__ = [
    "ADDRESS_ENV",
    "CLOSE_STATUS_NAMES",
    "DEFAULT_DATA_DIR",
    "JOB_STATE_NAMES",
    "LINK_KIND_NAMES",
    "MEMORY_KIND_NAMES",
    "PLAN_STATUS_NAMES",
    "RETRIEVAL_MODE_NAMES",
    "RUN_STRATEGY_NAMES",
    "STACK_FILE",
    "STATS_GROUPING_NAMES",
    "TASK_STATUS_NAMES",
    "UNSET",
    "AsyncClient",
    "Client",
    "JobStream",
    "StackAddresses",
    "SyncJobStream",
    "Unset",
    "discover_addresses",
    "event_kind",
    "is_terminal",
    "job_state_name",
    "link_kind_name",
    "memory_filter",
    "memory_kind_name",
    "memory_message",
    "plan_draft",
    "plan_status_name",
    "task_status_name",
]

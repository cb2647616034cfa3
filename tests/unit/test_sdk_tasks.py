"""The SDK's TaskService methods against a real grpc.aio server (with the
runtime's ErrorInterceptor) faking TaskService: argument and enum mapping,
typed errors, which calls are retried, and the project-run stream without a
deadline. :class:`FakeTasks` is also the fake of ``test_cli_tasks``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hearth import chat
from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.api.tasks.v1 import tasks_pb2_grpc
from hearth.client import AsyncClient, Client, link_kind_name, task_status_name
from hearth.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from tests.unit.fake_stack import GrpcServerThread

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

_OPEN = (
    pb.TASK_STATUS_PENDING,
    pb.TASK_STATUS_READY,
    pb.TASK_STATUS_BLOCKED,
    pb.TASK_STATUS_WAITING_APPROVAL,
)
_CLOSED = (pb.TASK_STATUS_DONE, pb.TASK_STATUS_FAILED, pb.TASK_STATUS_CANCELLED)
_NOT_RUN = (pb.TASK_STATUS_PENDING, pb.TASK_STATUS_READY, pb.TASK_STATUS_WAITING_APPROVAL)


def context_hash_of(task_id: int) -> str:
    """The fake's content hash of a task's bundle (hex sha256, as the server's)."""
    return hashlib.sha256(f"task:{task_id}".encode()).hexdigest()


class FakeTasks(tasks_pb2_grpc.TaskServiceServicer):
    """An in-memory TaskService of the v1 contract, small but honest about the
    graph: ``requires`` links that would close a cycle are refused with
    DEPENDENCY_CYCLE and the cycle in metadata; statuses are derived (ready
    when everything required is done, blocked with a reason when a required
    task failed or the task is held, waiting_approval until approved). A run
    fails with CONTEXT_TOO_LONG when the task's prompt is "fail" and answers
    "out: <prompt>" otherwise.

    Every request is kept in ``calls`` as ``(method, request)``. A method named
    in ``unavailable_once`` fails once with UNAVAILABLE; one in ``delays``
    sleeps that many seconds first."""

    def __init__(self) -> None:
        self.tasks: dict[int, pb.Task] = {}
        self.links: list[pb.Link] = []
        self.notes: list[pb.Note] = []
        self.runs: dict[int, pb.Run] = {}
        self.indexes: dict[str, str] = {}
        self.calls: list[tuple[str, Any]] = []
        self.unavailable_once: set[str] = set()
        self.delays: dict[str, float] = {}

    async def _called(self, method: str, request: Any) -> None:
        self.calls.append((method, request))
        if method in self.unavailable_once:
            self.unavailable_once.discard(method)
            raise Unavailable("orchestratord is restarting", reason="ORCHESTRATOR_STARTING")
        if method in self.delays:
            await asyncio.sleep(self.delays[method])

    def requests(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    # -- the graph -------------------------------------------------------------

    def _task(self, task_id: int) -> pb.Task:
        if task_id not in self.tasks:
            raise NotFound(f"no task {task_id}", reason="TASK_NOT_FOUND", metadata={"task_id": str(task_id)})
        return self.tasks[task_id]

    def _required(self, task_id: int) -> list[int]:
        return [
            link.to_task
            for link in self.links
            if link.from_task == task_id and link.kind == pb.LINK_KIND_REQUIRES
        ]

    def _path(self, start: int, goal: int) -> list[int] | None:
        """Task ids from ``start`` to ``goal`` along requires links."""
        queue: deque[list[int]] = deque([[start]])
        seen = {start}
        while queue:
            path = queue.popleft()
            if path[-1] == goal:
                return path
            for nxt in self._required(path[-1]):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append([*path, nxt])
        return None

    def _refresh(self) -> None:
        for task in self.tasks.values():
            if task.status not in _OPEN:
                continue
            required = [self.tasks[i] for i in self._required(task.task_id)]
            broken = next(
                (r for r in required if r.status in (pb.TASK_STATUS_FAILED, pb.TASK_STATUS_CANCELLED)), None
            )
            if task.hold_reason:
                task.status, task.status_reason = (
                    pb.TASK_STATUS_BLOCKED,
                    f"held by {task.updated_by or 'a person'}: {task.hold_reason}",
                )
            elif broken is not None:
                task.status = pb.TASK_STATUS_BLOCKED
                task.status_reason = (
                    f"task {task.task_id} waits for {broken.task_id}, which failed: {broken.status_reason}"
                )
            elif any(r.status != pb.TASK_STATUS_DONE for r in required):
                task.status, task.status_reason = pb.TASK_STATUS_PENDING, ""
            elif task.requires_approval and not task.approved:
                task.status, task.status_reason = pb.TASK_STATUS_WAITING_APPROVAL, ""
            else:
                task.status, task.status_reason = pb.TASK_STATUS_READY, ""

    def _ordered(self, project_id: str) -> list[pb.Task]:
        return sorted(
            (t for t in self.tasks.values() if t.project_id == project_id),
            key=lambda t: (t.priority, t.task_id),
        )

    def _project(self, project_id: str) -> pb.Project:
        tasks = self._ordered(project_id)
        if not tasks and project_id not in self.indexes:
            raise NotFound(f"no project {project_id}", reason="PROJECT_NOT_FOUND")
        counts: dict[str, int] = {}
        for task in tasks:
            name = task_status_name(task.status)
            counts[name] = counts.get(name, 0) + 1
        return pb.Project(
            project_id=project_id, index_document=self.indexes.get(project_id, ""), task_counts=counts
        )

    def _bundle(self, task: pb.Task, budget: int) -> pb.ContextBundle:
        items = [
            pb.ContextItem(
                source="index", tier="index", kind="index", fate="included", tokens=12, text="INDEX"
            ),
            *(
                pb.ContextItem(
                    source=f"task:{r}",
                    tier="required",
                    kind="output",
                    fate="summarised",
                    tokens=40,
                    why="over budget: summarised",
                    text=f"summary of {r}",
                )
                for r in self._required(task.task_id)
            ),
            pb.ContextItem(
                source="memory:m1",
                tier="memory",
                kind="memory",
                fate="dropped",
                tokens=900,
                why="does not fit the budget",
            ),
        ]
        used = sum(i.tokens for i in items if i.fate != "dropped")
        return pb.ContextBundle(
            context_hash=context_hash_of(task.task_id),
            budget=budget or task.context_budget or 4096,
            tokens=used,
            counter="estimate",
            exact=False,
            items=items,
            prompt=f"INDEX\n\n{task.prompt}",
        )

    def _run(self, task: pb.Task, agent: str, rerun_of: int = 0) -> pb.Run:
        run_id = len(self.runs) + 1
        failed = task.prompt == "fail"
        run = pb.Run(
            run_id=run_id,
            task_id=task.task_id,
            project_id=task.project_id,
            status="failed" if failed else "done",
            context_hash=context_hash_of(task.task_id),
            job_id=f"job-{run_id}",
            rerun_of=rerun_of,
            model=task.model or "tiny",
            engine="sim",
            max_tokens=64,
            temperature=0.0,
            seed=7,
            input_tokens=52,
            output_tokens=0 if failed else 5,
            output="" if failed else f"out: {task.prompt}",
            end_reason="CONTEXT_TOO_LONG" if failed else "",
            end_message="the prompt is 9000 tokens, the model takes 4096" if failed else "",
            started_by=agent,
        )
        run.start_time.FromSeconds(1_700_000_000 + run_id)
        self.runs[run_id] = run
        task.status = pb.TASK_STATUS_FAILED if failed else pb.TASK_STATUS_DONE
        task.status_reason = "CONTEXT_TOO_LONG" if failed else ""
        self._refresh()
        return run

    # -- the RPCs ------------------------------------------------------------------

    async def CreateTask(self, request: Any, context: Any) -> pb.CreateTaskResponse:
        await self._called("CreateTask", request)
        if not request.name.strip():
            raise InvalidArgument("name", "must not be blank")
        if bool(request.prompt) == bool(request.messages):
            raise InvalidArgument("prompt", "give exactly one of prompt and messages", reason="INVALID_TEXT")
        task_id = len(self.tasks) + 1
        task = pb.Task(
            task_id=task_id,
            project_id=request.project_id,
            name=request.name,
            prompt=request.prompt,
            messages=request.messages,
            priority=request.priority,
            role=request.role,
            model=request.model,
            labels=request.labels,
            requires_approval=request.requires_approval,
            context_budget=request.context_budget,
            created_by=request.agent,
            status=pb.TASK_STATUS_PENDING,
        )
        task.create_time.FromSeconds(1_700_000_000 + task_id)
        self.tasks[task_id] = task
        self._refresh()
        return pb.CreateTaskResponse(task=task)

    async def GetTask(self, request: Any, context: Any) -> pb.GetTaskResponse:
        await self._called("GetTask", request)
        task = self._task(request.task_id)
        runs = sorted((r for r in self.runs.values() if r.task_id == task.task_id), key=lambda r: -r.run_id)
        return pb.GetTaskResponse(
            task=task,
            notes=[n for n in self.notes if n.task_id == task.task_id],
            outgoing=[link for link in self.links if link.from_task == task.task_id],
            incoming=[link for link in self.links if link.to_task == task.task_id],
            runs=runs[:20],
        )

    async def ListTasks(self, request: Any, context: Any) -> pb.ListTasksResponse:
        await self._called("ListTasks", request)
        tasks = self._ordered(request.project_id)
        return pb.ListTasksResponse(
            tasks=[t for t in tasks if not request.status or t.status == request.status]
        )

    async def AddNote(self, request: Any, context: Any) -> pb.AddNoteResponse:
        await self._called("AddNote", request)
        self._task(request.task_id)
        if not request.text.strip():
            raise InvalidArgument("text", "must not be blank", reason="INVALID_TEXT")
        note = pb.Note(
            note_id=len(self.notes) + 1, task_id=request.task_id, agent=request.agent, text=request.text
        )
        self.notes.append(note)
        return pb.AddNoteResponse(note=note)

    async def CloseTask(self, request: Any, context: Any) -> pb.CloseTaskResponse:
        await self._called("CloseTask", request)
        task = self._task(request.task_id)
        if request.status not in _CLOSED:
            raise InvalidArgument("status", "must be DONE, FAILED or CANCELLED")
        if task.status in _CLOSED:
            raise FailedPrecondition(f"task {task.task_id} is closed", reason="TASK_CLOSED")
        task.status, task.status_reason, task.closed_by = request.status, request.reason, request.agent
        task.close_time.FromSeconds(1_700_001_000)
        self._refresh()
        return pb.CloseTaskResponse(task=task)

    async def HoldTask(self, request: Any, context: Any) -> pb.HoldTaskResponse:
        await self._called("HoldTask", request)
        task = self._task(request.task_id)
        task.hold_reason, task.updated_by = request.reason, request.agent
        self._refresh()
        return pb.HoldTaskResponse(task=task)

    async def ReleaseTask(self, request: Any, context: Any) -> pb.ReleaseTaskResponse:
        await self._called("ReleaseTask", request)
        task = self._task(request.task_id)
        task.hold_reason, task.updated_by = "", request.agent
        self._refresh()
        return pb.ReleaseTaskResponse(task=task)

    async def CreateLink(self, request: Any, context: Any) -> pb.CreateLinkResponse:
        await self._called("CreateLink", request)
        source, target = self._task(request.from_task), self._task(request.to_task)
        if source.project_id != target.project_id:
            raise FailedPrecondition("the tasks are in two projects", reason="CROSS_PROJECT_LINK")
        for link in self.links:
            if (link.from_task, link.to_task, link.kind) == (
                request.from_task,
                request.to_task,
                request.kind,
            ):
                return pb.CreateLinkResponse(link=link, existed=True)
        if request.kind == pb.LINK_KIND_REQUIRES:
            back = self._path(request.to_task, request.from_task)
            if back is not None:
                cycle = [request.from_task, *back]
                raise FailedPrecondition(
                    f"task {request.from_task} requiring {request.to_task} would close a cycle",
                    reason="DEPENDENCY_CYCLE",
                    metadata={"cycle": ",".join(map(str, cycle))},
                )
        link = pb.Link(
            from_task=request.from_task, to_task=request.to_task, kind=request.kind, created_by=request.agent
        )
        self.links.append(link)
        self._refresh()
        return pb.CreateLinkResponse(link=link)

    async def DeleteLink(self, request: Any, context: Any) -> pb.DeleteLinkResponse:
        await self._called("DeleteLink", request)
        for link in self.links:
            if (link.from_task, link.to_task, link.kind) == (
                request.from_task,
                request.to_task,
                request.kind,
            ):
                self.links.remove(link)
                self._refresh()
                return pb.DeleteLinkResponse()
        raise NotFound(
            f"task {request.from_task} has no such link to {request.to_task}", reason="LINK_NOT_FOUND"
        )

    async def ListLinks(self, request: Any, context: Any) -> pb.ListLinksResponse:
        await self._called("ListLinks", request)
        self._task(request.task_id)
        return pb.ListLinksResponse(
            outgoing=[link for link in self.links if link.from_task == request.task_id],
            incoming=[link for link in self.links if link.to_task == request.task_id],
        )

    async def NextTask(self, request: Any, context: Any) -> pb.NextTaskResponse:
        await self._called("NextTask", request)
        tasks = self._ordered(request.project_id)
        response = pb.NextTaskResponse(blocked=[t for t in tasks if t.status == pb.TASK_STATUS_BLOCKED])
        ready = next((t for t in tasks if t.status == pb.TASK_STATUS_READY), None)
        if ready is not None:
            response.task.CopyFrom(ready)
        return response

    async def PreviewContext(self, request: Any, context: Any) -> pb.PreviewContextResponse:
        await self._called("PreviewContext", request)
        if request.budget > 100_000:
            raise InvalidArgument("budget", "more than the model's context", reason="BUDGET_TOO_LARGE")
        return pb.PreviewContextResponse(bundle=self._bundle(self._task(request.task_id), request.budget))

    async def ApproveContext(self, request: Any, context: Any) -> pb.ApproveContextResponse:
        await self._called("ApproveContext", request)
        task = self._task(request.task_id)
        for pin in request.pins:
            if pin.startswith("task:") and int(pin.removeprefix("task:")) not in self.tasks:
                raise NotFound(f"nothing to pin at {pin}", reason="PIN_NOT_FOUND", metadata={"source": pin})
        task.approved = True
        self._refresh()
        bundle = self._bundle(task, 0)
        for pin in request.pins:
            bundle.items.add(source=f"pin:{pin}", tier="pinned", kind="pinned", fate="included", tokens=10)
        for item in bundle.items:
            if item.source in request.excludes:
                item.fate, item.why = "excluded", "excluded by a person"
        return pb.ApproveContextResponse(task=task, bundle=bundle)

    async def RunTask(self, request: Any, context: Any) -> pb.RunTaskResponse:
        await self._called("RunTask", request)
        task = self._task(request.task_id)
        if task.status == pb.TASK_STATUS_WAITING_APPROVAL:
            raise FailedPrecondition(f"task {task.task_id} waits for approval", reason="NOT_APPROVED")
        if task.status != pb.TASK_STATUS_READY:
            raise FailedPrecondition(f"task {task.task_id} is not ready", reason="TASK_NOT_READY")
        run = self._run(task, request.agent)
        return pb.RunTaskResponse(run=run, task=task)

    async def RunProject(self, request: Any, context: Any) -> AsyncIterator[pb.RunProjectResponse]:
        await self._called("RunProject", request)
        stopped = False
        while not stopped:
            ready = [t for t in self._ordered(request.project_id) if t.status == pb.TASK_STATUS_READY]
            if not ready:
                break
            task = ready[0]
            task.status = pb.TASK_STATUS_RUNNING
            run_id = len(self.runs) + 1
            yield pb.RunProjectResponse(task=pb.TaskUpdate(task=task, run_id=run_id, job_id=f"job-{run_id}"))
            run = self._run(task, request.agent)
            yield pb.RunProjectResponse(task=pb.TaskUpdate(task=task, run_id=run.run_id, job_id=run.job_id))
            stopped = run.status == "failed" and not request.continue_on_failure
        tasks = self._ordered(request.project_id)
        blocked = [t for t in tasks if t.status == pb.TASK_STATUS_BLOCKED]
        yield pb.RunProjectResponse(
            summary=pb.ProjectRunSummary(
                done=sum(t.status == pb.TASK_STATUS_DONE for t in tasks),
                failed=sum(t.status == pb.TASK_STATUS_FAILED for t in tasks),
                blocked=len(blocked),
                not_run=sum(t.status in _NOT_RUN for t in tasks),
                stopped_on_failure=stopped and any(t.status in _OPEN for t in tasks),
                blocked_tasks=blocked,
            )
        )

    async def GetRun(self, request: Any, context: Any) -> pb.GetRunResponse:
        await self._called("GetRun", request)
        run = self._run_of(request.run_id)
        return pb.GetRunResponse(run=run, bundle=self._bundle(self.tasks[run.task_id], 0))

    async def ListRuns(self, request: Any, context: Any) -> pb.ListRunsResponse:
        await self._called("ListRuns", request)
        runs = [
            r
            for r in sorted(self.runs.values(), key=lambda r: -r.run_id)
            if (request.task_id and r.task_id == request.task_id)
            or (request.project_id and r.project_id == request.project_id)
        ]
        return pb.ListRunsResponse(runs=runs[: request.page_size or 50])

    async def RerunTask(self, request: Any, context: Any) -> pb.RerunTaskResponse:
        await self._called("RerunTask", request)
        previous = self._run_of(request.run_id)
        run = pb.Run()
        run.CopyFrom(previous)
        run.run_id, run.rerun_of, run.job_id = (
            len(self.runs) + 1,
            previous.run_id,
            f"job-{len(self.runs) + 1}",
        )
        run.started_by, run.engine = request.agent, "vllm"
        self.runs[run.run_id] = run
        return pb.RerunTaskResponse(run=run)

    async def DiffRuns(self, request: Any, context: Any) -> pb.DiffRunsResponse:
        await self._called("DiffRuns", request)
        a, b = self._run_of(request.run_a), self._run_of(request.run_b)
        same_output = a.output == b.output
        diff = {
            "runs": {"a": a.run_id, "b": b.run_id},
            "tasks": {"a": a.task_id, "b": b.task_id},
            "context": {
                "hashes": {"a": a.context_hash, "b": b.context_hash},
                "same": a.context_hash == b.context_hash,
                "known": True,
                "added": [] if a.context_hash == b.context_hash else ["task:9"],
                "removed": [],
                "changed": [] if a.context_hash == b.context_hash else ["index"],
            },
            "same_prompt": a.context_hash == b.context_hash,
            "serving_changes": {
                k: {"a": getattr(a, k), "b": getattr(b, k)}
                for k in ("model", "engine")
                if getattr(a, k) != getattr(b, k)
            },
            "sampling_changes": {},
            "same_output": same_output,
            "output_diff": ""
            if same_output
            else f"--- run {a.run_id}\n+++ run {b.run_id}\n-{a.output}\n+{b.output}",
            "input_tokens": {"a": a.input_tokens, "b": b.input_tokens},
            "output_tokens": {"a": a.output_tokens, "b": b.output_tokens},
        }
        return pb.DiffRunsResponse(
            diff_json=json.dumps(diff, sort_keys=True),
            same_context=a.context_hash == b.context_hash,
            same_output=same_output,
        )

    async def SetProjectIndex(self, request: Any, context: Any) -> pb.SetProjectIndexResponse:
        await self._called("SetProjectIndex", request)
        self._project(request.project_id)
        self.indexes[request.project_id] = request.index_document
        return pb.SetProjectIndexResponse(project=self._project(request.project_id))

    async def GetProject(self, request: Any, context: Any) -> pb.GetProjectResponse:
        await self._called("GetProject", request)
        return pb.GetProjectResponse(project=self._project(request.project_id))

    def _run_of(self, run_id: int) -> pb.Run:
        if run_id not in self.runs:
            raise NotFound(f"no run {run_id}", reason="RUN_NOT_FOUND")
        return self.runs[run_id]


class TaskServer(GrpcServerThread):
    """:class:`FakeTasks` and the health service on one address (the orchestrator's)."""

    def __init__(self) -> None:
        super().__init__(self._add)
        self.tasks = FakeTasks()

    async def _add(self, server: grpc.aio.Server) -> None:
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(self.tasks, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def server() -> Iterator[TaskServer]:
    with TaskServer() as running:
        yield running


@pytest.fixture
async def client(server: TaskServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(orchestrator=server.address) as c:
        yield c


async def test_create_task_sends_every_argument(client: AsyncClient, server: TaskServer) -> None:
    task = await client.create_task(
        "docs",
        "outline",
        "Outline the guide.",
        priority=2,
        role="writer",
        model="tiny",
        labels={"team": "a"},
        requires_approval=True,
        context_budget=2048,
        agent="ana",
    )
    chat_task = await client.create_task(
        "docs", "chat", messages=[chat.ChatMessage(role="user", content="hi")], agent="bo"
    )

    [request, chat_request] = server.tasks.requests("CreateTask")
    assert (request.project_id, request.name, request.prompt) == ("docs", "outline", "Outline the guide.")
    assert (request.priority, request.role, request.model) == (2, "writer", "tiny")
    assert dict(request.labels) == {"team": "a"} and request.requires_approval
    assert (request.context_budget, request.agent) == (2048, "ana")
    assert [(m.role, m.content) for m in chat_request.messages] == [
        ("user", "hi")
    ] and chat_request.prompt == ""
    assert task.task_id == 1 and task.status == pb.TASK_STATUS_WAITING_APPROVAL
    assert chat_task.task_id == 2 and chat_task.status == pb.TASK_STATUS_READY


async def test_status_kind_and_strategy_names_map_to_the_proto_enums(
    client: AsyncClient, server: TaskServer
) -> None:
    first = await client.create_task("p", "a", "x")
    second = await client.create_task("p", "b", "y")
    await client.list_tasks("p", status="waiting-approval")
    await client.list_tasks("p", status="TASK_STATUS_READY")
    await client.list_tasks("p")
    await client.link_tasks(second.task_id, first.task_id, "relates_to")
    await client.link_tasks(second.task_id, first.task_id)
    await client.unlink_tasks(second.task_id, first.task_id, "relates-to")
    await client.close_task(first.task_id, "cancelled", "not needed", "ana")
    async for _ in client.run_project(
        "p", strategy="priority", parallelism=3, continue_on_failure=True, agent="bo"
    ):
        pass

    assert [r.status for r in server.tasks.requests("ListTasks")] == [
        pb.TASK_STATUS_WAITING_APPROVAL,
        pb.TASK_STATUS_READY,
        pb.TASK_STATUS_UNSPECIFIED,
    ]
    assert [r.kind for r in server.tasks.requests("CreateLink")] == [
        pb.LINK_KIND_RELATES_TO,
        pb.LINK_KIND_REQUIRES,
    ]
    assert server.tasks.requests("DeleteLink")[0].kind == pb.LINK_KIND_RELATES_TO
    close = server.tasks.requests("CloseTask")[0]
    assert (close.status, close.reason, close.agent) == (pb.TASK_STATUS_CANCELLED, "not needed", "ana")
    run = server.tasks.requests("RunProject")[0]
    assert (run.strategy, run.parallelism, run.continue_on_failure, run.agent) == (
        pb.RUN_STRATEGY_PRIORITY,
        3,
        True,
        "bo",
    )
    assert task_status_name(pb.TASK_STATUS_WAITING_APPROVAL) == "waiting_approval"
    assert link_kind_name(pb.LINK_KIND_RELATES_TO) == "relates_to"


async def test_unknown_names_raise_value_error_with_the_accepted_names_and_send_nothing(
    client: AsyncClient, server: TaskServer
) -> None:
    with pytest.raises(ValueError, match="one of pending, ready, running, done, blocked, failed"):
        await client.list_tasks("p", status="stuck")
    with pytest.raises(ValueError, match="one of done, failed, cancelled"):
        await client.close_task(1, "ready")
    with pytest.raises(ValueError, match="one of requires, refers, duplicates, relates_to"):
        await client.link_tasks(1, 2, "blocks")
    with pytest.raises(ValueError, match="one of dag, priority"):
        async for _ in client.run_project("p", strategy="fastest"):
            pass

    assert server.tasks.calls == []


async def test_server_errors_come_out_typed_with_reason_and_metadata(client: AsyncClient) -> None:
    a = await client.create_task("p", "a", "x")
    b = await client.create_task("p", "b", "y")
    c = await client.create_task("p", "c", "z")
    await client.link_tasks(a.task_id, b.task_id)
    await client.link_tasks(b.task_id, c.task_id)

    with pytest.raises(FailedPrecondition) as cycle:
        await client.link_tasks(c.task_id, a.task_id, "requires")
    with pytest.raises(NotFound) as no_task:
        await client.get_task(99)
    with pytest.raises(NotFound) as no_link:
        await client.unlink_tasks(a.task_id, c.task_id)
    with pytest.raises(InvalidArgument) as blank:
        await client.create_task("p", " ", "x")
    with pytest.raises(InvalidArgument) as too_large:
        await client.preview_context(a.task_id, budget=200_000)

    assert cycle.value.reason == "DEPENDENCY_CYCLE" and cycle.value.metadata["cycle"] == "3,1,2,3"
    assert no_task.value.reason == "TASK_NOT_FOUND" and no_task.value.metadata == {"task_id": "99"}
    assert no_link.value.reason == "LINK_NOT_FOUND"
    assert blank.value.field == "name"
    assert too_large.value.reason == "BUDGET_TOO_LARGE"


async def test_reads_are_retried_on_unavailable_but_creating_and_running_are_not(
    client: AsyncClient, server: TaskServer
) -> None:
    task = await client.create_task("p", "a", "x")
    server.tasks.unavailable_once = {"GetTask", "CreateTask", "RunTask", "AddNote"}

    got = await client.get_task(task.task_id)
    with pytest.raises(Unavailable):
        await client.create_task("p", "b", "y")
    with pytest.raises(Unavailable):
        await client.run_task(task.task_id)
    with pytest.raises(Unavailable):
        await client.add_note(task.task_id, "hello")

    assert got.task.task_id == task.task_id and len(server.tasks.requests("GetTask")) == 2
    assert len(server.tasks.requests("CreateTask")) == 2  # the first create, then the one refused
    assert len(server.tasks.requests("RunTask")) == 1 and len(server.tasks.requests("AddNote")) == 1
    assert len(server.tasks.tasks) == 1


async def test_long_calls_have_no_short_deadline_while_reads_keep_it(server: TaskServer) -> None:
    async with AsyncClient(orchestrator=server.address, rpc_timeout=0.2, unavailable_retries=0) as client:
        task = await client.create_task("p", "a", "x")
        await client.create_task("p", "b", "y")
        server.tasks.delays = {"RunProject": 0.5, "RunTask": 0.5, "GetTask": 0.5}

        ran = await client.run_task(task.task_id)
        updates = [u async for u in client.run_project("p")]
        with pytest.raises(DeadlineExceeded):
            await client.get_task(task.task_id)

    assert ran.run.status == "done" and ran.task.status == pb.TASK_STATUS_DONE
    assert [u.WhichOneof("update") for u in updates] == ["task", "task", "summary"]
    assert updates[0].task.task.status == pb.TASK_STATUS_RUNNING and updates[1].task.run_id == 2
    assert updates[-1].summary.done == 2 and updates[-1].summary.failed == 0


async def test_next_task_preview_approve_and_notes(client: AsyncClient, server: TaskServer) -> None:
    base = await client.create_task("p", "base", "x")
    gated = await client.create_task("p", "gated", "y", requires_approval=True)
    await client.link_tasks(gated.task_id, base.task_id)
    held = await client.hold_task(base.task_id, "waiting for review", agent="ana")

    nothing = await client.next_task("p")
    released = await client.release_task(base.task_id, agent="ana")
    ready = await client.next_task("p")
    await client.close_task(base.task_id)
    bundle = await client.preview_context(gated.task_id, budget=512)
    approved = await client.approve_context(
        gated.task_id, pins=["task:1"], excludes=["memory:m1"], agent="ana"
    )
    note = await client.add_note(gated.task_id, "looks right", agent="ana")
    links = await client.list_links(base.task_id)

    assert held.status == pb.TASK_STATUS_BLOCKED and "waiting for review" in held.status_reason
    assert not nothing.HasField("task") and [t.task_id for t in nothing.blocked] == [base.task_id]
    assert released.status == pb.TASK_STATUS_READY and ready.task.task_id == base.task_id
    assert bundle.budget == 512 and [i.source for i in bundle.items] == ["index", "task:1", "memory:m1"]
    approve = server.tasks.requests("ApproveContext")[0]
    assert (list(approve.pins), list(approve.excludes), approve.agent) == (["task:1"], ["memory:m1"], "ana")
    assert approved.task.status == pb.TASK_STATUS_READY and approved.bundle.items[-1].source == "pin:task:1"
    assert (note.note_id, note.text, note.agent) == (1, "looks right", "ana")
    assert [link.from_task for link in links.incoming] == [gated.task_id] and list(links.outgoing) == []


async def test_runs_reruns_diffs_and_the_project_index(client: AsyncClient, server: TaskServer) -> None:
    task = await client.create_task("p", "a", "hello")
    first = await client.run_task(task.task_id, agent="ana")
    again = await client.rerun_task(first.run.run_id, agent="bo")
    got = await client.get_run(again.run_id)
    by_task = await client.list_runs(task_id=task.task_id)
    by_project = await client.list_runs(project_id="p", page_size=1)
    diff = await client.diff_runs(first.run.run_id, again.run_id)
    project = await client.set_project_index("p", "# conventions", agent="ana")
    fetched = await client.get_project("p")
    with pytest.raises(InvalidArgument):
        await client.list_runs()
    with pytest.raises(InvalidArgument):
        await client.list_runs(project_id="p", task_id=task.task_id)

    assert (again.rerun_of, again.started_by) == (first.run.run_id, "bo")
    assert got.run.run_id == again.run_id and got.bundle.context_hash == again.context_hash
    assert [r.run_id for r in by_task] == [2, 1] and [r.run_id for r in by_project] == [2]
    assert server.tasks.requests("ListRuns")[1].page_size == 1
    assert diff.same_context and diff.same_output
    assert json.loads(diff.diff_json)["serving_changes"] == {"engine": {"a": "sim", "b": "vllm"}}
    assert project.index_document == "# conventions" and fetched.task_counts == {"done": 1}
    assert server.tasks.requests("SetProjectIndex")[0].agent == "ana"


def test_the_blocking_client_has_the_same_task_methods(server: TaskServer) -> None:
    with Client(orchestrator=server.address) as client:
        a = client.create_task("p", "a", "x", priority=1)
        b = client.create_task("p", "b", "fail")
        client.link_tasks(a.task_id, b.task_id, "requires")
        updates = list(client.run_project("p", "dag", continue_on_failure=True))
        listed = client.list_tasks("p", "blocked")
        detail = client.get_task(a.task_id)
        with pytest.raises(FailedPrecondition) as cycle:
            client.link_tasks(b.task_id, a.task_id)
        with pytest.raises(ValueError):
            client.close_task(a.task_id, "blocked")

    summary = updates[-1].summary
    assert (summary.done, summary.failed, summary.blocked) == (0, 1, 1)
    assert [t.task_id for t in summary.blocked_tasks] == [a.task_id]
    assert [t.task_id for t in listed] == [a.task_id]
    assert "which failed: CONTEXT_TOO_LONG" in detail.task.status_reason
    assert [link.to_task for link in detail.outgoing] == [b.task_id]
    assert cycle.value.metadata["cycle"] == f"{b.task_id},{a.task_id},{b.task_id}"

"""hearth.api.tasks.v1.TaskService: thin, over WorkService and PlanService,
with the conversions between its protos and the work domain (plans, roles,
stats and events in :mod:`orchestratord.api.work_convert`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from hearth import chat
from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.api.tasks.v1 import tasks_pb2_grpc
from hearth.errors import InvalidArgument
from orchestratord.api.convert import timestamp_of
from orchestratord.api.work_convert import (
    draft_from_proto,
    grouping_from_proto,
    plan_status_from_proto,
    plan_to_proto,
    role_to_proto,
    stats_row_to_proto,
    work_event_to_proto,
)
from orchestratord.domain.bundles import Bundle, bundle_to_json
from orchestratord.domain.planning import PlanService
from orchestratord.domain.stats import StatsQuery
from orchestratord.domain.tasks import (
    ContextSnapshot,
    Link,
    LinkKind,
    Project,
    Task,
    TaskNote,
    TaskRun,
    TaskStatus,
)
from orchestratord.domain.work import NewTask, Preview, ProjectRunSummary, TaskUpdate, WorkService

SERVICE_NAME = "hearth.api.tasks.v1.TaskService"

_STATUS_PROTO = {
    TaskStatus.PENDING: pb.TASK_STATUS_PENDING,
    TaskStatus.READY: pb.TASK_STATUS_READY,
    TaskStatus.RUNNING: pb.TASK_STATUS_RUNNING,
    TaskStatus.DONE: pb.TASK_STATUS_DONE,
    TaskStatus.BLOCKED: pb.TASK_STATUS_BLOCKED,
    TaskStatus.FAILED: pb.TASK_STATUS_FAILED,
    TaskStatus.CANCELLED: pb.TASK_STATUS_CANCELLED,
    TaskStatus.WAITING_APPROVAL: pb.TASK_STATUS_WAITING_APPROVAL,
}
_STATUS_DOMAIN = {value: key for key, value in _STATUS_PROTO.items()}
_KIND_PROTO = {
    LinkKind.REQUIRES: pb.LINK_KIND_REQUIRES,
    LinkKind.REFERS: pb.LINK_KIND_REFERS,
    LinkKind.DUPLICATES: pb.LINK_KIND_DUPLICATES,
    LinkKind.RELATES_TO: pb.LINK_KIND_RELATES_TO,
}
_KIND_DOMAIN = {value: key for key, value in _KIND_PROTO.items()}
_STRATEGIES = {
    pb.RUN_STRATEGY_UNSPECIFIED: "dag",
    pb.RUN_STRATEGY_DAG: "dag",
    pb.RUN_STRATEGY_PRIORITY: "priority",
}


def status_from_proto(value: int, field: str = "status") -> TaskStatus:
    try:
        return _STATUS_DOMAIN[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(field, f"unknown or unspecified task status {value}") from None


def kind_from_proto(value: int) -> LinkKind:
    try:
        return _KIND_DOMAIN[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("kind", f"unknown or unspecified link kind {value}") from None


def task_to_proto(task: Task) -> pb.Task:
    message = pb.Task(
        task_id=task.task_id,
        project_id=task.project_id,
        name=task.name,
        status=_STATUS_PROTO[task.status],
        prompt=task.input.prompt,
        messages=[chat.message_to_proto(m) for m in task.input.messages],
        priority=task.priority,
        role=task.role,
        model=task.model,
        labels=dict(task.labels),
        requires_approval=task.requires_approval,
        approved=task.approved,
        context_budget=task.context_budget,
        status_reason=task.status_reason,
        hold_reason=task.hold_reason,
        create_time=timestamp_of(task.created_at),
        created_by=task.created_by,
        update_time=timestamp_of(task.updated_at),
        updated_by=task.updated_by,
        closed_by=task.closed_by,
    )
    if task.closed_at is not None:
        message.close_time.CopyFrom(timestamp_of(task.closed_at))
    return message


def note_to_proto(note: TaskNote) -> pb.Note:
    return pb.Note(
        note_id=note.note_id,
        task_id=note.task_id,
        agent=note.agent,
        text=note.text,
        create_time=timestamp_of(note.created_at),
    )


def link_to_proto(link: Link) -> pb.Link:
    return pb.Link(
        from_task=link.from_task,
        to_task=link.to_task,
        kind=_KIND_PROTO[link.kind],
        create_time=timestamp_of(link.created_at),
        created_by=link.created_by,
    )


def run_to_proto(run: TaskRun) -> pb.Run:
    sampling = run.sampling
    message = pb.Run(
        run_id=run.run_id,
        task_id=run.task_id,
        project_id=run.project_id,
        status=run.status.value,
        context_hash=run.context_hash,
        job_id=run.job_id,
        rerun_of=run.rerun_of,
        model=run.model,
        engine=run.engine,
        weights_digest=run.weights_digest,
        max_tokens=int(sampling.get("max_tokens", 0)),  # type: ignore[call-overload]
        temperature=float(sampling.get("temperature", 0.0)),  # type: ignore[arg-type]
        seed=int(sampling.get("seed", 0)),  # type: ignore[call-overload]
        routing_report_json=json.dumps(dict(run.routing_report), sort_keys=True)
        if run.routing_report
        else "",
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost=run.cost,
        output=run.output,
        end_reason=run.end_reason,
        end_message=run.end_message,
        start_time=timestamp_of(run.started_at),
        started_by=run.started_by,
        role=run.role,
        system_prompt=run.system_prompt,
        escalated_from=run.escalated_from,
        time_to_first_token_seconds=run.time_to_first_token or 0.0,
    )
    if run.ended_at is not None:
        message.end_time.CopyFrom(timestamp_of(run.ended_at))
    if run.escalation:
        message.escalation.CopyFrom(
            pb.Escalation(**{key: str(run.escalation.get(key, "")) for key in _ESCALATION_FIELDS})
        )
    return message


_ESCALATION_FIELDS = ("from_target", "to_target", "cause", "message")


def _items_to_proto(items: Sequence[Mapping[str, object]]) -> list[pb.ContextItem]:
    return [
        pb.ContextItem(
            source=str(item.get("source", "")),
            tier=str(item.get("tier", "")),
            kind=str(item.get("kind", "")),
            title=str(item.get("title", "")),
            fate=str(item.get("fate", "")),
            tokens=int(item.get("tokens", 0)),  # type: ignore[call-overload]
            why=str(item.get("why", "")),
            text=str(item.get("text", "")),
        )
        for item in items
    ]


def preview_to_proto(preview: Preview) -> pb.ContextBundle:
    bundle: Bundle = preview.bundle
    return pb.ContextBundle(
        context_hash=preview.context_hash,
        budget=bundle.budget,
        tokens=bundle.tokens,
        counter=bundle.counter,
        exact=bundle.exact,
        items=_items_to_proto(bundle_to_json(bundle)),
        prompt=preview.prompt,
    )


def snapshot_to_proto(snapshot: ContextSnapshot) -> pb.ContextBundle:
    items = list(snapshot.items)
    used = ("included", "summarised", "truncated")
    return pb.ContextBundle(
        context_hash=snapshot.context_hash,
        budget=snapshot.budget,
        tokens=sum(int(i.get("tokens", 0)) for i in items if i.get("fate") in used),  # type: ignore[call-overload]
        counter=snapshot.counter,
        exact=snapshot.exact,
        items=_items_to_proto(items),
        prompt=snapshot.prompt,
    )


def project_to_proto(project: Project) -> pb.Project:
    return pb.Project(
        project_id=project.project_id,
        index_document=project.index_document,
        task_counts=dict(project.task_counts),
        create_time=timestamp_of(project.created_at),
    )


class TaskServicer(tasks_pb2_grpc.TaskServiceServicer):
    """Converts requests, calls the work service, converts answers. Errors
    are ``hearth.errors`` exceptions, turned into statuses by the host's
    ErrorInterceptor."""

    def __init__(self, work: WorkService, plans: PlanService) -> None:
        self._work = work
        self._plans = plans

    async def CreateTask(
        self, request: pb.CreateTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTaskResponse:
        messages = tuple(chat.message_from_proto(m) for m in request.messages)
        task = await self._work.create_task(
            NewTask(
                project_id=request.project_id,
                name=request.name,
                prompt=request.prompt,
                messages=messages,
                priority=request.priority,
                role=request.role,
                model=request.model,
                labels=dict(request.labels),
                requires_approval=request.requires_approval,
                context_budget=request.context_budget,
                agent=request.agent,
            )
        )
        return pb.CreateTaskResponse(task=task_to_proto(task))

    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResponse:
        detail = await self._work.task_detail(request.task_id)
        return pb.GetTaskResponse(
            task=task_to_proto(detail.task),
            notes=[note_to_proto(n) for n in detail.notes],
            outgoing=[link_to_proto(link) for link in detail.outgoing],
            incoming=[link_to_proto(link) for link in detail.incoming],
            runs=[run_to_proto(r) for r in detail.runs],
        )

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        status = status_from_proto(request.status) if request.status else None
        tasks = await self._work.list_tasks(request.project_id, status)
        return pb.ListTasksResponse(tasks=[task_to_proto(t) for t in tasks])

    async def AddNote(
        self, request: pb.AddNoteRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddNoteResponse:
        note = await self._work.add_note(request.task_id, request.agent, request.text)
        return pb.AddNoteResponse(note=note_to_proto(note))

    async def CloseTask(
        self, request: pb.CloseTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseTaskResponse:
        task = await self._work.close_task(
            request.task_id, status_from_proto(request.status), request.reason, request.agent
        )
        return pb.CloseTaskResponse(task=task_to_proto(task))

    async def HoldTask(
        self, request: pb.HoldTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.HoldTaskResponse:
        task = await self._work.hold_task(request.task_id, request.reason, request.agent)
        return pb.HoldTaskResponse(task=task_to_proto(task))

    async def ReleaseTask(
        self, request: pb.ReleaseTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseTaskResponse:
        task = await self._work.release_task(request.task_id, request.agent)
        return pb.ReleaseTaskResponse(task=task_to_proto(task))

    async def CreateLink(
        self, request: pb.CreateLinkRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateLinkResponse:
        link, existed = await self._work.create_link(
            request.from_task, request.to_task, kind_from_proto(request.kind), request.agent
        )
        return pb.CreateLinkResponse(link=link_to_proto(link), existed=existed)

    async def DeleteLink(
        self, request: pb.DeleteLinkRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteLinkResponse:
        await self._work.delete_link(request.from_task, request.to_task, kind_from_proto(request.kind))
        return pb.DeleteLinkResponse()

    async def ListLinks(
        self, request: pb.ListLinksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLinksResponse:
        outgoing, incoming = await self._work.list_links(request.task_id)
        return pb.ListLinksResponse(
            outgoing=[link_to_proto(link) for link in outgoing],
            incoming=[link_to_proto(link) for link in incoming],
        )

    async def NextTask(
        self, request: pb.NextTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.NextTaskResponse:
        task, blocked = await self._work.next_task(request.project_id)
        response = pb.NextTaskResponse(blocked=[task_to_proto(t) for t in blocked])
        if task is not None:
            response.task.CopyFrom(task_to_proto(task))
        return response

    async def PreviewContext(
        self, request: pb.PreviewContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewContextResponse:
        preview = await self._work.preview_context(request.task_id, request.budget)
        return pb.PreviewContextResponse(bundle=preview_to_proto(preview))

    async def ApproveContext(
        self, request: pb.ApproveContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApproveContextResponse:
        task, preview = await self._work.approve_context(
            request.task_id, list(request.pins), list(request.excludes), request.agent
        )
        return pb.ApproveContextResponse(task=task_to_proto(task), bundle=preview_to_proto(preview))

    async def RunTask(
        self, request: pb.RunTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunTaskResponse:
        run, task = await self._work.run_task(request.task_id, request.agent)
        return pb.RunTaskResponse(run=run_to_proto(run), task=task_to_proto(task))

    async def RunProject(
        self, request: pb.RunProjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunProjectResponse]:
        strategy = _STRATEGIES.get(request.strategy)
        if strategy is None:
            raise InvalidArgument("strategy", f"unknown run strategy {request.strategy}")
        updates = self._work.run_project(
            request.project_id,
            strategy=strategy,
            parallelism=request.parallelism,
            continue_on_failure=request.continue_on_failure,
            agent=request.agent,
        )
        async for update in updates:
            if isinstance(update, TaskUpdate):
                yield pb.RunProjectResponse(
                    task=pb.TaskUpdate(
                        task=task_to_proto(update.task),
                        run_id=update.run.run_id if update.run else 0,
                        job_id=update.run.job_id if update.run else "",
                    )
                )
            elif isinstance(update, ProjectRunSummary):
                yield pb.RunProjectResponse(
                    summary=pb.ProjectRunSummary(
                        done=update.done,
                        failed=update.failed,
                        blocked=update.blocked,
                        not_run=update.not_run,
                        stopped_on_failure=update.stopped_on_failure,
                        blocked_tasks=[task_to_proto(t) for t in update.blocked_tasks],
                    )
                )

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        run, snapshot = await self._work.run_with_snapshot(request.run_id)
        response = pb.GetRunResponse(run=run_to_proto(run))
        if snapshot is not None:
            response.bundle.CopyFrom(snapshot_to_proto(snapshot))
        return response

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        runs = await self._work.list_runs(request.project_id, request.task_id, request.page_size)
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs])

    async def RerunTask(
        self, request: pb.RerunTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RerunTaskResponse:
        run = await self._work.rerun(request.run_id, request.agent)
        return pb.RerunTaskResponse(run=run_to_proto(run))

    async def DiffRuns(
        self, request: pb.DiffRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiffRunsResponse:
        diff = await self._work.diff_runs(request.run_a, request.run_b)
        return pb.DiffRunsResponse(
            diff_json=json.dumps(diff.to_json(), sort_keys=True),
            same_context=diff.same_context,
            same_output=diff.same_output,
        )

    async def SetProjectIndex(
        self, request: pb.SetProjectIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetProjectIndexResponse:
        project = await self._work.set_project_index(
            request.project_id, request.index_document, request.agent
        )
        return pb.SetProjectIndexResponse(project=project_to_proto(project))

    async def GetProject(
        self, request: pb.GetProjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProjectResponse:
        project = await self._work.get_project(request.project_id)
        return pb.GetProjectResponse(project=project_to_proto(project))

    # --- plans, roles, stats, events

    async def ProposePlan(
        self, request: pb.ProposePlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProposePlanResponse:
        plan = await self._plans.propose(
            request.project_id,
            request.goal,
            request.agent,
            max_attempts=request.max_attempts,
            model=request.model,
        )
        return pb.ProposePlanResponse(plan=plan_to_proto(plan))

    async def GetPlan(
        self, request: pb.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPlanResponse:
        return pb.GetPlanResponse(plan=plan_to_proto(await self._plans.get(request.plan_id)))

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPlansResponse:
        status = plan_status_from_proto(request.status) if request.status else None
        plans = await self._plans.list(request.project_id, status)
        return pb.ListPlansResponse(plans=[plan_to_proto(p) for p in plans])

    async def EditPlan(
        self, request: pb.EditPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.EditPlanResponse:
        plan = await self._plans.edit(
            request.plan_id, draft_from_proto(request.draft), request.revision, request.agent
        )
        return pb.EditPlanResponse(plan=plan_to_proto(plan))

    async def ApprovePlan(
        self, request: pb.ApprovePlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApprovePlanResponse:
        draft = draft_from_proto(request.draft) if request.HasField("draft") else None
        approval = await self._plans.approve(request.plan_id, draft, request.revision, request.agent)
        return pb.ApprovePlanResponse(
            plan=plan_to_proto(approval.plan),
            tasks=[task_to_proto(t) for t in approval.tasks],
            links=[link_to_proto(link) for link in approval.links],
        )

    async def RejectPlan(
        self, request: pb.RejectPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectPlanResponse:
        plan = await self._plans.reject(request.plan_id, request.reason, request.agent)
        return pb.RejectPlanResponse(plan=plan_to_proto(plan))

    async def ListRoles(
        self, request: pb.ListRolesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRolesResponse:
        roles = await self._work.list_roles(route=request.route)
        book = self._work.roles
        return pb.ListRolesResponse(roles=[role_to_proto(role, book, route) for role, route in roles])

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        query = StatsQuery(
            project_id=request.project_id,
            agent=request.agent,
            group_by=grouping_from_proto(request.group_by),
            start=_epoch(request.start_time) if request.HasField("start_time") else None,
            end=_epoch(request.end_time) if request.HasField("end_time") else None,
        )
        report = await self._work.stats(query)
        return pb.StatsResponse(
            rows=[stats_row_to_proto(row) for row in report.rows], total=stats_row_to_proto(report.total)
        )

    async def ExportEvents(
        self, request: pb.ExportEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        pages = self._work.events(since=request.since, project_id=request.project_id, limit=request.limit)
        async for events in pages:
            yield pb.ExportEventsResponse(events=[work_event_to_proto(e) for e in events])


def _epoch(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9

"""Plans, roles, usage reports and work events between the tasks.v1 protos
and the domain."""

from __future__ import annotations

import json

from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.errors import InvalidArgument
from orchestratord.api.convert import timestamp_of
from orchestratord.domain.events import WorkEvent
from orchestratord.domain.plans import Plan, PlanAttempt, PlanDraft, PlanStatus, PlanTask
from orchestratord.domain.ports import RoleRoute
from orchestratord.domain.roles import RoleBook, RoleProfile
from orchestratord.domain.stats import Grouping, StatsRow

_PLAN_STATUS_PROTO = {
    PlanStatus.PROPOSING: pb.PLAN_STATUS_PROPOSING,
    PlanStatus.DRAFT: pb.PLAN_STATUS_DRAFT,
    PlanStatus.APPROVED: pb.PLAN_STATUS_APPROVED,
    PlanStatus.REJECTED: pb.PLAN_STATUS_REJECTED,
    PlanStatus.FAILED: pb.PLAN_STATUS_FAILED,
}
_PLAN_STATUS_DOMAIN = {value: key for key, value in _PLAN_STATUS_PROTO.items()}
_GROUPINGS = {
    pb.STATS_GROUPING_UNSPECIFIED: Grouping.NONE,
    pb.STATS_GROUPING_DAY: Grouping.DAY,
    pb.STATS_GROUPING_MONTH: Grouping.MONTH,
    pb.STATS_GROUPING_ROLE: Grouping.ROLE,
    pb.STATS_GROUPING_MODEL: Grouping.MODEL,
}


def plan_status_from_proto(value: int) -> PlanStatus:
    try:
        return _PLAN_STATUS_DOMAIN[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("status", f"unknown or unspecified plan status {value}") from None


def grouping_from_proto(value: int) -> Grouping:
    try:
        return _GROUPINGS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("group_by", f"unknown grouping {value}") from None


def plan_task_to_proto(task: PlanTask) -> pb.PlanTask:
    return pb.PlanTask(
        key=task.key,
        name=task.name,
        role=task.role,
        prompt=task.prompt,
        requires=list(task.requires),
        priority=task.priority,
        produces_index=task.produces_index,
    )


def draft_to_proto(draft: PlanDraft) -> pb.PlanDraft:
    return pb.PlanDraft(tasks=[plan_task_to_proto(t) for t in draft.tasks], summary=draft.summary)


def draft_from_proto(draft: pb.PlanDraft) -> PlanDraft:
    return PlanDraft(
        tasks=tuple(
            PlanTask(
                key=t.key,
                name=t.name,
                role=t.role,
                prompt=t.prompt,
                requires=tuple(t.requires),
                priority=t.priority,
                produces_index=t.produces_index,
            )
            for t in draft.tasks
        ),
        summary=draft.summary,
    )


def attempt_to_proto(attempt: PlanAttempt) -> pb.PlanAttempt:
    message = pb.PlanAttempt(
        attempt=attempt.attempt,
        status=attempt.status.value,
        job_id=attempt.job_id,
        model=attempt.model,
        errors=list(attempt.errors),
        output=attempt.output,
        input_tokens=attempt.input_tokens,
        output_tokens=attempt.output_tokens,
        cost=attempt.cost,
        start_time=timestamp_of(attempt.started_at),
    )
    if attempt.ended_at is not None:
        message.end_time.CopyFrom(timestamp_of(attempt.ended_at))
    return message


def plan_to_proto(plan: Plan) -> pb.Plan:
    message = pb.Plan(
        plan_id=plan.plan_id,
        project_id=plan.project_id,
        goal=plan.goal,
        status=_PLAN_STATUS_PROTO[plan.status],
        draft=draft_to_proto(plan.draft),
        revision=plan.revision,
        reason=plan.reason,
        attempts=[attempt_to_proto(a) for a in plan.attempts],
        task_ids=dict(plan.task_ids),
        index_task_id=plan.index_task_id,
        model=plan.model,
        create_time=timestamp_of(plan.created_at),
        created_by=plan.created_by,
        update_time=timestamp_of(plan.updated_at),
        updated_by=plan.updated_by,
        decided_by=plan.decided_by,
    )
    if plan.decided_at is not None:
        message.decide_time.CopyFrom(timestamp_of(plan.decided_at))
    return message


def role_to_proto(role: RoleProfile, book: RoleBook, route: RoleRoute | None) -> pb.Role:
    message = pb.Role(
        name=role.name,
        models=list(role.models),
        description=role.description,
        system_prompt=role.system_prompt,
        context_budget=role.context_budget,
        context_tiers=[t.name.lower() for t in role.tiers],
        any_tool=role.tools is None,
        tools=list(role.tools or ()),
        builtin=role.builtin,
        configured=role.configured,
        is_default=role.name == book.default_role,
    )
    if route is not None:
        message.route.CopyFrom(
            pb.RoleRoute(
                chosen_target=route.chosen,
                chain=list(route.chain),
                reason=route.reason,
                detail=route.detail,
                matched_rules=list(route.matched_rules),
                error_reason=route.error_reason,
                error_message=route.error_message,
            )
        )
    return message


def stats_row_to_proto(row: StatsRow) -> pb.StatsRow:
    return pb.StatsRow(
        key=row.key,
        jobs=row.jobs,
        failed=row.failed,
        failure_rate=row.failure_rate,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost=row.cost,
        timed_jobs=row.timed_jobs,
        mean_time_to_first_token_seconds=row.mean_time_to_first_token or 0.0,
        p95_time_to_first_token_seconds=row.p95_time_to_first_token or 0.0,
    )


def work_event_to_proto(event: WorkEvent) -> pb.WorkEvent:
    return pb.WorkEvent(
        sequence=event.sequence,
        time=timestamp_of(event.at),
        kind=event.kind,
        entity=event.entity,
        project_id=event.project_id,
        task_id=event.task_id,
        plan_id=event.plan_id,
        run_id=event.run_id,
        agent=event.agent,
        data_json=json.dumps(dict(event.data), sort_keys=True, ensure_ascii=False),
    )

"""The SDK's plan, role, stats and event methods (both clients) and
``hearth plan``, ``roles``, ``stats`` and ``events export`` against a real
grpc.aio server faking those TaskService RPCs (:class:`FakeWork`, an
extension of the task fake of ``test_sdk_tasks``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.api.tasks.v1 import tasks_pb2_grpc
from hearth.cli import app
from hearth.cli.plan import apply_edits
from hearth.client import ADDRESS_ENV, AsyncClient, Client, plan_draft, plan_status_name
from hearth.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from tests.unit.fake_stack import GrpcServerThread
from tests.unit.test_sdk_tasks import FakeTasks

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

DRAFT = {
    "tasks": [
        {"key": "code", "name": "write it", "role": "coder", "prompt": "Write it."},
        {"key": "test", "name": "test it", "role": "tester", "prompt": "Test it.", "requires": ["code"]},
    ]
}


class FakeWork(FakeTasks):
    """FakeTasks plus plans (a goal "fail" gives a failed plan after its
    attempts, "bad" a draft whose role is refused on edit), roles (fixed),
    stats (echoing the request in the total's key) and an event log of
    three events."""

    def __init__(self) -> None:
        super().__init__()
        self.plans: dict[int, pb.Plan] = {}

    def _plan(self, plan_id: int) -> pb.Plan:
        if plan_id not in self.plans:
            raise NotFound(f"no plan {plan_id}", reason="PLAN_NOT_FOUND")
        return self.plans[plan_id]

    def _draft_of(self, plan_id: int, revision: int) -> pb.Plan:
        plan = self._plan(plan_id)
        if plan.status != pb.PLAN_STATUS_DRAFT:
            raise FailedPrecondition(f"plan {plan_id} is not a draft", reason="PLAN_NOT_DRAFT")
        if revision and revision != plan.revision:
            raise Aborted("changed meanwhile", reason="REVISION_MISMATCH")
        return plan

    def _check(self, draft: pb.PlanDraft) -> None:
        for index, task in enumerate(draft.tasks):
            if task.role not in ("coder", "tester", "writer"):
                raise InvalidArgument(f"draft.tasks[{index}].role", "unknown role", reason="PLAN_INVALID")

    async def ProposePlan(self, request: Any, context: Any) -> pb.ProposePlanResponse:
        await self._called("ProposePlan", request)
        plan_id = len(self.plans) + 1
        attempts = max(request.max_attempts, 1)
        plan = pb.Plan(plan_id=plan_id, project_id=request.project_id, goal=request.goal, model=request.model)
        for number in range(1, attempts + 1):
            plan.attempts.add(
                attempt=number, status="invalid", model="mgr", errors=[f"tasks[0].role: bad {number}"]
            )
        if request.goal == "fail":
            plan.status = pb.PLAN_STATUS_FAILED
            self.plans[plan_id] = plan
            raise FailedPrecondition(
                f"plan {plan_id}: no valid plan",
                reason="PLAN_FAILED",
                metadata={"plan_id": str(plan_id), "attempts": str(attempts)},
            )
        plan.attempts.add(attempt=attempts + 1, status="valid", model="mgr", output=json.dumps(DRAFT))
        plan.status = pb.PLAN_STATUS_DRAFT
        plan.draft.CopyFrom(plan_draft(DRAFT))
        self.plans[plan_id] = plan
        return pb.ProposePlanResponse(plan=plan)

    async def GetPlan(self, request: Any, context: Any) -> pb.GetPlanResponse:
        await self._called("GetPlan", request)
        return pb.GetPlanResponse(plan=self._plan(request.plan_id))

    async def ListPlans(self, request: Any, context: Any) -> pb.ListPlansResponse:
        await self._called("ListPlans", request)
        plans = [
            p
            for p in self.plans.values()
            if p.project_id == request.project_id and (not request.status or p.status == request.status)
        ]
        return pb.ListPlansResponse(plans=plans)

    async def EditPlan(self, request: Any, context: Any) -> pb.EditPlanResponse:
        await self._called("EditPlan", request)
        plan = self._draft_of(request.plan_id, request.revision)
        self._check(request.draft)
        plan.draft.CopyFrom(request.draft)
        plan.revision += 1
        return pb.EditPlanResponse(plan=plan)

    async def ApprovePlan(self, request: Any, context: Any) -> pb.ApprovePlanResponse:
        await self._called("ApprovePlan", request)
        plan = self._draft_of(request.plan_id, request.revision)
        if request.HasField("draft"):
            self._check(request.draft)
            plan.draft.CopyFrom(request.draft)
        created = []
        for task in plan.draft.tasks:
            reply = await self.CreateTask(
                pb.CreateTaskRequest(
                    project_id=plan.project_id,
                    name=task.name,
                    prompt=task.prompt,
                    role=task.role,
                    agent=request.agent,
                ),
                context,
            )
            plan.task_ids[task.key] = reply.task.task_id
            created.append(reply.task)
        plan.status = pb.PLAN_STATUS_APPROVED
        plan.decided_by = request.agent
        return pb.ApprovePlanResponse(plan=plan, tasks=created)

    async def RejectPlan(self, request: Any, context: Any) -> pb.RejectPlanResponse:
        await self._called("RejectPlan", request)
        plan = self._draft_of(request.plan_id, 0)
        plan.status, plan.reason = pb.PLAN_STATUS_REJECTED, request.reason
        return pb.RejectPlanResponse(plan=plan)

    async def ListRoles(self, request: Any, context: Any) -> pb.ListRolesResponse:
        await self._called("ListRoles", request)
        coder = pb.Role(
            name="coder",
            models=["small", "big"],
            system_prompt="You code.",
            context_budget=1024,
            context_tiers=["index", "required"],
            any_tool=True,
            builtin=True,
        )
        tester = pb.Role(name="tester", tools=["pytest"], context_tiers=["index"], builtin=True)
        if request.route:
            coder.route.CopyFrom(
                pb.RoleRoute(chosen_target="small", chain=["small", "big"], reason="ROLE_DEFAULT")
            )
            tester.route.CopyFrom(pb.RoleRoute(error_reason="POLICY_DENIED", error_message="offline"))
        return pb.ListRolesResponse(roles=[coder, tester])

    async def Stats(self, request: Any, context: Any) -> pb.StatsResponse:
        await self._called("Stats", request)
        rows = [
            pb.StatsRow(
                key="coder", jobs=3, failed=1, failure_rate=1 / 3, input_tokens=30, cost=0.5, timed_jobs=2,
                mean_time_to_first_token_seconds=0.25, p95_time_to_first_token_seconds=0.4,
            ),
            pb.StatsRow(key="tester", jobs=1),
        ]  # fmt: skip
        return pb.StatsResponse(rows=rows, total=pb.StatsRow(key="all", jobs=4, failed=1, failure_rate=0.25))

    async def ExportEvents(self, request: Any, context: Any) -> AsyncIterator[pb.ExportEventsResponse]:
        await self._called("ExportEvents", request)
        events = [
            pb.WorkEvent(sequence=n, kind="task.created", entity="task", project_id="p", task_id=n,
                         data_json=json.dumps({"id": n}))
            for n in range(1, 4)
        ]  # fmt: skip
        events = [e for e in events if e.sequence > request.since]
        if request.limit:
            events = events[: request.limit]
        for event in events:  # one page per event
            yield pb.ExportEventsResponse(events=[event])


class WorkServer(GrpcServerThread):
    def __init__(self) -> None:
        super().__init__(self._add)
        self.work = FakeWork()

    async def _add(self, server: grpc.aio.Server) -> None:
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(self.work, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (*ADDRESS_ENV.values(), "HEARTH_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def server() -> Iterator[WorkServer]:
    with WorkServer() as running:
        yield running


@pytest.fixture
def fake(server: WorkServer) -> FakeWork:
    return server.work


@pytest.fixture
def hearth(server: WorkServer, tmp_path: Path) -> Any:
    runner = CliRunner()
    env = {"HEARTH_ORCHESTRATOR_ADDRESS": server.address, "COLUMNS": "200"}

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, ["--data-dir", str(tmp_path), *args], env=env, input=input)

    return invoke


# --- the SDK ------------------------------------------------------------------------


async def test_the_sdk_maps_the_plan_calls_and_their_errors(server: WorkServer, fake: FakeWork) -> None:
    async with AsyncClient(orchestrator=server.address) as client:
        plan = await client.propose_plan("p", "goal", agent="ana", max_attempts=2, model="mgr")
        request = fake.requests("ProposePlan")[-1]
        assert (request.project_id, request.goal, request.agent, request.max_attempts, request.model) == (
            "p",
            "goal",
            "ana",
            2,
            "mgr",
        )
        assert plan_status_name(plan.status) == "draft" and [a.status for a in plan.attempts][-1] == "valid"
        with pytest.raises(FailedPrecondition) as failed:
            await client.propose_plan("p", "fail")
        assert failed.value.reason == "PLAN_FAILED" and failed.value.metadata["plan_id"] == "2"
        edited = await client.edit_plan(plan.plan_id, {**DRAFT, "summary": "s"}, revision=0, agent="bo")
        assert edited.draft.summary == "s" and edited.revision == 1
        with pytest.raises(Aborted):
            await client.edit_plan(plan.plan_id, DRAFT, revision=7)
        bad = {"tasks": [{**DRAFT["tasks"][0], "role": "hacker"}]}
        with pytest.raises(InvalidArgument) as refused:
            await client.approve_plan(plan.plan_id, bad)
        assert refused.value.metadata["field"] == "draft.tasks[0].role"
        approved = await client.approve_plan(plan.plan_id, revision=1, agent="bo")
        assert fake.requests("ApprovePlan")[-1].HasField("draft") is False
        assert dict(approved.plan.task_ids) == {"code": 1, "test": 2}
        assert [p.plan_id for p in await client.list_plans("p", "approved")] == [plan.plan_id]
        assert fake.requests("ListPlans")[-1].status == pb.PLAN_STATUS_APPROVED
        with pytest.raises(ValueError, match="unknown plan status 'nope'"):
            await client.list_plans("p", "nope")
        with pytest.raises(NotFound):
            await client.get_plan(99)
        roles = await client.list_roles()
        assert [r.name for r in roles] == ["coder", "tester"] and fake.requests("ListRoles")[-1].route
        stats = await client.stats(project_id="p", agent="ana", group_by="role")
        sent = fake.requests("Stats")[-1]
        assert (sent.project_id, sent.agent, sent.group_by) == ("p", "ana", pb.STATS_GROUPING_ROLE)
        assert stats.total.jobs == 4
        with pytest.raises(ValueError, match="unknown grouping"):
            await client.stats(group_by="week")
        assert [e.sequence async for e in client.export_events(1, limit=1)] == [2]
    with pytest.raises(ValueError, match="not a plan draft"):
        plan_draft({"tasks": [{"key": "a", "colour": "red"}]})


def test_the_blocking_client_has_the_same_plan_methods(server: WorkServer) -> None:
    with Client(orchestrator=server.address) as client:
        plan = client.propose_plan("p", "goal")
        assert client.get_plan(plan.plan_id).plan_id == plan.plan_id
        assert client.edit_plan(plan.plan_id, DRAFT).revision == 1
        assert client.reject_plan(plan.plan_id, "no").reason == "no"
        assert [p.plan_id for p in client.list_plans("p")] == [plan.plan_id]
        second = client.propose_plan("p", "again")
        assert len(client.approve_plan(second.plan_id).tasks) == 2
        assert [r.name for r in client.list_roles(route=False)] == ["coder", "tester"]
        assert client.stats().total.jobs == 4
        assert [e.sequence for e in client.export_events()] == [1, 2, 3]


# --- the CLI ------------------------------------------------------------------------


def test_plan_propose_prints_the_draft_and_the_attempts(hearth: Any, fake: FakeWork) -> None:
    result = hearth("plan", "propose", "p", "Build it", "--attempts", "2", "--agent", "ana")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "attempt 1: invalid on mgr" in out and "  - tasks[0].role: bad 1" in out
    assert "attempt 3: valid on mgr" in out
    assert "code" in out and "tester" in out and "plan 1 is a draft" in result.stderr
    as_json = json.loads(hearth("plan", "show", "1", "--json").stdout)
    assert as_json["plan_id"] == "1" and as_json["status"] == "PLAN_STATUS_DRAFT"
    listed = hearth("plan", "list", "p")
    assert listed.exit_code == 0 and "Build it" in listed.stdout


def test_a_failed_proposal_shows_its_attempts_and_exits_1(hearth: Any) -> None:
    result = hearth("plan", "propose", "p", "fail", "--attempts", "2")
    assert result.exit_code == 1
    assert "attempt 2: invalid on mgr" in result.stdout and "tasks[0].role: bad 2" in result.stdout
    assert "PLAN_FAILED" in result.stderr


def test_plan_edit_applies_removes_sets_and_adds_to_the_read_revision(hearth: Any, fake: FakeWork) -> None:
    hearth("plan", "propose", "p", "Build it")
    result = hearth(
        "plan", "edit", "1", "--remove", "code", "--set", "test.role=writer", "--set", "test.priority=3",
        "--add", '{"key": "docs", "name": "docs", "role": "writer", "prompt": "Docs.", "requires": ["test"]}',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = fake.requests("EditPlan")[-1]
    assert sent.revision == 0 and sent.plan_id == 1
    draft = json_format.MessageToDict(sent.draft, preserving_proto_field_name=True)
    assert draft["tasks"] == [
        {"key": "test", "name": "test it", "role": "writer", "prompt": "Test it.", "priority": 3},
        {"key": "docs", "name": "docs", "role": "writer", "prompt": "Docs.", "requires": ["test"]},
    ]
    refused = hearth("plan", "edit", "1", "--set", "test.role=hacker")
    assert refused.exit_code == 2 and "PLAN_INVALID" in refused.stderr
    missing = hearth("plan", "edit", "1", "--remove", "nope")
    assert missing.exit_code == 2 and "no task 'nope'" in missing.output
    with pytest.raises(Exception, match=r"KEY\.FIELD=VALUE"):
        apply_edits(DRAFT, [], ["colour=red"], [])


def test_plan_approve_with_a_file_and_reject(hearth: Any, fake: FakeWork, tmp_path: Path) -> None:
    hearth("plan", "propose", "p", "one")
    hearth("plan", "propose", "p", "two")
    edited = tmp_path / "draft.json"
    shown = json.loads(hearth("plan", "show", "1", "--json").stdout)
    shown["draft"]["tasks"] = shown["draft"]["tasks"][:1]
    edited.write_text(json.dumps(shown))  # a whole `plan show --json` works as a draft
    result = hearth("plan", "approve", "1", "--file", str(edited), "--agent", "bo")
    assert result.exit_code == 0, result.output
    assert "plan 1 approved: 1 tasks" in result.stdout and "write it" in result.stdout
    assert len(fake.requests("ApprovePlan")[-1].draft.tasks) == 1
    rejected = hearth("plan", "reject", "2", "--reason", "not now")
    assert rejected.exit_code == 0 and "plan 2 rejected: not now" in rejected.stdout
    again = hearth("plan", "reject", "2", "--reason", "x")
    assert again.exit_code == 2 and "PLAN_NOT_DRAFT" in again.stderr
    assert hearth("plan", "reject", "1").exit_code == 2  # --reason is required


def test_roles_show_the_chain_the_model_now_and_the_policy(hearth: Any, fake: FakeWork) -> None:
    result = hearth("roles")
    assert result.exit_code == 0, result.output
    coder = next(line for line in result.stdout.splitlines() if line.strip().startswith("coder"))
    assert (
        "small, big" in coder and "small (ROLE_DEFAULT)" in coder and "1024 tokens: index, required" in coder
    )
    tester = next(line for line in result.stdout.splitlines() if line.strip().startswith("tester"))
    assert "refused: POLICY_DENIED" in tester and "pytest" in tester
    assert "tester: POLICY_DENIED: offline" in result.stderr
    assert fake.requests("ListRoles")[-1].route is not False
    unrouted = json.loads(hearth("roles", "--no-route", "--json").stdout)
    assert fake.requests("ListRoles")[-1].route is False and "route" not in unrouted[0]


def test_stats_is_a_table_or_json(hearth: Any, fake: FakeWork) -> None:
    table = hearth("stats", "--project", "p", "--agent", "ana", "--by", "role")
    assert table.exit_code == 0, table.output
    coder = next(line for line in table.stdout.splitlines() if line.strip().startswith("coder"))
    assert "33.3%" in coder and "250 ms" in coder and "400 ms" in coder
    sent = fake.requests("Stats")[-1]
    assert (sent.project_id, sent.agent, sent.group_by) == ("p", "ana", pb.STATS_GROUPING_ROLE)
    printed = json.loads(hearth("stats", "--json").stdout)
    assert printed["group_by"] == "none" and printed["total"]["jobs"] == 4
    assert printed["rows"][1]["mean_time_to_first_token_seconds"] is None
    assert hearth("stats", "--by", "week").exit_code == 2


def test_events_export_writes_json_lines_since_a_sequence(hearth: Any, tmp_path: Path) -> None:
    result = hearth("events", "export", "--since", "1")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["sequence"] for line in lines] == [2, 3] and lines[0]["data"] == {"id": 2}
    assert lines[0]["kind"] == "task.created" and lines[0]["task_id"] == 2
    assert "2 events, the last 3 (continue with --since 3)" in result.stderr
    out = tmp_path / "events.jsonl"
    assert hearth("events", "export", "--limit", "1", "--output", str(out)).exit_code == 0
    assert [json.loads(line)["sequence"] for line in out.read_text().splitlines()] == [1]

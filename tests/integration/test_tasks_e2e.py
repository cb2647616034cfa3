"""End to end: work on the real stack (NATS, PostgreSQL, the five services,
a sim worker). A project of five tasks linked by requires runs in dependency
order, a failure blocks its dependants with the reason, a rerun sends the
same prompt byte for byte, approval gates a task, and bad input is refused
with the field named and nothing written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.api.tasks.v1 import tasks_pb2_grpc
from hearth.errors import FailedPrecondition, HearthError, InvalidArgument, NotFound, from_rpc_error
from tests.conftest import start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SIM = "sim-work"
TINY = "tiny-llama"
REQUIRES = pb.LINK_KIND_REQUIRES
INDEX = "# INDEX\nConventions: answer in one paragraph. Layout: src/, tests/."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    config = {
        "models": [
            {"name": SIM, "engine": "sim", "context_length": 8192, "roles": ["default"]},
            # Configured but not served: its tokenizer counts context exactly.
            {"name": TINY, "path": str(tiny_model_dir), "context_length": 2048},
        ],
        "orchestrator": {"task_max_tokens": 24},
        "worker": {"engine": "sim", "model": SIM, "sim_decode_seconds_per_step": 0.002},
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-tasks"), config)
    yield stack
    stop_stack(stack)


class Api:
    """The TaskService and OrchestratorService stubs, errors typed."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.tasks = tasks_pb2_grpc.TaskServiceStub(channel)
        self.jobs = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

    async def __call__(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.tasks, method)(request, timeout=120)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def add(self, project: str, name: str, **fields: Any) -> pb.Task:
        fields.setdefault("prompt", f"Do {name}.")
        reply = await self(
            "CreateTask", pb.CreateTaskRequest(project_id=project, name=name, agent="tester", **fields)
        )
        return reply.task

    async def require(self, task: pb.Task, *required: pb.Task) -> None:
        for other in required:
            await self(
                "CreateLink",
                pb.CreateLinkRequest(from_task=task.task_id, to_task=other.task_id, kind=REQUIRES),
            )

    async def run_project(self, project: str, **fields: Any) -> list[pb.RunProjectResponse]:
        request = pb.RunProjectRequest(project_id=project, agent="tester", **fields)
        try:
            return [update async for update in self.tasks.RunProject(request, timeout=240)]
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def tasks_of(self, project: str) -> dict[str, pb.Task]:
        reply = await self("ListTasks", pb.ListTasksRequest(project_id=project))
        return {t.name: t for t in reply.tasks}

    async def job(self, job_id: str) -> orchestrator_pb2.Job:
        return (await self.jobs.GetJob(orchestrator_pb2.GetJobRequest(job_id=job_id))).job


@pytest.fixture
async def api(stack: Any) -> AsyncIterator[Api]:
    async with grpc.aio.insecure_channel(stack.addresses["orchestratord"]) as channel:
        yield Api(channel)


async def test_five_tasks_run_in_dependency_order_and_a_rerun_reproduces_the_prompt(api: Api) -> None:
    project = "garden"
    await api(
        "SetProjectIndex", pb.SetProjectIndexRequest(project_id=project, index_document=INDEX, agent="tester")
    )
    a = await api.add(project, "survey")
    b = await api.add(project, "soil", priority=1)
    c = await api.add(project, "seeds", priority=0)
    d = await api.add(project, "plan")
    e = await api.add(project, "write-up")
    await api.require(b, a)
    await api.require(c, a)
    await api.require(d, b, c)
    await api.require(e, d)
    listed = await api.tasks_of(project)
    assert [listed[n].status for n in ("survey", "soil", "plan")] == [
        pb.TASK_STATUS_READY,
        pb.TASK_STATUS_PENDING,
        pb.TASK_STATUS_PENDING,
    ]
    next_reply = await api("NextTask", pb.NextTaskRequest(project_id=project))
    assert next_reply.task.task_id == a.task_id

    updates = await api.run_project(project, parallelism=2)
    summary = updates[-1].summary
    assert (summary.done, summary.failed, summary.blocked, summary.not_run) == (5, 0, 0, 0)
    ended = [u.task for u in updates if u.HasField("task") and u.task.run_id]
    names = [t.task.name for t in ended]
    assert names[0] == "survey" and names[-1] == "write-up"
    runs = {}
    for task in (a, b, c, d, e):
        reply = await api("ListRuns", pb.ListRunsRequest(task_id=task.task_id))
        assert len(reply.runs) == 1 and reply.runs[0].status == "done"
        runs[task.name] = reply.runs[0]
    # Every task started after each task it requires had ended.
    for later, earlier in (
        ("soil", "survey"),
        ("seeds", "survey"),
        ("plan", "soil"),
        ("plan", "seeds"),
        ("write-up", "plan"),
    ):
        assert runs[later].start_time.ToNanoseconds() >= runs[earlier].end_time.ToNanoseconds()

    # The plan's context: the INDEX first, then both required outputs, by task id.
    got = await api("GetRun", pb.GetRunRequest(run_id=runs["plan"].run_id))
    used = [item for item in got.bundle.items if item.fate == "included"]
    assert [item.source for item in used] == ["index", f"task:{b.task_id}", f"task:{c.task_id}"]
    assert used[1].text == runs["soil"].output and used[2].text == runs["seeds"].output
    prompt = got.bundle.prompt
    assert prompt.startswith("Do plan.\n\nContext (ordered by priority):")
    assert INDEX in prompt and runs["soil"].output in prompt
    job = await api.job(runs["plan"].job_id)
    assert job.spec.prompt == prompt and job.spec.project_id == project and job.spec.task_id == str(d.task_id)
    assert runs["plan"].model == SIM and runs["plan"].engine == "sim"
    assert json.loads(runs["plan"].routing_report_json)["chosen_target"] == SIM

    # A rerun: the same snapshot, the same prompt byte for byte, a new job.
    rerun = (await api("RerunTask", pb.RerunTaskRequest(run_id=runs["plan"].run_id, agent="tester"))).run
    assert rerun.status == "done" and rerun.rerun_of == runs["plan"].run_id
    assert rerun.context_hash == runs["plan"].context_hash and rerun.job_id != runs["plan"].job_id
    again = await api.job(rerun.job_id)
    assert again.spec.prompt.encode() == job.spec.prompt.encode()
    assert (again.spec.max_tokens, again.spec.temperature, again.spec.seed) == (24, 0.0, 0)
    diff = await api("DiffRuns", pb.DiffRunsRequest(run_a=runs["plan"].run_id, run_b=rerun.run_id))
    assert diff.same_context
    assert json.loads(diff.diff_json)["same_prompt"] is True


async def test_a_failure_blocks_its_dependants_with_the_reason(api: Api) -> None:
    project = "orchard"
    broken = await api.add(project, "graft", model="no-such-model")
    after = await api.add(project, "prune")
    last = await api.add(project, "harvest")
    alone = await api.add(project, "water")
    await api.require(after, broken)
    await api.require(last, after)

    updates = await api.run_project(project, continue_on_failure=True)
    summary = updates[-1].summary
    assert (summary.done, summary.failed, summary.blocked) == (1, 1, 2)
    tasks = await api.tasks_of(project)
    assert tasks["graft"].status == pb.TASK_STATUS_FAILED
    assert tasks["graft"].status_reason == "MODEL_NOT_FOUND"
    assert tasks["water"].status == pb.TASK_STATUS_DONE
    assert (
        tasks["prune"].status_reason
        == f"task {after.task_id} waits for {broken.task_id}, which failed: MODEL_NOT_FOUND"
    )
    assert tasks["harvest"].status_reason == (
        f"task {last.task_id} waits for {after.task_id}, which waits for {broken.task_id}, "
        "which failed: MODEL_NOT_FOUND"
    )
    assert {t.task_id for t in summary.blocked_tasks} == {after.task_id, last.task_id}
    # Closing the failed task by hand (done) unblocks its dependants.
    await api(
        "CloseTask", pb.CloseTaskRequest(task_id=broken.task_id, status=pb.TASK_STATUS_DONE, agent="tester")
    )
    tasks = await api.tasks_of(project)
    assert tasks["prune"].status == pb.TASK_STATUS_READY and tasks["harvest"].status == pb.TASK_STATUS_PENDING
    assert tasks["graft"].closed_by == "tester"
    assert alone.task_id in {t.task_id for t in tasks.values()}


async def test_stop_on_first_failure_starts_nothing_after_it(api: Api) -> None:
    project = "meadow"
    await api.add(project, "mow", model="no-such-model", priority=0)
    await api.add(project, "rake", priority=5)
    updates = await api.run_project(project, parallelism=1)
    summary = updates[-1].summary
    assert (summary.failed, summary.done, summary.not_run, summary.stopped_on_failure) == (1, 0, 1, True)


async def test_approval_gates_a_task_and_its_overrides_shape_the_bundle(api: Api) -> None:
    project = "greenhouse"
    await api("SetProjectIndex", pb.SetProjectIndexRequest(project_id=project, index_document=INDEX))
    source = await api.add(project, "measure")
    await api("RunTask", pb.RunTaskRequest(task_id=source.task_id, agent="tester"))
    gated = await api.add(project, "heat", requires_approval=True, model=TINY)
    assert gated.status == pb.TASK_STATUS_WAITING_APPROVAL
    with pytest.raises(FailedPrecondition) as caught:
        await api("RunTask", pb.RunTaskRequest(task_id=gated.task_id))
    assert caught.value.reason == "NOT_APPROVED"

    preview = (await api("PreviewContext", pb.PreviewContextRequest(task_id=gated.task_id))).bundle
    # TINY is a local model with a tokenizer: counted exactly, with its tokenizer.
    assert (preview.counter, preview.exact) == (f"tokenizer:{TINY}", True)
    assert [i.source for i in preview.items] == ["index"]
    assert preview.items[0].tokens > 0 and preview.tokens == preview.items[0].tokens

    approved = await api(
        "ApproveContext",
        pb.ApproveContextRequest(
            task_id=gated.task_id, pins=[f"task:{source.task_id}"], excludes=["index"], agent="reviewer"
        ),
    )
    assert approved.task.approved and approved.task.status == pb.TASK_STATUS_READY
    fates = {item.source: item.fate for item in approved.bundle.items}
    assert fates == {"index": "excluded", f"pin:task:{source.task_id}": "included"}
    detail = await api("GetTask", pb.GetTaskRequest(task_id=gated.task_id))
    assert any("context approved" in note.text and note.agent == "reviewer" for note in detail.notes)

    # The preview is what the run uses: the same hash.
    preview = (await api("PreviewContext", pb.PreviewContextRequest(task_id=gated.task_id))).bundle
    assert preview.context_hash == approved.bundle.context_hash


async def test_bad_input_is_refused_with_the_field_named_and_nothing_written(api: Api) -> None:
    project = "shed"
    one = await api.add(project, "sweep")
    two = await api.add(project, "paint")
    other = await api.add("elsewhere", "dig")
    await api.require(two, one)

    with pytest.raises(FailedPrecondition) as cycle:
        await api.require(one, two)
    assert cycle.value.reason == "DEPENDENCY_CYCLE"
    assert cycle.value.metadata["cycle"] == f"{one.task_id},{two.task_id},{one.task_id}"
    cases: list[tuple[str, Any, type[HearthError], str, str]] = [
        ("GetTask", pb.GetTaskRequest(task_id=999_999), NotFound, "TASK_NOT_FOUND", ""),
        ("ListTasks", pb.ListTasksRequest(project_id="nope"), NotFound, "PROJECT_NOT_FOUND", ""),
        (
            "CreateLink",
            pb.CreateLinkRequest(from_task=one.task_id, to_task=one.task_id, kind=REQUIRES),
            InvalidArgument,
            "INVALID_FIELD",
            "to_task",
        ),
        (
            "CreateLink",
            pb.CreateLinkRequest(from_task=one.task_id, to_task=two.task_id, kind=9),  # type: ignore[arg-type]
            InvalidArgument,
            "INVALID_FIELD",
            "kind",
        ),
        (
            "CreateLink",
            pb.CreateLinkRequest(from_task=one.task_id, to_task=other.task_id, kind=REQUIRES),
            FailedPrecondition,
            "CROSS_PROJECT_LINK",
            "",
        ),
        (
            "CreateTask",
            pb.CreateTaskRequest(project_id=project, name="big", prompt="x", model=TINY, context_budget=4096),
            InvalidArgument,
            "BUDGET_TOO_LARGE",
            "context_budget",
        ),
        (
            "CreateTask",
            pb.CreateTaskRequest(project_id=project, name="nul", prompt="a\x00b"),
            InvalidArgument,
            "INVALID_TEXT",
            "prompt",
        ),
        (
            "CreateTask",
            pb.CreateTaskRequest(project_id=project, name=" ", prompt="x"),
            InvalidArgument,
            "INVALID_FIELD",
            "name",
        ),
        (
            "ApproveContext",
            pb.ApproveContextRequest(task_id=one.task_id, pins=["task:424242"]),
            NotFound,
            "PIN_NOT_FOUND",
            "pins[0]",
        ),
        (
            "PreviewContext",
            pb.PreviewContextRequest(task_id=one.task_id, budget=-1),
            InvalidArgument,
            "INVALID_FIELD",
            "budget",
        ),
    ]
    for method, request, error, reason, field in cases:
        with pytest.raises(error) as caught:
            await api(method, request)
        assert caught.value.reason == reason, (method, caught.value)
        if field:
            assert caught.value.metadata.get("field") == field, (method, caught.value.metadata)
    # Nothing was written by the refused calls.
    tasks = await api.tasks_of(project)
    assert sorted(tasks) == ["paint", "sweep"]
    links = await api("ListLinks", pb.ListLinksRequest(task_id=one.task_id))
    assert [(link.from_task, link.to_task) for link in links.incoming] == [(two.task_id, one.task_id)]
    assert not links.outgoing
    detail = await api("GetTask", pb.GetTaskRequest(task_id=one.task_id))
    assert not detail.notes


def test_the_cli_drives_a_project(stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A person's whole loop through `hearth`: add tasks with requires, see
    what is next, preview a context, run the project, list, show, rerun and
    diff runs, all with --json where a program would read it."""
    from typer.testing import CliRunner

    from hearth.cli import app
    from hearth.client import ADDRESS_ENV

    for variable in (*ADDRESS_ENV.values(), "HEARTH_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    runner = CliRunner()
    env = {"HEARTH_ORCHESTRATOR_ADDRESS": stack.addresses["orchestratord"]}

    def hearth(*args: str) -> Any:
        result = runner.invoke(app, ["--data-dir", str(tmp_path), *args], env=env)
        return result

    def as_json(*args: str) -> Any:
        result = hearth(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    index = tmp_path / "INDEX.md"
    index.write_text(INDEX)
    assert hearth("tasks", "index", "cli", "--file", str(index)).exit_code == 0
    first = as_json("tasks", "add", "cli", "outline", "--prompt", "Outline the guide.")["task"]
    second = as_json(
        "tasks", "add", "cli", "draft", "--prompt", "Draft the guide.", "--requires", first["task_id"]
    )["task"]
    listed = as_json("tasks", "list", "cli")
    assert [(t["name"], t["status"]) for t in listed] == [
        ("outline", "TASK_STATUS_READY"),
        ("draft", "TASK_STATUS_PENDING"),
    ]
    assert as_json("tasks", "next", "cli")["task"]["task_id"] == first["task_id"]
    cycle = hearth("tasks", "link", first["task_id"], second["task_id"])
    assert cycle.exit_code != 0 and "DEPENDENCY_CYCLE" in cycle.output

    preview = hearth("context", "preview", second["task_id"])
    assert preview.exit_code == 0, preview.output
    assert "index" in preview.output and "ESTIMATE" in preview.output

    ran = hearth("project", "run", "cli", "--parallel", "1")
    assert ran.exit_code == 0, ran.output
    assert "done" in ran.stdout
    runs = as_json("runs", "list", "--project", "cli")
    assert sorted(r["task_id"] for r in runs) == sorted([first["task_id"], second["task_id"]])
    draft_run = next(r for r in runs if r["task_id"] == second["task_id"])
    shown = as_json("runs", "show", draft_run["run_id"])
    assert f"task:{first['task_id']}" in [item["source"] for item in shown["bundle"]["items"]]

    rerun = as_json("runs", "rerun", draft_run["run_id"])
    assert rerun["context_hash"] == draft_run["context_hash"]
    diff = as_json("runs", "diff", draft_run["run_id"], rerun["run_id"])
    assert diff["same_prompt"] is True
    text = hearth("runs", "diff", draft_run["run_id"], rerun["run_id"])
    assert text.exit_code == 0 and "identical" in text.output

    done = as_json("tasks", "show", second["task_id"])
    assert done["task"]["status"] == "TASK_STATUS_DONE"
    assert [link["to_task"] for link in done["outgoing"]] == [first["task_id"]]

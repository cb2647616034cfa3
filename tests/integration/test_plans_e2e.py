"""End to end: plans, roles, handoffs, escalation, stats and the event log on
the real stack (NATS, PostgreSQL, the five services, one sim worker).

The manager's answers come from the sim engine's script (``sim_scripts``, a
test double of our own engine interface): ``manager-sim`` first answers a
plan naming a role that does not exist, then the fixed plan below;
``manager-broken`` always answers a plan whose requires form a cycle; the
coder's cheap model streams a few tokens and then fails (ENGINE_ERROR), so
its task escalates to the next model of the coder's chain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.client import AsyncClient, memory_filter, plan_status_name
from hearth.errors import FailedPrecondition, InvalidArgument
from orchestratord.adapters.postgres import create_engine
from orchestratord.adapters.task_store import PostgresTaskStore
from orchestratord.domain.events import WorkEvent, rebuild_views, view_differences
from tests.conftest import client_for, start_stack, stop_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT = "parser"
MODELS = ("manager-sim", "manager-broken", "coder-cheap", "coder-big", "tester-sim", "writer-sim")
PLAN = {
    "summary": "An INDEX first, then the parser, its tests and its docs.",
    "tasks": [
        {
            "key": "index",
            "name": "conventions",
            "role": "writer",
            "prompt": "Write the INDEX: conventions, layout, decisions.",
            "produces_index": True,
        },
        {"key": "code", "name": "write the parser", "role": "coder", "prompt": "Write the parser."},
        {
            "key": "test",
            "name": "test the parser",
            "role": "tester",
            "prompt": "Test the parser.",
            "requires": ["code"],
        },
        {
            "key": "docs",
            "name": "document the parser",
            "role": "writer",
            "prompt": "Document the parser.",
            "requires": ["test"],
        },
    ],
}
BAD_ROLE = json.dumps({"tasks": [{"key": "a", "name": "hack", "role": "hacker", "prompt": "Hack it."}]})
CYCLE = json.dumps(
    {
        "tasks": [
            {"key": "a", "name": "a", "role": "coder", "prompt": "A.", "requires": ["b"]},
            {"key": "b", "name": "b", "role": "tester", "prompt": "B.", "requires": ["a"]},
        ]
    }
)
CODER_PROMPT = "You write small, careful code."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("stack-plans")
    models_file = folder / "models.yaml"
    models_file.write_text(
        yaml.safe_dump(
            {
                "roles": {
                    "manager": {"models": ["manager-sim"]},
                    "coder": {
                        "models": ["coder-cheap", "coder-big"],
                        "system_prompt": CODER_PROMPT,
                        "context": {"budget": 1024},
                    },
                    "tester": {
                        "models": ["tester-sim"],
                        "context": {"tiers": ["index", "required"]},
                        "tools": [],
                    },
                    "writer": ["writer-sim"],
                    "default": ["writer-sim"],
                }
            }
        )
    )
    config = {
        "models": [{"name": name, "engine": "sim", "context_length": 8192} for name in MODELS],
        "models_file": str(models_file),
        "orchestrator": {"task_max_tokens": 24},
        "memory": {"compaction_summary_max_tokens": 24},
        "worker": {
            "engine": "sim",
            "model": "writer-sim",
            "loadable_models": [m for m in MODELS if m != "writer-sim"],
            "sim_decode_seconds_per_step": 0.002,
            "sim_scripts": {
                "manager-sim": [
                    {"reply": f"Here is the plan:\n{BAD_ROLE}"},
                    {"reply": json.dumps(PLAN, indent=1)},
                ],
                "manager-broken": [{"reply": CYCLE}],
                "coder-cheap": [{"reply": "def parse(text): return", "fail": "ENGINE_ERROR"}],
            },
        },
    }
    stack = start_stack(folder, config)
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


def cli(stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from typer.testing import CliRunner

    from hearth.cli import app
    from hearth.client import ADDRESS_ENV

    for variable in (*ADDRESS_ENV.values(), "HEARTH_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    runner = CliRunner()
    env = {"HEARTH_ORCHESTRATOR_ADDRESS": stack.addresses["orchestratord"], "COLUMNS": "200"}

    async def hearth(*args: str) -> Any:
        # In a thread: the CLI runs its own event loop (asyncio.run).
        return await asyncio.to_thread(runner.invoke, app, ["--data-dir", str(tmp_path), *args], env=env)

    return hearth


async def test_roles_list_their_policies_and_the_model_the_router_would_pick(client: AsyncClient) -> None:
    roles = {role.name: role for role in await client.list_roles()}
    assert {"manager", "coder", "tester", "researcher", "writer", "default"} <= set(roles)
    coder = roles["coder"]
    assert list(coder.models) == ["coder-cheap", "coder-big"] and coder.system_prompt == CODER_PROMPT
    assert coder.context_budget == 1024 and coder.any_tool and coder.builtin and coder.configured
    assert coder.route.chosen_target == "coder-cheap" and coder.route.reason == "ROLE_DEFAULT"
    assert list(coder.route.chain)[:2] == ["coder-cheap", "coder-big"]
    tester = roles["tester"]
    assert list(tester.context_tiers) == ["index", "required"] and not tester.any_tool and not tester.tools
    assert tester.route.chosen_target == "tester-sim"
    assert roles["manager"].route.chosen_target == "manager-sim"
    # A built-in role the models file leaves alone runs on the default role's models.
    researcher = roles["researcher"]
    assert not researcher.configured and researcher.system_prompt.startswith("You are the researcher")
    assert researcher.route.chosen_target == "writer-sim" and researcher.route.reason
    assert roles["default"].is_default


async def test_a_plan_is_retried_with_its_errors_approved_and_run_by_each_role(
    client: AsyncClient, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = await client.propose_plan(PROJECT, "A parser with tests and docs", agent="ana")
    assert plan_status_name(plan.status) == "draft"
    # The first answer named a role that does not exist; the second one was the plan.
    assert [a.status for a in plan.attempts] == ["invalid", "valid"]
    assert any("tasks[0].role: 'hacker' is not one of" in e for e in plan.attempts[0].errors)
    assert [t.key for t in plan.draft.tasks] == ["index", "code", "test", "docs"]
    assert all(a.model == "manager-sim" and a.job_id for a in plan.attempts)
    # The retry sent the errors back to the manager, after its answer.
    retry = await client.get_job(plan.attempts[1].job_id)
    assert [m.role for m in retry.spec.messages] == ["system", "user", "assistant", "user"]
    assert retry.spec.messages[2].content.endswith(BAD_ROLE)
    assert "tasks[0].role: 'hacker'" in retry.spec.messages[3].content
    assert retry.spec.role == "manager"

    # An edit a plan would refuse is refused with the path; a good one bumps the revision.
    with pytest.raises(InvalidArgument) as bad:
        await client.edit_plan(plan.plan_id, {"tasks": [{**PLAN["tasks"][1], "requires": ["nope"]}]})
    assert bad.value.reason == "PLAN_INVALID" and bad.value.metadata["field"] == "draft.tasks[0].requires[0]"
    hearth = cli(stack, tmp_path, monkeypatch)
    edited = await hearth(
        "plan", "edit", str(plan.plan_id), "--set", "docs.priority=2", "--agent", "ana", "--json"
    )
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.stdout)["revision"] == 1
    shown = await hearth("plan", "show", str(plan.plan_id))
    assert shown.exit_code == 0 and "attempt 1: invalid on manager-sim" in shown.stdout
    assert "writes the INDEX" in shown.stdout

    approved = await client.approve_plan(plan.plan_id, revision=1, agent="ana")
    ids = dict(approved.plan.task_ids)
    assert plan_status_name(approved.plan.status) == "approved" and approved.plan.decided_by == "ana"
    assert approved.plan.index_task_id == ids["index"]
    assert sorted((link.from_task, link.to_task) for link in approved.links) == sorted(
        [(ids["code"], ids["index"]), (ids["test"], ids["code"]), (ids["docs"], ids["test"])]
    )
    tasks = {t.name: t for t in approved.tasks}
    assert {t.role for t in approved.tasks} == {"writer", "coder", "tester"}
    assert tasks["conventions"].status == pb.TASK_STATUS_READY
    assert tasks["write the parser"].status == pb.TASK_STATUS_PENDING
    assert tasks["document the parser"].priority == 2
    with pytest.raises(FailedPrecondition) as again:
        await client.approve_plan(plan.plan_id, agent="ana")
    assert again.value.reason == "PLAN_NOT_DRAFT"

    updates = [u async for u in client.run_project(PROJECT, parallelism=2, agent="ana")]
    summary = updates[-1].summary
    assert (summary.done, summary.failed, summary.blocked, summary.not_run) == (4, 0, 0, 0)

    runs = {run.run_id: run for run in await client.list_runs(project_id=PROJECT)}
    by_task: dict[int, list[pb.Run]] = {}
    for run in sorted(runs.values(), key=lambda r: r.run_id):
        by_task.setdefault(run.task_id, []).append(run)
    final = {key: by_task[task_id][-1] for key, task_id in ids.items()}
    # Dependency order: each task started after the tasks it requires ended.
    for later, earlier in (("code", "index"), ("test", "code"), ("docs", "test")):
        assert final[later].start_time.ToNanoseconds() >= final[earlier].end_time.ToNanoseconds()
    # Each task ran on its role's model, with its role's system prompt.
    assert final["index"].model == "writer-sim" and final["docs"].model == "writer-sim"
    assert final["test"].model == "tester-sim"
    assert final["code"].role == "coder" and final["code"].system_prompt == CODER_PROMPT
    code_job = await client.get_job(final["code"].job_id)
    assert code_job.spec.messages[0].role == "system" and code_job.spec.messages[0].content == CODER_PROMPT

    # The coder's task failed on the cheap local model and escalated once, to the next of its chain.
    failed, escalated = by_task[ids["code"]]
    assert (failed.status, failed.model, failed.end_reason) == ("failed", "coder-cheap", "ENGINE_ERROR")
    assert (escalated.status, escalated.model, escalated.escalated_from) == (
        "done",
        "coder-big",
        failed.run_id,
    )
    assert (escalated.escalation.from_target, escalated.escalation.to_target) == ("coder-cheap", "coder-big")
    assert escalated.escalation.cause == "ENGINE_ERROR"
    assert escalated.context_hash == failed.context_hash
    notes = (await client.get_task(ids["code"])).notes
    assert any("escalated to coder-big" in n.text for n in notes)

    # The root task's output is the project's INDEX, the first item of every later bundle.
    project = await client.get_project(PROJECT)
    assert project.index_document == final["index"].output and project.index_document
    code_bundle = (await client.get_run(final["code"].run_id)).bundle
    used = [item for item in code_bundle.items if item.fate == "included"]
    assert used[0].source == "index" and used[0].text == project.index_document
    assert f"task:{ids['index']}" not in {item.source for item in used}  # not twice
    assert code_bundle.budget <= 1024  # the coder role's budget

    # The tester's bundle has the coder's output and memoryd's handoff summary of it.
    test_bundle = (await client.get_run(final["test"].run_id)).bundle
    sources = [item.source for item in test_bundle.items if item.fate == "included"]
    assert sources == ["index", f"task:{ids['code']}", f"handoff:{ids['code']}"]
    handoff = next(item for item in test_bundle.items if item.source == f"handoff:{ids['code']}")
    assert (handoff.kind, handoff.tier) == ("handoff", "required") and "coder -> tester" in handoff.title
    scope = f"handoff:{ids['code']}:{ids['test']}:{final['code'].run_id}"
    summaries, _ = await client.memory_list(memory_filter(PROJECT, task_id=scope, kinds=["handoff_summary"]))
    assert [m.text for m in summaries] == [handoff.text]
    assert dict(summaries[0].labels)["from_role"] == "coder"
    docs_bundle = (await client.get_run(final["docs"].run_id)).bundle
    assert f"handoff:{ids['test']}" in {item.source for item in docs_bundle.items if item.fate == "included"}


async def test_an_invalid_plan_fails_after_its_retries_with_the_errors_shown(
    client: AsyncClient, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FailedPrecondition) as failed:
        await client.propose_plan(
            "cyclic", "Loop forever", model="manager-broken", max_attempts=2, agent="ana"
        )
    assert failed.value.reason == "PLAN_FAILED" and failed.value.metadata["attempts"] == "2"
    assert "closes a cycle: b -> a -> b" in failed.value.message
    plan = await client.get_plan(int(failed.value.metadata["plan_id"]))
    assert plan_status_name(plan.status) == "failed" and "no valid plan after 2 attempts" in plan.reason
    assert [a.status for a in plan.attempts] == ["invalid", "invalid"]
    assert all("closes a cycle" in a.errors[0] for a in plan.attempts)

    hearth = cli(stack, tmp_path, monkeypatch)
    result = await hearth(
        "plan", "propose", "cyclic", "Loop again", "--model", "manager-broken", "--attempts", "1"
    )
    assert result.exit_code == 1, result.output
    assert "attempt 1: invalid on manager-broken" in result.stdout and "closes a cycle" in result.stdout
    assert "PLAN_FAILED" in result.stderr


async def test_a_rejected_plan_keeps_its_draft_and_the_reason(client: AsyncClient) -> None:
    plan = await client.propose_plan("side", "Something else", agent="bo")
    assert [a.status for a in plan.attempts] == ["valid"]
    rejected = await client.reject_plan(plan.plan_id, "not now", agent="bo")
    assert plan_status_name(rejected.status) == "rejected" and rejected.reason == "not now"
    assert rejected.decided_by == "bo" and len(rejected.draft.tasks) == 4
    assert [p.plan_id for p in await client.list_plans("side", "rejected")] == [plan.plan_id]
    with pytest.raises(FailedPrecondition):
        await client.approve_plan(plan.plan_id)


async def test_stats_match_the_run_records_and_hold_no_text(
    client: AsyncClient, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [r for r in await client.list_runs(project_id=PROJECT) if r.status != "running"]
    attempts = [a for p in await client.list_plans(PROJECT) for a in p.attempts]
    jobs = len(runs) + len(attempts)
    by_model = await client.stats(project_id=PROJECT, group_by="model")
    assert by_model.total.jobs == jobs
    assert by_model.total.failed == sum(r.status == "failed" for r in runs) == 1
    assert by_model.total.failure_rate == pytest.approx(1 / jobs)
    assert by_model.total.input_tokens == sum(r.input_tokens for r in runs) + sum(
        a.input_tokens for a in attempts
    )
    assert by_model.total.output_tokens == sum(r.output_tokens for r in runs) + sum(
        a.output_tokens for a in attempts
    )
    expected: dict[str, int] = {}
    for model in [r.model for r in runs] + [a.model for a in attempts]:
        expected[model] = expected.get(model, 0) + 1
    assert {row.key: row.jobs for row in by_model.rows} == expected
    ttfts = [r.time_to_first_token_seconds for r in runs if r.time_to_first_token_seconds]
    assert by_model.total.timed_jobs >= len(ttfts) > 0
    by_role = await client.stats(project_id=PROJECT, group_by="role")
    roles = {row.key: row for row in by_role.rows}
    assert roles["coder"].jobs == 2 and roles["coder"].failed == 1 and roles["manager"].jobs == 2
    assert (await client.stats(project_id=PROJECT, agent="nobody")).total.jobs == 0

    hearth = cli(stack, tmp_path, monkeypatch)
    result = await hearth("stats", "--project", PROJECT, "--by", "role", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["total"]["jobs"] == jobs and {r["key"] for r in printed["rows"]} == set(roles)
    # Privacy: no prompt and no output reaches a report.
    text = result.stdout + str(by_model) + str(by_role)
    for run in runs:
        assert run.output not in text
    assert "Write the parser." not in text and "hacker" not in text


async def test_the_views_rebuilt_from_the_event_log_equal_the_tables_and_nats_has_the_copies(
    client: AsyncClient, stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = [e async for e in client.export_events()]
    assert [e.sequence for e in exported] == list(range(1, len(exported) + 1))
    events = [
        WorkEvent(
            e.sequence, e.time.ToNanoseconds() / 1e9, e.kind, e.entity, json.loads(e.data_json),
            e.project_id, e.task_id, e.plan_id, e.run_id, e.agent,
        )
        for e in exported
    ]  # fmt: skip
    kinds = {e.kind for e in events}
    assert {"plan.proposed", "plan_attempt.recorded", "plan.drafted", "plan.edited", "plan.approved"} <= kinds
    assert {"plan.failed", "plan.rejected", "task.created", "run.started", "run.ended"} <= kinds
    url = stack.config["orchestrator"]["database_url"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_engine(url)
    try:
        views = await PostgresTaskStore(engine).read_views()
    finally:
        await engine.dispose()
    rebuilt = rebuild_views(events)
    assert view_differences(rebuilt, views) == []
    assert {key[0] for key in rebuilt.of("plan")} >= {p.plan_id for p in await client.list_plans(PROJECT)}

    # `hearth events export --since` continues where an export stopped.
    hearth = cli(stack, tmp_path, monkeypatch)
    middle = exported[len(exported) // 2].sequence
    result = await hearth("events", "export", "--since", str(middle), "--project", PROJECT)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(line["sequence"] > middle and line["project_id"] == PROJECT for line in lines)
    assert lines == sorted(lines, key=lambda line: line["sequence"])
    assert [line["sequence"] for line in lines] == [
        e.sequence for e in events if e.sequence > middle and e.project_id == PROJECT
    ]
    assert isinstance(lines[0]["data"], dict)

    # JetStream holds a copy of every event, in order.
    connection = await nats.connect(stack.config["nats_url"])
    try:
        subscription = await connection.jetstream().subscribe("hearth.events.work.>", ordered_consumer=True)
        copies: list[int] = []
        async with asyncio.timeout(60):
            while len(copies) < len(exported):
                message = await subscription.next_msg(timeout=30)
                copy = pb.WorkEvent.FromString(message.data)
                assert message.subject == f"hearth.events.work.{copy.kind}"
                copies.append(copy.sequence)
        assert copies[: len(exported)] == [e.sequence for e in exported]
    finally:
        await connection.close()

"""Plans, roles, handoffs, escalation, stats and the event fold: the pure
parts of issue 14 (orchestratord.domain.plans, roles, handoffs, stats,
events and work.escalation_of)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hearth.chat import ChatMessage
from hearth.runtime.settings import read_models_file, read_models_file_with_profiles
from orchestratord.config import Settings
from orchestratord.domain.bundles import Candidate, Fate, Tier, allocate, estimate_counter
from orchestratord.domain.events import WorkEvent, WorkViews, rebuild_views, view_differences
from orchestratord.domain.handoffs import HandoffSummary, handoff_candidate, handoff_requests
from orchestratord.domain.plans import (
    PlanDraft,
    PlanTask,
    RoleLine,
    parse_answer,
    plan_schema,
    proposal_messages,
    retry_messages,
    validate_plan,
)
from orchestratord.domain.ports import ModelFacts
from orchestratord.domain.roles import ALL_TIERS, RoleBook, RoleSettings, tiers_of
from orchestratord.domain.stats import Grouping, StatsQuery, UsageRecord, aggregate, percentile
from orchestratord.domain.tasks import RunStatus, Task, TaskInput, TaskRun, TaskStatus
from orchestratord.domain.work import escalation_of

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ROLES = ["coder", "tester", "writer"]


def plan(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": list(tasks)}


def task(key: str, role: str = "coder", **more: Any) -> dict[str, Any]:
    return {"key": key, "name": f"do {key}", "role": role, "prompt": f"Do {key}.", **more}


# --- plan validation ------------------------------------------------------------


def test_a_valid_plan_becomes_a_draft_in_order() -> None:
    draft, errors = validate_plan(
        plan(
            task("index", "writer", produces_index=True),
            task("code"),
            task("test", "tester", requires=["code"], priority=2),
        ),
        ROLES,
    )
    assert errors == []
    assert draft == PlanDraft(
        (
            PlanTask("index", "do index", "writer", "Do index.", produces_index=True),
            PlanTask("code", "do code", "coder", "Do code."),
            PlanTask("test", "do test", "tester", "Do test.", requires=("code",), priority=2),
        )
    )
    assert draft.index_task() == draft.tasks[0]
    # The JSON form round-trips.
    assert PlanDraft.from_json(json.loads(json.dumps(draft.to_json()))) == draft


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (plan(task("a", "hacker")), "tasks[0].role: 'hacker' is not one of ['coder', 'tester', 'writer']"),
        (
            {"tasks": [{"key": "a", "name": "n", "role": "coder"}]},
            "tasks[0]: 'prompt' is a required property",
        ),
        (
            plan(task("a", extra=1)),
            "tasks[0]: Additional properties are not allowed ('extra' was unexpected)",
        ),
        ({"tasks": []}, "tasks: [] should be non-empty"),
        ([1, 2], "$: [1, 2] is not of type 'object'"),
        (plan(task("a b")), "tasks[0].key: 'a b' does not match"),
        (plan(task("a", requires=["b"])), "tasks[0].requires[0]: 'b' is not the key of a task of the plan"),
        (plan(task("a", requires=["a"])), "tasks[0].requires[0]: a task cannot require itself"),
        (plan(task("a"), task("a")), "tasks[1].key: 'a' is the key of tasks[0] too"),
        (
            plan(task("a", produces_index=True), task("b", produces_index=True)),
            "tasks[1].produces_index: only one task may produce the INDEX (tasks[0] does)",
        ),
        (
            plan(task("b"), task("a", produces_index=True, requires=["b"])),
            "tasks[1].requires: the task that produces the INDEX runs first, requiring nothing",
        ),
        (
            plan(task("a", requires=["c"]), task("b", requires=["a"]), task("c", requires=["b"])),
            "tasks[2].requires[0]: closes a cycle: c -> b -> a -> c (each requires the next)",
        ),
    ],
)
def test_an_invalid_plan_says_where_and_what(answer: Any, expected: str) -> None:
    draft, errors = validate_plan(answer, ROLES)
    assert draft is None
    assert any(error.startswith(expected) for error in errors), errors


def test_the_answer_may_be_fenced_or_in_prose_but_must_be_json() -> None:
    body = json.dumps(plan(task("a")))
    for text in (body, f"```json\n{body}\n```", f"Here is the plan:\n{body}\nThanks."):
        draft, errors = parse_answer(text, ROLES)
        assert errors == [] and draft is not None and draft.tasks[0].key == "a"
    assert parse_answer("no plan here", ROLES) == (None, ["$: the answer holds no JSON object"])
    draft, errors = parse_answer('{"tasks": [', ROLES)
    assert draft is None and errors[0].startswith("$: the answer is not valid JSON: Expecting value")


def test_the_proposal_prompt_is_deterministic_and_carries_roles_index_and_schema() -> None:
    roles = [RoleLine("coder", "writes code"), RoleLine("tester", "")]
    first = proposal_messages("Build a parser", "p1", "# INDEX\nsrc/", roles, "You are the manager.")
    again = proposal_messages("Build a parser", "p1", "# INDEX\nsrc/", roles, "You are the manager.")
    assert first == again
    assert [m.role for m in first] == ["system", "user"] and first[0].content == "You are the manager."
    text = first[1].content
    assert "Goal: Build a parser" in text and "Project INDEX:\n# INDEX\nsrc/" in text
    assert "- coder: writes code" in text and "- tester: no description" in text
    assert json.dumps(plan_schema(["coder", "tester"]), sort_keys=True, separators=(",", ":")) in text
    assert proposal_messages("g", "p", "", roles, "")[0].role == "user"

    retry = retry_messages(first, "{bad", ["$: the answer is not valid JSON"])
    assert retry[:2] == first
    assert retry[2] == ChatMessage("assistant", "{bad")
    assert retry[3].role == "user" and "- $: the answer is not valid JSON" in retry[3].content


# --- roles -------------------------------------------------------------------------


def test_the_five_roles_are_built_in_and_the_models_file_changes_them() -> None:
    book = RoleBook.of(
        {"coder": ["big", "small"], "reviewer": ["big"]},
        {
            "coder": RoleSettings(
                system_prompt="Code well.", context_budget=1024, tiers=("index", "required")
            ),
            "reviewer": RoleSettings(description="reviews", tools=("diff",), tools_given=True),
        },
    )
    assert {"manager", "coder", "tester", "researcher", "writer", "reviewer", "default"} <= set(book.names())
    coder = book.get("coder")
    assert coder.models == ("big", "small") and coder.system_prompt == "Code well."
    assert coder.context_budget == 1024 and coder.tiers == (Tier.INDEX, Tier.REQUIRED)
    assert coder.description == "writes and changes code" and coder.builtin and coder.configured
    assert coder.excluded_tiers() == {Tier.SIBLING, Tier.MEMORY, Tier.PINNED}
    reviewer = book.get("reviewer")
    assert reviewer.allows_tool("diff") and not reviewer.allows_tool("shell") and not reviewer.builtin
    tester = book.get("tester")
    assert tester.tools is None and tester.allows_tool("anything") and tester.tiers == ALL_TIERS
    assert tester.system_prompt.startswith("You are the tester") and not tester.configured
    # An unknown role runs as the default role does, under its own name.
    stranger = book.get("stranger")
    assert stranger.name == "stranger" and stranger.system_prompt == "" and not book.known("stranger")
    assert (
        book.get("").name == "default" and book.same_role("", "default") and not book.same_role("", "coder")
    )
    with pytest.raises(ValueError, match="unknown tier 'nope'"):
        tiers_of(["nope"])


def test_the_models_file_takes_the_long_form_of_a_role(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n  - {name: a, engine: sim}\n  - {name: b, engine: sim}\n"
        "roles:\n  coder: [a, b]\n  tester:\n    models: [b]\n    system_prompt: Test it.\n"
        "    context: {budget: 512, tiers: [index, required]}\n    tools: []\n"
    )
    _, chains, profiles = read_models_file_with_profiles(models_file)
    assert chains == {"coder": ["a", "b"], "tester": ["b"]}
    assert read_models_file(models_file)[1] == chains
    assert profiles["tester"].system_prompt == "Test it." and profiles["tester"].tools == []

    settings = Settings(
        database_url="postgresql://x/y",
        router_address="r:1",
        pool_address="p:1",
        models_file=models_file,
    )
    book = settings.role_book()
    tester = book.get("tester")
    assert tester.models == ("b",) and tester.system_prompt == "Test it." and tester.tools == ()
    assert tester.context_budget == 512 and tester.tiers == (Tier.INDEX, Tier.REQUIRED)
    # What the file leaves out keeps the built-in value.
    assert tester.description.startswith("checks the coder's work")
    assert book.get("coder").system_prompt.startswith("You are the coder")

    models_file.write_text(
        "models: [{name: a, engine: sim}]\nroles:\n  tester: {models: [a], context: {tiers: [x]}}\n"
    )
    with pytest.raises(ValueError, match=r"roles\.tester\.context\.tiers: Value error, unknown tiers x"):
        read_models_file(models_file)
    models_file.write_text("models: [{name: a, engine: sim}]\nroles:\n  tester: {models: [zz]}\n")
    with pytest.raises(ValueError, match=r"roles\.tester: unknown models zz"):
        read_models_file(models_file)


def test_a_roles_policy_leaves_tiers_out_of_the_bundle() -> None:
    candidates = [
        Candidate(Tier.INDEX, "index", "index", "INDEX", "conventions"),
        Candidate(Tier.MEMORY, "memory:1", "memory", "m", "a memory"),
    ]
    bundle = allocate(
        candidates, 100, estimate_counter(), left_out_tiers=frozenset({Tier.MEMORY}), tiers_why="policy"
    )
    assert [(i.candidate.source, i.fate, i.why) for i in bundle.items] == [
        ("index", Fate.INCLUDED, ""),
        ("memory:1", Fate.EXCLUDED, "policy"),
    ]


# --- handoffs -------------------------------------------------------------------------


def _task(task_id: int, role: str) -> Task:
    return Task(task_id, "p", f"t{task_id}", TaskStatus.DONE, TaskInput(prompt=f"task {task_id}"), role=role)


def _run(run_id: int, task_id: int, output: str = "out") -> TaskRun:
    return TaskRun(
        run_id, task_id, "p", RunStatus.DONE, "h", job_id="j", output=output, started_at=1.0, ended_at=2.0,
        started_by="ana",
    )  # fmt: skip


def test_a_handoff_is_asked_for_each_required_task_of_another_role_with_a_done_run() -> None:
    book = RoleBook.of({}, {})
    tester = _task(9, "tester")
    required = {3: _task(3, "coder"), 4: _task(4, "tester"), 5: _task(5, "coder"), 6: _task(6, "")}
    requests = handoff_requests(
        tester, required, {3: _run(30, 3, "code"), 4: _run(40, 4), 6: _run(60, 6)}, book
    )
    # 4 is the same role, 5 has no done run.
    assert [(r.from_task, r.from_role, r.to_role, r.from_run) for r in requests] == [
        (3, "coder", "tester", 30),
        (6, "default", "tester", 60),
    ]
    first = requests[0]
    assert (
        first.scope == "handoff:3:9:30" and first.from_text == "task 3\n\ncode" and first.to_text == "task 9"
    )
    assert (
        first.request_id == handoff_requests(tester, required, {3: _run(30, 3, "code")}, book)[0].request_id
    )
    assert handoff_requests(_task(7, ""), {6: _task(6, "")}, {6: _run(60, 6)}, book) == []

    candidate = handoff_candidate(HandoffSummary("m1", "what was done", "coder", "tester", 3, 30))
    assert (candidate.tier, candidate.source, candidate.kind, candidate.rank) == (
        Tier.REQUIRED,
        "handoff:3",
        "handoff",
        3.5,
    )
    # Right after its task's output, before the next task's.
    bundle = allocate(
        [
            Candidate(Tier.REQUIRED, "task:4", "output", "t4", "four", rank=4),
            candidate,
            Candidate(Tier.REQUIRED, "task:3", "output", "t3", "three", rank=3),
        ],
        100,
        estimate_counter(),
    )
    assert [i.candidate.source for i in bundle.used] == ["task:3", "handoff:3", "task:4"]


# --- escalation -------------------------------------------------------------------------


def _facts(name: str) -> ModelFacts | None:
    return {
        "small": ModelFacts("small", 2048),
        "big": ModelFacts("big", 8192),
        "cloud": ModelFacts("cloud", 8192, remote=True),
    }.get(name)


def _failed(reason: str = "ENGINE_ERROR", fallbacks: list[dict[str, str]] | None = None) -> TaskRun:
    report = {"chosen_target": "small", "fallbacks": fallbacks or []}
    return TaskRun(
        1, 1, "p", RunStatus.FAILED, "h", routing_report=report, end_reason=reason, end_message="boom"
    )


def test_a_run_failing_on_a_local_model_escalates_to_the_next_target_once() -> None:
    escalation = escalation_of(_failed(), ("small", "big", "cloud"), _facts)
    assert escalation is not None and escalation.to_json() == {
        "from_target": "small",
        "to_target": "big",
        "cause": "ENGINE_ERROR",
        "message": "boom",
    }
    # The target it failed on is the last the job walked to.
    walked = _failed(fallbacks=[{"from_target": "small", "to_target": "big"}])
    assert escalation_of(walked, ("small", "big", "cloud"), _facts).to_target == "cloud"  # type: ignore[union-attr]
    # Not on a remote model, not at the end of the chain, not when stopped or out of time, not a success.
    walked_to_cloud = _failed(fallbacks=[{"from_target": "big", "to_target": "cloud"}])
    assert escalation_of(walked_to_cloud, ("small", "big", "cloud"), _facts) is None
    assert escalation_of(_failed(), ("small",), _facts) is None
    assert escalation_of(_failed("DEADLINE_EXCEEDED"), ("small", "big"), _facts) is None
    assert escalation_of(_failed("CANCELLED"), ("small", "big"), _facts) is None
    assert escalation_of(_failed(), (), _facts) is None
    done = TaskRun(1, 1, "p", RunStatus.DONE, "h")
    assert escalation_of(done, ("small", "big"), _facts) is None


# --- stats -------------------------------------------------------------------------------

DAY = 86_400.0
T0 = 1_735_603_200.0  # 2024-12-31 00:00 UTC


def _usage(at: float, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "project_id": "p",
        "agent": "ana",
        "role": "coder",
        "model": "small",
        "started_at": at,
        "failed": False,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost": 0.5,
        "time_to_first_token": 0.1,
    }
    return UsageRecord(**{**values, **fields})


def test_stats_group_count_and_rate_the_records() -> None:
    records = [
        _usage(T0, failed=True, time_to_first_token=None),
        _usage(T0 + 10, role="", model="big", time_to_first_token=0.3),
        _usage(T0 + DAY, agent="bo", cost=1.25),
        _usage(T0 + DAY, project_id="q"),
    ]
    by_day = aggregate(records, StatsQuery(project_id="p", group_by=Grouping.DAY))
    assert [(r.key, r.jobs, r.failed) for r in by_day.rows] == [("2024-12-31", 2, 1), ("2025-01-01", 1, 0)]
    assert by_day.rows[0].failure_rate == 0.5 and by_day.rows[0].timed_jobs == 1
    assert by_day.rows[0].mean_time_to_first_token == pytest.approx(0.3)
    total = by_day.total
    assert (total.jobs, total.input_tokens, total.output_tokens, total.cost) == (3, 30, 15, 2.25)
    by_month = aggregate(records, StatsQuery(group_by=Grouping.MONTH))
    assert [(r.key, r.jobs) for r in by_month.rows] == [("2024-12", 2), ("2025-01", 2)]
    by_role = aggregate(records, StatsQuery(group_by=Grouping.ROLE, agent="ana"))
    assert [(r.key, r.jobs) for r in by_role.rows] == [("(default)", 1), ("coder", 2)]
    by_model = aggregate(records, StatsQuery(group_by=Grouping.MODEL, start=T0 + 5, end=T0 + DAY))
    assert [(r.key, r.jobs) for r in by_model.rows] == [("big", 1)]
    assert aggregate([], StatsQuery()).total.failure_rate == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile([], 0.95) is None


# --- the event fold ------------------------------------------------------------------------


def _event(sequence: int, kind: str, entity: str, data: dict[str, Any]) -> WorkEvent:
    return WorkEvent(sequence, 0.0, kind, entity, data)


def test_views_are_the_fold_of_the_events() -> None:
    events = [
        _event(1, "task.created", "task", {"id": 1, "status": "ready", "project_id": "p"}),
        _event(2, "task.created", "task", {"id": 2, "status": "ready", "project_id": "p"}),
        _event(3, "link.created", "link", {"from_task": 2, "to_task": 1, "kind": "requires"}),
        _event(4, "task.status_changed", "task", {"id": 1, "status": "done", "project_id": "p"}),
        _event(5, "link.deleted", "link", {"from_task": 2, "to_task": 1, "kind": "requires"}),
        _event(6, "task.created", "task", {"id": 3, "status": "ready", "project_id": "q"}),
    ]
    views = rebuild_views(events)
    assert views.of("task") == {
        (1,): {"id": 1, "status": "done", "project_id": "p"},
        (2,): {"id": 2, "status": "ready", "project_id": "p"},
        (3,): {"id": 3, "status": "ready", "project_id": "q"},
    }
    assert views.of("link") == {}
    assert set(views.only_projects(["p"]).of("task")) == {(1,), (2,)}
    # Folding in two halves gives the same views.
    halves = rebuild_views(events[3:], into=rebuild_views(events[:3]))
    assert view_differences(views, halves) == []
    other = rebuild_views(events[:4])
    assert view_differences(views, rebuild_views(events[:3])) == [
        "task (1,): status differ",
        "task (3,): only in the first",
        "link (2, 1, 'requires'): only in the second",
    ]
    assert view_differences(views, other) == [
        "task (3,): only in the first",
        "link (2, 1, 'requires'): only in the second",
    ]
    assert view_differences(views, WorkViews()) == [
        "task (1,): only in the first",
        "task (2,): only in the first",
        "task (3,): only in the first",
    ]
    with pytest.raises(ValueError, match="must be in sequence order"):
        rebuild_views([events[1], events[0]])
    with pytest.raises(ValueError, match="unknown entity"):
        rebuild_views([_event(1, "x.y", "x", {})])

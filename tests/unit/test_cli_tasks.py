"""``hearth tasks``, ``context``, ``project run`` and ``runs`` through typer's
CliRunner against a real grpc.aio server faking TaskService (the
:class:`~tests.unit.test_sdk_tasks.FakeTasks` of the SDK tests)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from hearth.api.tasks.v1 import tasks_pb2 as pb
from hearth.cli import app
from hearth.cli.project import run_project
from hearth.cli.session import CliSession
from hearth.client import ADDRESS_ENV, AsyncClient
from tests.unit.test_sdk_tasks import FakeTasks, TaskServer, context_hash_of

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (*ADDRESS_ENV.values(), "HEARTH_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def server() -> Iterator[TaskServer]:
    with TaskServer() as running:
        yield running


@pytest.fixture
def fake(server: TaskServer) -> FakeTasks:
    return server.tasks


@pytest.fixture
def hearth(server: TaskServer, tmp_path: Path):
    """``hearth(*args)`` runs the CLI against the fake (tables 200 columns wide)."""
    runner = CliRunner()
    env = {"HEARTH_ORCHESTRATOR_ADDRESS": server.address, "COLUMNS": "200"}

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, ["--data-dir", str(tmp_path), *args], env=env, input=input)

    return invoke


def line_with(text: str, output: str) -> str:
    return next(line for line in output.splitlines() if text in line)


def test_tasks_add_maps_every_option_and_makes_the_requires_links(hearth: Any, fake: FakeTasks) -> None:
    assert hearth("tasks", "add", "docs", "outline", "--prompt", "Outline it.").exit_code == 0
    assert hearth("tasks", "add", "docs", "facts", "--prompt", "List facts.").exit_code == 0

    result = hearth(
        "tasks", "add", "docs", "draft", "--prompt", "Write it.", "--priority", "3", "--role", "writer",
        "-m", "tiny", "--label", "team=a", "--label", "kind=doc", "--requires-approval", "--budget", "2048",
        "--requires", "1", "--requires", "2", "--agent", "ana",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    request = fake.requests("CreateTask")[-1]
    assert (request.project_id, request.name, request.prompt) == ("docs", "draft", "Write it.")
    assert (request.priority, request.role, request.model, request.context_budget) == (
        3,
        "writer",
        "tiny",
        2048,
    )
    assert dict(request.labels) == {"team": "a", "kind": "doc"} and request.requires_approval
    assert request.agent == "ana"
    links = fake.requests("CreateLink")
    assert [(r.from_task, r.to_task, r.kind, r.agent) for r in links] == [
        (3, 1, pb.LINK_KIND_REQUIRES, "ana"),
        (3, 2, pb.LINK_KIND_REQUIRES, "ana"),
    ]
    assert result.stdout.splitlines() == [
        "task 3 created: pending",
        "task 3 requires 1",
        "task 3 requires 2",
    ]


def test_tasks_add_reads_the_prompt_file_and_refuses_two_prompts(
    hearth: Any, fake: FakeTasks, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Summarise the design.\n", encoding="utf-8")

    from_file = hearth("tasks", "add", "p", "summary", "--prompt-file", str(prompt), "--json")
    from_stdin = hearth("tasks", "add", "p", "stdin", "--prompt-file", "-", input="from stdin")
    both = hearth("tasks", "add", "p", "x", "--prompt", "a", "--prompt-file", str(prompt))

    assert from_file.exit_code == 0, from_file.output
    shown = json.loads(from_file.stdout)
    assert shown["task"]["prompt"] == "Summarise the design.\n" and shown["task"]["task_id"] == "1"
    assert shown["task"]["status"] == "TASK_STATUS_READY" and shown["task"]["priority"] == 0
    assert shown["links"] == []
    assert from_stdin.exit_code == 0 and fake.requests("CreateTask")[1].prompt == "from stdin"
    assert both.exit_code == 2 and "not both" in both.stderr
    assert len(fake.requests("CreateTask")) == 2


def test_a_dependency_cycle_is_shown_as_the_cycle_and_exits_2(hearth: Any, fake: FakeTasks) -> None:
    for name in ("a", "b", "c"):
        hearth("tasks", "add", "p", name, "--prompt", name)
    hearth("tasks", "link", "1", "2")
    hearth("tasks", "link", "2", "3")

    refused = hearth("tasks", "link", "3", "1", "--kind", "requires")
    refused_on_add = hearth("tasks", "add", "q", "d", "--prompt", "d", "--requires", "1")

    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert lines[0] == "error: DEPENDENCY_CYCLE: task 3 requiring 1 would close a cycle"
    assert lines[1] == "cycle: 3 → 1 → 2 → 3 (each task requires the next)"
    assert refused.stdout == ""
    assert len(fake.links) == 2
    # Task 4 is in project q: the fake refuses the link across projects, after creating it.
    assert refused_on_add.exit_code == 2
    assert "task 4 was created, but its link to task 1 was refused:" in refused_on_add.stderr
    assert "error: CROSS_PROJECT_LINK" in refused_on_add.stderr


def test_tasks_link_kinds_unlink_and_json(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "a", "--prompt", "a")
    hearth("tasks", "add", "p", "b", "--prompt", "b")

    linked = hearth("tasks", "link", "1", "2", "--kind", "relates_to", "--agent", "ana")
    again = hearth("tasks", "link", "1", "2", "--kind", "relates_to", "--json")
    unlinked = hearth("tasks", "unlink", "1", "2", "--kind", "relates_to")
    missing = hearth("tasks", "unlink", "1", "2")
    bad_kind = hearth("tasks", "link", "1", "2", "--kind", "blocks")

    assert linked.stdout.strip() == "task 1 relates_to 2"
    assert fake.requests("CreateLink")[0].kind == pb.LINK_KIND_RELATES_TO
    shown = json.loads(again.stdout)
    assert shown["existed"] is True and shown["link"]["kind"] == "LINK_KIND_RELATES_TO"
    assert unlinked.stdout.strip() == "removed: task 1 relates_to 2"
    assert fake.requests("DeleteLink")[0].kind == pb.LINK_KIND_RELATES_TO
    assert missing.exit_code == 2 and missing.stderr.startswith("error: LINK_NOT_FOUND: ")
    assert fake.requests("DeleteLink")[1].kind == pb.LINK_KIND_REQUIRES
    assert bad_kind.exit_code == 2 and len(fake.requests("CreateLink")) == 2


def test_tasks_list_is_a_table_filtered_by_status(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "base", "--prompt", "x", "--priority", "1")
    hearth("tasks", "add", "p", "top", "--prompt", "y", "--requires", "1")
    hearth("tasks", "block", "1", "--reason", "needs review", "--agent", "ana")

    table = hearth("tasks", "list", "p")
    blocked = hearth("tasks", "list", "p", "--status", "blocked", "--json")
    empty = hearth("tasks", "list", "p", "--status", "done")

    assert table.exit_code == 0, table.output
    header = line_with("status", table.stdout).split()
    assert header == ["id", "status", "priority", "name", "reason"]
    assert line_with("base", table.stdout).split() == [
        "1",
        "blocked",
        "1",
        "base",
        "held",
        "by",
        "ana:",
        "needs",
        "review",
    ]
    assert line_with("top", table.stdout).split() == ["2", "pending", "0", "top"]
    assert fake.requests("ListTasks")[1].status == pb.TASK_STATUS_BLOCKED
    assert [t["name"] for t in json.loads(blocked.stdout)] == ["base"]
    assert empty.exit_code == 0 and empty.stdout == "" and "no tasks" in empty.stderr


def test_tasks_next_names_the_ready_task_or_says_nothing_ready_with_reasons(hearth: Any) -> None:
    hearth("tasks", "add", "p", "first", "--prompt", "fail")
    hearth("tasks", "add", "p", "second", "--prompt", "y", "--requires", "1")

    ready = hearth("tasks", "next", "p")
    hearth("tasks", "run", "1")
    nothing = hearth("tasks", "next", "p")
    as_json = hearth("tasks", "next", "p", "--json")

    assert ready.exit_code == 0 and ready.stdout.strip() == "task 1  first  (priority 0)"
    assert nothing.exit_code == 0, nothing.output
    assert nothing.stdout.splitlines() == [
        "nothing ready",
        "blocked (1):",
        "  task 2 second: task 2 waits for 1, which failed: CONTEXT_TOO_LONG",
    ]
    shown = json.loads(as_json.stdout)
    assert "task" not in shown and [t["task_id"] for t in shown["blocked"]] == ["2"]


def test_tasks_note_done_block_and_release(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "a", "--prompt", "x")
    hearth("tasks", "add", "p", "b", "--prompt", "y")

    noted = hearth("tasks", "note", "1", "halfway there", "--agent", "ana")
    held = hearth("tasks", "block", "2", "--reason", "waiting on legal")
    released = hearth("tasks", "block", "2", "--release", "--agent", "bo")
    neither = hearth("tasks", "block", "2")
    done = hearth("tasks", "done", "1", "--reason", "written by hand")
    failed = hearth("tasks", "done", "2", "--status", "failed", "--reason", "gave up", "--json")
    closed_twice = hearth("tasks", "done", "1")

    assert noted.stdout.strip() == "note 1 added to task 1" and fake.notes[0].agent == "ana"
    assert held.stdout.strip() == "task 2 held; now blocked: held by a person: waiting on legal"
    assert released.stdout.strip() == "task 2 released; now ready"
    assert fake.requests("ReleaseTask")[0].agent == "bo"
    assert neither.exit_code == 2 and len(fake.requests("HoldTask")) == 1
    assert done.stdout.strip() == "task 1 done: written by hand"
    closes = fake.requests("CloseTask")
    assert [(c.status, c.reason) for c in closes[:2]] == [
        (pb.TASK_STATUS_DONE, "written by hand"),
        (pb.TASK_STATUS_FAILED, "gave up"),
    ]
    assert json.loads(failed.stdout)["status"] == "TASK_STATUS_FAILED"
    assert (
        closed_twice.exit_code == 2 and closed_twice.stderr.strip() == "error: TASK_CLOSED: task 1 is closed"
    )


def test_tasks_show_has_the_task_notes_links_and_runs(hearth: Any) -> None:
    hearth("tasks", "add", "p", "base", "--prompt", "x")
    hearth("tasks", "add", "p", "top", "--prompt", "hello", "--requires", "1", "--label", "team=a")
    hearth("tasks", "done", "1")
    hearth("tasks", "note", "2", "check the tone")
    hearth("tasks", "run", "2")

    shown = hearth("tasks", "show", "2")
    as_json = hearth("tasks", "show", "2", "--json")
    missing = hearth("tasks", "show", "9")

    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert line_with("status", out).split() == ["status", "done"]
    assert line_with("labels", out).split() == ["labels", "team=a"]
    assert line_with("prompt", out).split() == ["prompt", "hello"]
    assert "notes (1):" in out and "  #1: check the tone" in out
    assert "links (1):" in out and "  task 2 requires 1" in out
    assert "runs (1, newest first):" in out
    assert line_with("52 in, 5 out", out).split()[:4] == ["1", "2", "done", "tiny"]
    detail = json.loads(as_json.stdout)
    assert [r["run_id"] for r in detail["runs"]] == ["1"] and detail["outgoing"][0]["to_task"] == "1"
    assert missing.exit_code == 2 and missing.stderr.strip() == "error: TASK_NOT_FOUND: no task 9"


def test_tasks_run_prints_the_run_and_exits_1_when_it_failed(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "good", "--prompt", "hello")
    hearth("tasks", "add", "p", "bad", "--prompt", "fail")

    good = hearth("tasks", "run", "1", "--agent", "ana")
    bad = hearth("tasks", "run", "2")
    as_json = hearth("tasks", "run", "1", "--json")

    assert good.exit_code == 0, good.output
    assert line_with("status", good.stdout).split() == ["status", "done"]
    assert line_with("output", good.stdout).split() == ["output", "out:", "hello"]
    assert line_with("model", good.stdout).split() == ["model", "tiny", "(sim)"]
    assert fake.requests("RunTask")[0].agent == "ana"
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (
        "error: run 2 of task 2 failed: CONTEXT_TOO_LONG: the prompt is 9000 tokens, the model takes 4096"
    )
    # Task 1 is done now: running it again is refused by the server.
    assert as_json.exit_code == 2 and "TASK_NOT_READY" in as_json.stderr


def test_tasks_index_sets_and_prints_the_index(hearth: Any, fake: FakeTasks, tmp_path: Path) -> None:
    hearth("tasks", "add", "p", "a", "--prompt", "x")
    index = tmp_path / "INDEX.md"
    index.write_text("# Conventions\nUse British spelling.\n", encoding="utf-8")

    empty = hearth("tasks", "index", "p")
    from_file = hearth("tasks", "index", "p", "--file", str(index), "--agent", "ana")
    printed = hearth("tasks", "index", "p")
    from_text = hearth("tasks", "index", "p", "--text", "short", "--json")

    assert empty.exit_code == 0 and empty.stdout == "" and "has no INDEX" in empty.stderr
    assert from_file.stdout.strip() == "INDEX of project p set (36 characters)"
    assert fake.requests("SetProjectIndex")[0].agent == "ana"
    assert printed.stdout == "# Conventions\nUse British spelling.\n\n"
    assert json.loads(from_text.stdout)["index_document"] == "short"


def test_context_preview_is_a_table_with_totals_the_counter_and_the_hash(
    hearth: Any, fake: FakeTasks
) -> None:
    hearth("tasks", "add", "p", "base", "--prompt", "x")
    hearth("tasks", "add", "p", "top", "--prompt", "Write it.", "--requires", "1")

    preview = hearth("context", "preview", "2", "--budget", "512", "--prompt")
    as_json = hearth("context", "preview", "2", "--json")

    assert preview.exit_code == 0, preview.output
    out = preview.stdout
    assert line_with("tier", out).split() == ["#", "tier", "source", "kind", "tokens", "fate", "why"]
    assert line_with("task:1", out).split() == [
        "2",
        "required",
        "task:1",
        "output",
        "40",
        "summarised",
        "over",
        "budget:",
        "summarised",
    ]
    assert line_with("memory:m1", out).split()[:6] == ["3", "memory", "memory:m1", "memory", "900", "dropped"]
    assert "total: 52 tokens of a budget of 512; 2 items used, 1 left out" in out
    assert line_with("counter:", out).startswith("counter: ESTIMATE")
    assert f"context hash: {context_hash_of(2)}" in out
    assert out.endswith("prompt:\nINDEX\n\nWrite it.\n")
    assert fake.requests("PreviewContext")[0].budget == 512
    bundle = json.loads(as_json.stdout)
    assert bundle["counter"] == "estimate" and bundle["exact"] is False and len(bundle["items"]) == 3


def test_context_approve_sends_pins_and_excludes(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "base", "--prompt", "x")
    hearth("tasks", "add", "p", "gated", "--prompt", "y", "--requires-approval")

    approved = hearth(
        "context", "approve", "2", "--pin", "task:1", "--exclude", "memory:m1", "--agent", "ana"
    )
    missing_pin = hearth("context", "approve", "2", "--pin", "task:99")

    assert approved.exit_code == 0, approved.output
    request = fake.requests("ApproveContext")[0]
    assert (list(request.pins), list(request.excludes), request.agent) == (["task:1"], ["memory:m1"], "ana")
    assert approved.stdout.splitlines()[0] == "task 2 approved: ready"
    assert line_with("memory:m1", approved.stdout).split()[5] == "excluded"
    assert line_with("pin:task:1", approved.stdout).split()[1] == "pinned"
    assert missing_pin.exit_code == 2 and missing_pin.stderr.startswith("error: PIN_NOT_FOUND: ")


def test_project_run_prints_progress_on_stderr_and_the_summary_with_exit_1_on_failure(
    hearth: Any, fake: FakeTasks
) -> None:
    hearth("tasks", "add", "p", "outline", "--prompt", "fail")
    hearth("tasks", "add", "p", "draft", "--prompt", "y", "--requires", "1")
    hearth("tasks", "add", "p", "aside", "--prompt", "z", "--priority", "5")

    result = hearth(
        "project", "run", "p", "--strategy", "priority", "--parallel", "2", "--continue-on-failure"
    )

    assert result.exit_code == 1, result.output
    request = fake.requests("RunProject")[0]
    assert (request.strategy, request.parallelism, request.continue_on_failure) == (
        pb.RUN_STRATEGY_PRIORITY,
        2,
        True,
    )
    assert result.stderr.splitlines() == [
        "task 1 running (run 1): outline",
        "task 1 failed (run 1): outline [CONTEXT_TOO_LONG]",
        "task 3 running (run 2): aside",
        "task 3 done (run 2): aside",
    ]
    assert result.stdout.splitlines() == [
        "project p: 1 done, 1 failed, 1 blocked, 0 not run",
        "failed:",
        "  task 1 outline: CONTEXT_TOO_LONG",
        "blocked:",
        "  task 2 draft: task 2 waits for 1, which failed: CONTEXT_TOO_LONG",
    ]


def test_project_run_stops_at_the_first_failure_by_default_and_exits_0_when_all_done(
    hearth: Any, fake: FakeTasks
) -> None:
    hearth("tasks", "add", "p", "outline", "--prompt", "fail")
    hearth("tasks", "add", "p", "aside", "--prompt", "z", "--priority", "5")
    hearth("tasks", "add", "q", "only", "--prompt", "fine")

    stopped = hearth("project", "run", "p")
    fine = hearth("project", "run", "q", "--json")

    assert stopped.exit_code == 1
    request = fake.requests("RunProject")[0]
    assert (request.strategy, request.continue_on_failure) == (pb.RUN_STRATEGY_DAG, False)
    assert stopped.stdout.splitlines()[:2] == [
        "project p: 0 done, 1 failed, 0 blocked, 1 not run",
        "stopped at the first failure (--continue-on-failure runs what does not depend on it)",
    ]
    assert fine.exit_code == 0, fine.output
    lines = [json.loads(line) for line in fine.stdout.splitlines()]
    assert [next(iter(line)) for line in lines] == ["task", "task", "summary"]
    assert lines[1]["task"]["task"]["status"] == "TASK_STATUS_DONE" and lines[2]["summary"]["done"] == 1


async def test_project_run_on_a_terminal_redraws_a_live_table_of_every_task(server: TaskServer) -> None:
    async with AsyncClient(orchestrator=server.address) as client:
        await client.create_task("p", "outline", "x")
        await client.create_task("p", "draft", "y", priority=1)
        screen = io.StringIO()
        session = CliSession(
            data_dir=Path("."),
            out=Console(file=io.StringIO(), width=120),
            err=Console(file=screen, force_terminal=True, width=120),
        )

        code = await run_project(client, session, "p")

    drawn = screen.getvalue()
    assert code == 0
    assert "\x1b[" in drawn  # redrawn in place, not printed line by line
    assert "outline" in drawn and "draft" in drawn and "running" in drawn and "done" in drawn
    assert "task 1 running" not in drawn
    out = session.out.file.getvalue()  # type: ignore[attr-defined]
    assert out.splitlines() == ["project p: 2 done, 0 failed, 0 blocked, 0 not run"]


def test_runs_list_show_rerun_and_diff(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "a", "--prompt", "hello")
    hearth("tasks", "run", "1")

    rerun = hearth("runs", "rerun", "1", "--agent", "bo")
    listed = hearth("runs", "list", "--task", "1")
    by_project = hearth("runs", "list", "--project", "p", "--limit", "1", "--json")
    neither = hearth("runs", "list")
    shown = hearth("runs", "show", "2", "--prompt")
    diff = hearth("runs", "diff", "1", "2")
    diff_json = hearth("runs", "diff", "1", "2", "--json")

    assert rerun.exit_code == 0, rerun.output
    assert line_with("rerun of", rerun.stdout).split() == ["rerun", "of", "1"]
    assert fake.requests("RerunTask")[0].agent == "bo"
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(row[0], row[1], row[2], row[-2], row[-1]) for row in rows] == [
        ("2", "1", "done", "1", context_hash_of(1)[:12]),
        ("1", "1", "done", "-", context_hash_of(1)[:12]),
    ]
    assert [r["run_id"] for r in json.loads(by_project.stdout)] == ["2"]
    assert fake.requests("ListRuns")[1].page_size == 1
    assert neither.exit_code == 2 and "exactly one of --project and --task" in neither.stderr
    assert "context:" in shown.stdout and shown.stdout.endswith("prompt:\nINDEX\n\nhello\n")
    assert diff.exit_code == 0, diff.output
    assert diff.stdout.splitlines() == [
        "run 1 → run 2",
        f"context: the same ({context_hash_of(1)[:12]})",
        "prompt: identical",
        "engine: sim → vllm",
        "sampling: the same",
        "tokens: 52 → 52 in, 5 → 5 out",
        "output: identical",
    ]
    assert json.loads(diff_json.stdout)["serving_changes"] == {"engine": {"a": "sim", "b": "vllm"}}


def test_runs_diff_shows_changed_context_and_the_output_diff(hearth: Any, fake: FakeTasks) -> None:
    hearth("tasks", "add", "p", "a", "--prompt", "hello")
    hearth("tasks", "add", "p", "b", "--prompt", "world")
    hearth("tasks", "run", "1")
    hearth("tasks", "run", "2")

    diff = hearth("runs", "diff", "1", "2")

    assert diff.exit_code == 0, diff.output
    lines = diff.stdout.splitlines()
    assert lines[1] == f"context: different ({context_hash_of(1)[:12]} → {context_hash_of(2)[:12]})"
    assert lines[2:6] == ["  added: task:9", "  removed: -", "  changed: index", "prompt: different"]
    assert lines[-5:] == ["output: different", "--- run 1", "+++ run 2", "-out: hello", "+out: world"]

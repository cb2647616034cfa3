"""Two runs of a task side by side: context added, removed and changed by
source, prompt, serving and sampling differences, the output diff and token
counts, with and without the stored snapshots."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from orchestratord.domain.bundles import (
    Candidate,
    Tier,
    allocate,
    bundle_hash,
    bundle_to_json,
    estimate_counter,
    render_prompt,
)
from orchestratord.domain.run_diff import RunDiff, diff_runs
from orchestratord.domain.tasks import ContextSnapshot, RunStatus, TaskRun

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def snapshot(*cands: Candidate, budget: int = 1000, task_text: str = "Do it.") -> ContextSnapshot:
    """A snapshot built the way the service builds one."""
    bundle = allocate(cands, budget, estimate_counter())
    return ContextSnapshot(
        context_hash=bundle_hash(bundle),
        items=tuple(bundle_to_json(bundle)),
        budget=budget,
        counter=bundle.counter,
        exact=bundle.exact,
        prompt=render_prompt(task_text, bundle),
    )


def run(run_id: int, snap: ContextSnapshot | None = None, **fields: object) -> TaskRun:
    base = TaskRun(
        run_id=run_id,
        task_id=7,
        project_id="p",
        status=RunStatus.DONE,
        context_hash=snap.context_hash if snap else "",
        model="qwen3-8b",
        engine="vllm",
        weights_digest="sha256:aaa",
        sampling={"max_tokens": 256, "temperature": 0.0, "seed": 1},
        input_tokens=100,
        output_tokens=20,
        output="line 1\nline 2\nline 3\n",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


INDEX = Candidate(Tier.INDEX, "index", "index", "INDEX", "Layout and decisions.")
REQ_9 = Candidate(Tier.REQUIRED, "task:9", "output", "Write the queue", "The queue is done.")
MEMORY_A = Candidate(Tier.MEMORY, "memory:a", "memory", "", "A fact.")
MEMORY_B = Candidate(Tier.MEMORY, "memory:b", "memory", "", "Another fact.")
HUGE = Candidate(Tier.SIBLING, "task:3", "sibling", "", "x" * 8000)


def test_a_faithful_rerun_has_no_differences() -> None:
    snap = snapshot(INDEX, REQ_9, MEMORY_A)
    diff = diff_runs(run(1, snap), snap, run(2, snap, rerun_of=1), snap)
    assert diff == RunDiff(
        run_ids=(1, 2),
        task_ids=(7, 7),
        context_hashes=(snap.context_hash, snap.context_hash),
        context_known=True,
        same_prompt=True,
        same_output=True,
        input_tokens=(100, 100),
        output_tokens=(20, 20),
    )
    assert diff.same_context
    assert diff.serving_changes == {} and diff.sampling_changes == {}


def test_context_items_added_removed_and_changed_by_source() -> None:
    snap_a = snapshot(INDEX, REQ_9, MEMORY_A)
    new_output = Candidate(Tier.REQUIRED, "task:9", "output", "Write the queue", "The queue is rewritten.")
    snap_b = snapshot(INDEX, new_output, MEMORY_B)
    diff = diff_runs(run(1, snap_a), snap_a, run(2, snap_b), snap_b)
    assert diff.context_known
    assert diff.context_added == ("memory:b",)
    assert diff.context_removed == ("memory:a",)
    assert diff.context_changed == ("task:9",)
    assert diff.same_prompt is False
    assert not diff.same_context


def test_items_left_out_are_not_context() -> None:
    # b also had a candidate, dropped as too big: it used the same items as a.
    snap_a = snapshot(INDEX, REQ_9, budget=100)
    snap_b = snapshot(INDEX, REQ_9, HUGE, budget=100)
    assert any(i["fate"] == "dropped" for i in snap_b.items)
    diff = diff_runs(run(1, snap_a), snap_a, run(2, snap_b), snap_b)
    assert (diff.context_added, diff.context_removed, diff.context_changed) == ((), (), ())
    assert diff.same_context and diff.same_prompt


def test_a_summary_instead_of_the_full_text_is_a_change() -> None:
    with_summary = replace(REQ_9, text="y" * 4000, summary="The queue, in short.")
    snap_a = snapshot(INDEX, with_summary, budget=5000)
    snap_b = snapshot(INDEX, with_summary, budget=100)
    diff = diff_runs(run(1, snap_a), snap_a, run(2, snap_b), snap_b)
    assert diff.context_changed == ("task:9",)
    assert diff.context_added == diff.context_removed == ()


def test_the_same_context_with_another_task_text_is_another_prompt() -> None:
    snap_a = snapshot(INDEX, task_text="Do it.")
    snap_b = snapshot(INDEX, task_text="Do it again.")
    diff = diff_runs(run(1, snap_a), snap_a, run(2, snap_b), snap_b)
    assert diff.same_context
    assert diff.same_prompt is False


def test_without_both_snapshots_only_the_hashes_compare() -> None:
    snap = snapshot(INDEX, REQ_9)
    other = snapshot(INDEX)
    diff = diff_runs(run(1, snap), snap, run(2, snap), None)
    assert not diff.context_known
    assert diff.same_prompt is None
    assert diff.same_context
    assert (diff.context_added, diff.context_removed, diff.context_changed) == ((), (), ())
    diff = diff_runs(run(1, snap), None, run(2, other), None)
    assert not diff.same_context and not diff.context_known


def test_serving_and_sampling_differences_per_key() -> None:
    a = run(1)
    b = run(
        2,
        model="qwen3-14b",
        engine="vllm",
        weights_digest="sha256:bbb",
        sampling={"max_tokens": 256, "temperature": 0.7, "top_p": 0.9},
    )
    diff = diff_runs(a, None, b, None)
    assert diff.serving_changes == {
        "model": ("qwen3-8b", "qwen3-14b"),
        "weights_digest": ("sha256:aaa", "sha256:bbb"),
    }
    # seed was only set in a, top_p only in b; max_tokens is the same.
    assert diff.sampling_changes == {"seed": (1, None), "temperature": (0.0, 0.7), "top_p": (None, 0.9)}
    assert list(diff.sampling_changes) == ["seed", "temperature", "top_p"]


def test_equal_numbers_are_equal_sampling() -> None:
    diff = diff_runs(run(1, sampling={"temperature": 1}), None, run(2, sampling={"temperature": 1.0}), None)
    assert diff.sampling_changes == {}


def test_the_output_diff_is_unified_with_a_few_lines_of_context() -> None:
    before = "".join(f"line {n}\n" for n in range(1, 21))
    after = before.replace("line 10\n", "line ten\n")
    diff = diff_runs(run(3, output=before), None, run(4, output=after), None)
    assert not diff.same_output
    assert diff.output_diff.splitlines() == [
        "--- run 3",
        "+++ run 4",
        "@@ -7,7 +7,7 @@",
        " line 7",
        " line 8",
        " line 9",
        "-line 10",
        "+line ten",
        " line 11",
        " line 12",
        " line 13",
    ]


def test_a_trailing_newline_alone_still_shows_in_the_diff() -> None:
    diff = diff_runs(run(1, output="done\n"), None, run(2, output="done"), None)
    assert not diff.same_output
    assert diff.output_diff != ""
    assert "-" in diff.output_diff.splitlines()  # the empty last line a had


def test_token_counts_are_reported_for_both_runs() -> None:
    diff = diff_runs(
        run(1, input_tokens=120, output_tokens=30), None, run(2, input_tokens=90, output_tokens=45), None
    )
    assert (diff.input_tokens, diff.output_tokens) == ((120, 90), (30, 45))


def test_to_json_is_plain_json_with_every_point() -> None:
    snap_a = snapshot(INDEX, MEMORY_A)
    snap_b = snapshot(INDEX, MEMORY_B)
    a = run(1, snap_a)
    b = run(
        2, snap_b, engine="llama.cpp", output="line 1\n", sampling={"max_tokens": 256, "temperature": 0.0}
    )
    data = diff_runs(a, snap_a, b, snap_b).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["runs"] == {"a": 1, "b": 2}
    assert data["tasks"] == {"a": 7, "b": 7}
    assert data["context"] == {
        "hashes": {"a": snap_a.context_hash, "b": snap_b.context_hash},
        "same": False,
        "known": True,
        "added": ["memory:b"],
        "removed": ["memory:a"],
        "changed": [],
    }
    assert data["same_prompt"] is False
    assert data["serving_changes"] == {"engine": {"a": "vllm", "b": "llama.cpp"}}
    assert data["sampling_changes"] == {"seed": {"a": 1, "b": None}}
    assert data["same_output"] is False
    assert isinstance(data["output_diff"], str) and data["output_diff"].startswith("--- run 1\n+++ run 2\n")
    assert data["input_tokens"] == {"a": 100, "b": 100}
    assert data["output_tokens"] == {"a": 20, "b": 20}

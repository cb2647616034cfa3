"""The task graph: a requires cycle is found and reported as a path, tasks are
ordered after what they require with deterministic ties, and classify()
derives ready / pending / blocked with reasons that name the chain down to
the root cause."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestratord.domain.tasks import (
    Classification,
    Task,
    TaskInput,
    TaskStatus,
    classify,
    find_cycle,
    topological_order,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

P, R, B = TaskStatus.PENDING, TaskStatus.READY, TaskStatus.BLOCKED
DONE, FAILED, CANCELLED = TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED
RUNNING, WAITING = TaskStatus.RUNNING, TaskStatus.WAITING_APPROVAL


def task(task_id: int, status: TaskStatus = P, **fields: Any) -> Task:
    return Task(
        task_id=task_id, project_id="p", name=f"t{task_id}", status=status, input=TaskInput("x"), **fields
    )


def keys(*ids: int) -> dict[int, tuple[int, ...]]:
    return {i: (0, i) for i in ids}


def is_acyclic(nodes: set[int], edges: list[tuple[int, int]]) -> bool:
    try:
        topological_order(nodes, edges, keys(*nodes))
    except ValueError:
        return False
    return True


# --- find_cycle -------------------------------------------------------------


def test_the_cycle_is_reported_from_the_new_edge_round_to_its_start() -> None:
    assert find_cycle([(5, 7), (7, 3)], (3, 5)) == [3, 5, 7, 3]


def test_a_self_link_is_a_cycle_of_one() -> None:
    assert find_cycle([], (4, 4)) == [4, 4]
    assert find_cycle([(4, 5)], (4, 4)) == [4, 4]


def test_a_two_task_cycle() -> None:
    assert find_cycle([(2, 1)], (1, 2)) == [1, 2, 1]


def test_a_long_cycle_is_reported_whole_and_in_order() -> None:
    chain = [(i, i + 1) for i in range(1, 40)]  # 1 requires 2 ... 39 requires 40
    assert find_cycle(chain, (40, 1)) == [40, *range(1, 41)]


def test_edges_that_keep_the_graph_acyclic_are_not_cycles() -> None:
    diamond = [(1, 2), (1, 3), (2, 4), (3, 4)]
    # Another path to a task already reachable is no cycle.
    assert find_cycle(diamond, (1, 4)) is None
    assert find_cycle(diamond, (2, 3)) is None
    assert find_cycle(diamond, (5, 1)) is None
    # An edge that exists already, in the same direction.
    assert find_cycle(diamond, (2, 4)) is None
    # 13 reaches 10, 11 and 12, none of which reaches back to 13; the
    # opposite edge would close a cycle.
    assert find_cycle([(10, 11), (11, 12), (13, 10)], (13, 12)) is None
    assert find_cycle([(10, 11), (11, 12), (13, 10)], (12, 13)) == [12, 13, 10, 11, 12]


def test_the_shortest_cycle_is_reported_and_ties_go_to_lower_ids() -> None:
    # From 2 back to 1: via 9 (two steps) or via 3, 4 (three steps).
    edges = [(2, 3), (3, 4), (4, 1), (2, 9), (9, 1)]
    assert find_cycle(edges, (1, 2)) == [1, 2, 9, 1]
    # Two paths of the same length: the one through the lower id, whatever
    # order the edges came in.
    edges = [(2, 8), (8, 1), (2, 6), (6, 1)]
    assert find_cycle(edges, (1, 2)) == [1, 2, 6, 1]
    assert find_cycle(list(reversed(edges)), (1, 2)) == [1, 2, 6, 1]


def test_find_cycle_accepts_any_iterable_once() -> None:
    edges = iter([(5, 7), (7, 3)])
    assert find_cycle(edges, (3, 5)) == [3, 5, 7, 3]


graphs = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=20).map(
    lambda edges: [e for e in edges if e[0] != e[1]]
)


@settings(max_examples=300, deadline=None)
@given(edges=graphs, new=st.tuples(st.integers(0, 7), st.integers(0, 7)))
def test_a_reported_cycle_is_real_and_none_means_acyclic(
    edges: list[tuple[int, int]], new: tuple[int, int]
) -> None:
    # Only graphs that are acyclic now: that is what the service keeps.
    nodes = {n for e in edges for n in e} | set(new)
    if not is_acyclic(nodes, edges):
        return
    cycle = find_cycle(edges, new)
    if cycle is None:
        assert is_acyclic(nodes, [*edges, new])
        return
    assert cycle[0] == cycle[-1] == new[0]
    assert cycle[1] == new[1]
    assert not is_acyclic(nodes, [*edges, new])
    # Every step is the new edge or an existing one, and no task repeats.
    steps = list(pairwise(cycle))
    assert steps[0] == new
    assert all(step in edges for step in steps[1:])
    assert len(set(cycle[:-1])) == len(cycle) - 1
    assert find_cycle(list(reversed(edges)), new) == cycle


# --- topological_order ------------------------------------------------------


def test_required_tasks_come_first_even_against_the_key() -> None:
    # 3 requires 2 requires 1, but the key would put 3 first.
    order = topological_order([1, 2, 3], [(3, 2), (2, 1)], {1: (9,), 2: (5,), 3: (0,)})
    assert order == [1, 2, 3]


def test_free_tasks_go_by_key_and_equal_keys_by_id() -> None:
    key = {1: (1, 0.0), 2: (0, 5.0), 3: (0, 1.0), 4: (1, 0.0), 5: (0, 5.0)}
    assert topological_order([5, 4, 3, 2, 1], [], key) == [3, 2, 5, 1, 4]
    assert topological_order([1, 2, 3, 4, 5], [], key) == [3, 2, 5, 1, 4]


def test_among_ready_tasks_the_key_decides_at_every_step() -> None:
    # 10 and 20 are free; 30 requires 10. Once 10 is placed, 30 (key 0)
    # overtakes 20 (key 2).
    key = {10: (1,), 20: (2,), 30: (0,)}
    assert topological_order([10, 20, 30], [(30, 10)], key) == [10, 30, 20]


def test_a_diamond() -> None:
    edges = [(4, 2), (4, 3), (2, 1), (3, 1)]
    assert topological_order([1, 2, 3, 4], edges, {1: (0,), 2: (2,), 3: (1,), 4: (0,)}) == [1, 3, 2, 4]


def test_edges_to_other_tasks_repeats_and_duplicate_ids_are_ignored() -> None:
    edges = [(2, 1), (2, 1), (2, 99), (98, 1)]
    assert topological_order([2, 1, 2], edges, keys(1, 2)) == [1, 2]


def test_a_cycle_is_refused_naming_the_tasks_left() -> None:
    # 1 is free; 2 and 3 form a cycle; 4 waits on it.
    edges = [(2, 3), (3, 2), (4, 3)]
    with pytest.raises(ValueError, match=r"cycle; tasks left unordered: 2, 3, 4$"):
        topological_order([1, 2, 3, 4], edges, keys(1, 2, 3, 4))


def test_a_missing_key_is_named() -> None:
    with pytest.raises(KeyError, match="tasks 3"):
        topological_order([1, 3], [], keys(1))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_dag_is_ordered_and_the_order_does_not_depend_on_input_order(n: int, data: st.DataObject) -> None:
    ids = list(range(1, n + 1))
    # Edges from a higher to a lower id keep it acyclic.
    pairs = [(a, b) for a in ids for b in ids if a > b]
    edges = data.draw(st.lists(st.sampled_from(pairs), max_size=20) if pairs else st.just([]))
    key = {i: (data.draw(st.integers(0, 2)),) for i in ids}
    order = topological_order(ids, edges, key)
    assert sorted(order) == ids
    position = {t: i for i, t in enumerate(order)}
    assert all(position[to] < position[frm] for frm, to in edges)
    shuffled_ids, shuffled_edges = ids[:], edges[:]
    rnd = random.Random(n)
    rnd.shuffle(shuffled_ids)
    rnd.shuffle(shuffled_edges)
    assert topological_order(shuffled_ids, shuffled_edges, key) == order


# --- classify ---------------------------------------------------------------


def test_a_task_without_requires_is_ready() -> None:
    result = classify([task(1), task(2, R), task(3, B)], [])
    assert result == Classification(statuses={1: R, 2: R, 3: R}, reasons={})


def test_a_task_is_ready_once_everything_it_requires_is_done() -> None:
    tasks = [task(1, DONE), task(2, DONE), task(3)]
    assert classify(tasks, [(3, 1), (3, 2)]).statuses == {3: R}


def test_partial_completion_keeps_a_task_pending() -> None:
    tasks = [task(1, DONE), task(2, RUNNING), task(3, WAITING), task(4), task(5), task(6), task(7)]
    edges = [(5, 1), (5, 2), (6, 1), (6, 3), (7, 1), (7, 4)]
    result = classify(tasks, edges)
    # 4 requires nothing: ready. The others wait on running, waiting and ready tasks.
    assert result.statuses == {4: R, 5: P, 6: P, 7: P}
    assert result.reasons == {}


def test_pending_propagates_down_a_chain() -> None:
    # 3 requires 2 requires 1 (ready): 2 and 3 wait.
    result = classify([task(1), task(2, R), task(3, R)], [(2, 1), (3, 2)])
    assert result.statuses == {1: R, 2: P, 3: P}


def test_a_failed_requirement_blocks_with_its_reason() -> None:
    tasks = [task(9, FAILED, status_reason="CONTEXT_TOO_LONG"), task(12)]
    result = classify(tasks, [(12, 9)])
    assert result.statuses == {12: B}
    assert result.reasons == {12: "task 12 waits for 9, which failed: CONTEXT_TOO_LONG"}


def test_blocking_is_transitive_and_the_reason_names_the_chain() -> None:
    tasks = [
        task(9, FAILED, status_reason="CONTEXT_TOO_LONG"),
        task(12, B),
        task(14, R),
        task(15),
    ]
    result = classify(tasks, [(12, 9), (14, 12), (15, 14)])
    assert result.statuses == {12: B, 14: B, 15: B}
    assert result.reasons == {
        12: "task 12 waits for 9, which failed: CONTEXT_TOO_LONG",
        14: "task 14 waits for 12, which waits for 9, which failed: CONTEXT_TOO_LONG",
        15: "task 15 waits for 14, which waits for 12, which waits for 9, which failed: CONTEXT_TOO_LONG",
    }


def test_a_cancelled_requirement_blocks() -> None:
    tasks = [task(4, CANCELLED), task(5), task(6, CANCELLED, status_reason="superseded by 7"), task(8)]
    result = classify(tasks, [(5, 4), (8, 6)])
    assert result.statuses == {5: B, 8: B}
    assert result.reasons == {
        5: "task 5 waits for 4, which was cancelled",
        8: "task 8 waits for 6, which was cancelled: superseded by 7",
    }


def test_a_failure_without_a_reason_still_reads_well() -> None:
    result = classify([task(1, FAILED), task(2)], [(2, 1)])
    assert result.reasons == {2: "task 2 waits for 1, which failed"}


def test_one_blocked_requirement_is_enough_even_when_others_are_done_or_pending() -> None:
    tasks = [task(1, DONE), task(2, RUNNING), task(3, FAILED, status_reason="OOM"), task(4)]
    result = classify(tasks, [(4, 1), (4, 2), (4, 3)])
    assert result.statuses == {4: B}
    assert result.reasons[4] == "task 4 waits for 3, which failed: OOM"


def test_with_several_blockers_the_lowest_id_is_named() -> None:
    tasks = [
        task(7, FAILED, status_reason="A"),
        task(3, CANCELLED),
        task(5, FAILED, status_reason="B"),
        task(10),
    ]
    edges = [(10, 7), (10, 5), (10, 3)]
    assert classify(tasks, edges).reasons[10] == "task 10 waits for 3, which was cancelled"
    assert classify(list(reversed(tasks)), list(reversed(edges))).reasons[10] == (
        "task 10 waits for 3, which was cancelled"
    )


def test_a_held_task_keeps_its_status_and_blocks_what_requires_it() -> None:
    tasks = [
        task(1, B, hold_reason="waiting on legal", updated_by="alice"),
        task(2, R),
        task(3),
        task(4, R, hold_reason="paused", updated_by=""),
    ]
    result = classify(tasks, [(2, 1), (3, 2)])
    # Held tasks are not derived: left out of statuses, but explained.
    assert result.statuses == {2: B, 3: B}
    assert result.reasons == {
        1: "held by alice: waiting on legal",
        2: "task 2 waits for 1, which is held: waiting on legal",
        3: "task 3 waits for 2, which waits for 1, which is held: waiting on legal",
        4: "held by a person: paused",
    }


def test_a_blocked_task_is_ready_again_once_its_requirement_is_done() -> None:
    # 2 was blocked on 1; 1 was rerun and is done now.
    tasks = [task(1, DONE), task(2, B, status_reason="task 2 waits for 1, which failed: X")]
    assert classify(tasks, [(2, 1)]).statuses == {2: R}


def test_running_approval_and_closed_tasks_are_not_reclassified() -> None:
    tasks = [
        task(1, RUNNING),
        task(2, WAITING),
        task(3, DONE),
        task(4, FAILED, status_reason="X"),
        task(5, CANCELLED),
        task(6, FAILED),
    ]
    # Even those that require a failed task.
    edges = [(1, 6), (2, 6), (3, 6), (5, 6)]
    assert classify(tasks, edges) == Classification(statuses={}, reasons={})


def test_a_hold_reason_on_a_running_task_is_not_a_hold() -> None:
    tasks = [task(1, RUNNING, hold_reason="stale"), task(2)]
    result = classify(tasks, [(2, 1)])
    assert result.statuses == {2: P}
    assert result.reasons == {}


def test_a_requirement_on_an_unknown_task_keeps_a_task_pending() -> None:
    result = classify([task(1, DONE), task(2, R)], [(2, 1), (2, 404)])
    assert result.statuses == {2: P}
    assert result.reasons == {}


def test_edges_from_unknown_tasks_are_ignored() -> None:
    result = classify([task(1, FAILED)], [(404, 1)])
    assert result == Classification(statuses={}, reasons={})


def test_a_stored_cycle_does_not_hang_classify() -> None:
    # Cycles are refused when linking; classify still copes with one.
    pending_cycle = classify([task(1), task(2)], [(1, 2), (2, 1)])
    assert pending_cycle.statuses == {1: P, 2: P}
    tasks = [task(1), task(2), task(3, FAILED, status_reason="X")]
    result = classify(tasks, [(1, 2), (2, 1), (1, 3)])
    assert result.statuses == {1: B, 2: B}
    # Each chain ends at the failure when it can, and says "cycle" when the
    # only way on is back to a task it named.
    assert result.reasons == {
        1: "task 1 waits for 2, which waits for 1 (a requires cycle)",
        2: "task 2 waits for 1, which waits for 3, which failed: X",
    }


def test_a_wide_project_classifies_every_open_task() -> None:
    # 1 failed; 2..50 each require the one before: all blocked, each reason
    # one step longer than the last.
    tasks = [task(1, FAILED, status_reason="E"), *(task(i) for i in range(2, 51))]
    edges = [(i, i - 1) for i in range(2, 51)]
    result = classify(tasks, edges)
    assert result.statuses == dict.fromkeys(range(2, 51), B)
    assert result.reasons[50].count("which waits for") == 48
    assert result.reasons[50].startswith("task 50 waits for 49, which waits for 48, ")
    assert result.reasons[50].endswith(", which waits for 2, which waits for 1, which failed: E")

"""PoolView: placement, capacity, leases, drain, expiry and paging, with plain
snapshots and a number for the clock."""

from __future__ import annotations

import pytest

from hearth.errors import NotFound, ResourceExhausted, Unavailable
from pool_managerd.domain.pool import ChangeKind, PoolView, WorkerSnapshot, WorkerState

pytestmark = pytest.mark.unit

TTL = 2.0


def snapshot(
    worker_id: str,
    *,
    models: dict[str, int] | None = None,
    state: WorkerState = WorkerState.READY,
    max_concurrency: int = 2,
) -> WorkerSnapshot:
    return WorkerSnapshot(
        worker_id=worker_id,
        address=f"{worker_id}.local:50051",
        models={"m": 4096} if models is None else models,
        state=state,
        max_concurrency=max_concurrency,
    )


def pool_of(*snapshots: WorkerSnapshot, now: float = 0.0) -> PoolView:
    pool = PoolView(TTL)
    for s in snapshots:
        pool.observe(s, now)
    return pool


def test_observe_reports_joined_then_updated_then_draining() -> None:
    pool = PoolView(TTL)
    assert pool.observe(snapshot("w1"), 0.0) is ChangeKind.JOINED
    assert pool.observe(snapshot("w1"), 0.5) is ChangeKind.UPDATED
    assert pool.observe(snapshot("w1", state=WorkerState.DRAINING), 1.0) is ChangeKind.DRAINING
    assert pool.observe(snapshot("w1", state=WorkerState.DRAINING), 1.5) is ChangeKind.UPDATED
    assert len(pool) == 1


def test_place_returns_a_lease_with_the_workers_address_and_context() -> None:
    pool = pool_of(snapshot("w1", models={"m": 8192, "other": 1024}))
    lease = pool.place("job-1", "m", 0.1)
    assert (lease.job_id, lease.worker_id, lease.address, lease.model, lease.context_length) == (
        "job-1",
        "w1",
        "w1.local:50051",
        "m",
        8192,
    )
    assert lease.lease_id and lease.lease_id != pool.place("job-2", "m", 0.1).lease_id


def test_place_picks_the_least_loaded_worker_and_breaks_ties_by_id() -> None:
    pool = pool_of(snapshot("w-b", max_concurrency=4), snapshot("w-a", max_concurrency=2))
    # Both empty: the tie goes to the smaller id.
    assert pool.place("j1", "m", 0.0).worker_id == "w-a"  # w-a 1/2, w-b 0/4
    assert pool.place("j2", "m", 0.0).worker_id == "w-b"  # w-a 1/2, w-b 1/4
    assert pool.place("j3", "m", 0.0).worker_id == "w-b"  # w-a 1/2, w-b 2/4: tie again
    assert pool.place("j4", "m", 0.0).worker_id == "w-a"  # w-a 2/2 full, w-b 2/4


def test_capacity_is_max_concurrency_minus_outstanding_leases() -> None:
    pool = pool_of(snapshot("w1", max_concurrency=2))
    first = pool.place("j1", "m", 0.0)
    pool.place("j2", "m", 0.0)
    with pytest.raises(ResourceExhausted) as full:
        pool.place("j3", "m", 0.0)
    assert full.value.reason == "NO_CAPACITY"
    assert full.value.retry_after == pytest.approx(0.2)
    assert full.value.metadata["model"] == "m"
    assert pool.release(first.lease_id) is True
    assert pool.place("j3", "m", 0.0).worker_id == "w1"
    assert pool.worker("w1").leased == 2


def test_release_twice_is_false_the_second_time() -> None:
    pool = pool_of(snapshot("w1"))
    lease = pool.place("j1", "m", 0.0)
    assert pool.release(lease.lease_id) is True
    assert pool.release(lease.lease_id) is False
    assert pool.release("never-issued") is False
    assert pool.worker("w1").leased == 0


def test_release_job_frees_every_lease_the_ended_job_holds() -> None:
    pool = pool_of(snapshot("w1", max_concurrency=3))
    kept = pool.place("other", "m", 0.0)
    held = {pool.place("ended", "m", 0.0).lease_id, pool.place("ended", "m", 0.0).lease_id}
    assert set(pool.release_job("ended")) == held
    assert pool.release_job("ended") == []
    assert pool.worker("w1").leased == 1
    assert pool.release(kept.lease_id) is True


def test_model_not_found_versus_no_capacity() -> None:
    pool = pool_of(snapshot("w1", max_concurrency=1), snapshot("w2", state=WorkerState.STARTING))
    with pytest.raises(NotFound) as missing:
        pool.place("j1", "absent", 0.0)
    assert missing.value.reason == "MODEL_NOT_FOUND"
    assert missing.value.metadata == {"model": "absent"}
    pool.place("j1", "m", 0.0)
    # w1 is full and w2 still starting: the model exists, so this is retryable.
    with pytest.raises(ResourceExhausted) as busy:
        pool.place("j2", "m", 0.0)
    assert busy.value.reason == "NO_CAPACITY"


def test_only_ready_workers_are_placed_on() -> None:
    pool = pool_of(
        snapshot("w1", state=WorkerState.STARTING),
        snapshot("w2", state=WorkerState.DRAINING),
        snapshot("w3", state=WorkerState.UNKNOWN),
        snapshot("w4"),
    )
    assert {pool.place(f"j{i}", "m", 0.0).worker_id for i in range(2)} == {"w4"}


def test_drain_excludes_the_worker_and_outlives_its_heartbeats() -> None:
    pool = pool_of(snapshot("w1"), snapshot("w2"))
    result = pool.drain("w1")
    assert result.changed is True
    assert result.worker.state is WorkerState.DRAINING and result.worker.drained
    # The worker still reports READY; the pool's drain wins.
    assert pool.observe(snapshot("w1"), 0.5) is ChangeKind.UPDATED
    assert {pool.place(f"j{i}", "m", 0.5).worker_id for i in range(2)} == {"w2"}
    assert pool.drain("w1").changed is False


def test_drain_keeps_running_leases_until_released() -> None:
    pool = pool_of(snapshot("w1"))
    lease = pool.place("j1", "m", 0.0)
    assert pool.drain("w1").worker.leased == 1
    assert pool.release(lease.lease_id) is True


def test_drain_of_an_unknown_worker_is_worker_not_found() -> None:
    with pytest.raises(NotFound) as missing:
        PoolView(TTL).drain("ghost")
    assert missing.value.reason == "WORKER_NOT_FOUND"
    assert missing.value.metadata == {"worker_id": "ghost"}


def test_expiry_drops_silent_workers_and_forgets_their_leases() -> None:
    pool = pool_of(snapshot("w1"), snapshot("w2"), now=0.0)
    lease = pool.place("j1", "m", 0.0)
    assert lease.worker_id == "w1"
    pool.observe(snapshot("w2"), 1.5)
    assert pool.expire(TTL) == []  # exactly the TTL old is still live
    assert pool.expire(2.1) == ["w1"]
    assert [w.worker_id for w in pool.workers()] == ["w2"]
    assert pool.release(lease.lease_id) is False
    # A worker that comes back is new, with no leases.
    assert pool.observe(snapshot("w1"), 2.2) is ChangeKind.JOINED
    assert pool.worker("w1").leased == 0


def test_place_skips_a_worker_past_its_ttl_before_expiry_runs() -> None:
    pool = pool_of(snapshot("w1"), now=0.0)
    pool.observe(snapshot("w2"), 2.0)
    assert pool.place("j1", "m", 2.5).worker_id == "w2"
    with pytest.raises(NotFound):
        pool.place("j2", "other", 2.5)


def test_no_worker_while_warming_up_is_retryable_then_model_not_found() -> None:
    pool = PoolView(TTL)
    pool.begin_listening(10.0)
    with pytest.raises(Unavailable) as warming:
        pool.place("j1", "m", 10.5)
    assert warming.value.reason == "POOL_WARMING_UP"
    assert warming.value.retry_after == pytest.approx(1.5)
    with pytest.raises(NotFound):
        pool.place("j1", "m", 12.5)


def test_workers_are_sorted_by_id_with_their_leases() -> None:
    pool = pool_of(snapshot("w3"), snapshot("w1"), snapshot("w2"))
    pool.place("j1", "m", 0.0)
    listed = pool.workers()
    assert [w.worker_id for w in listed] == ["w1", "w2", "w3"]
    assert [w.leased for w in listed] == [1, 0, 0]
    assert listed[0].heartbeat_age(0.75) == pytest.approx(0.75)


def test_paging_walks_every_worker_once_and_survives_changes() -> None:
    pool = pool_of(*(snapshot(f"w{i:02d}") for i in range(7)))
    page, after = pool.workers_page("", 3)
    assert [w.worker_id for w in page] == ["w00", "w01", "w02"]
    assert after == "w02"
    # A worker that sorts before the continuation joins: the walk resumes at
    # the next id after the continuation, not at a shifted offset.
    pool.observe(snapshot("w00a"), 0.1)
    page, after = pool.workers_page(after, 3)
    assert [w.worker_id for w in page] == ["w03", "w04", "w05"]
    page, after = pool.workers_page(after, 3)
    assert [w.worker_id for w in page] == ["w06"]
    assert after is None
    exact, end = pool.workers_page("", 8)
    assert len(exact) == 8 and end is None


def test_place_scales_to_many_workers() -> None:
    pool = pool_of(*(snapshot(f"w{i:04d}", max_concurrency=1) for i in range(1000)))
    placed = {pool.place(f"j{i}", "m", 0.0).worker_id for i in range(1000)}
    assert len(placed) == 1000
    with pytest.raises(ResourceExhausted):
        pool.place("one-too-many", "m", 0.0)

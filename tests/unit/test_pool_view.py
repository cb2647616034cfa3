"""PoolView: placement, capacity, leases, drain, expiry, paging and loads on
demand, with plain snapshots and a number for the clock."""

from __future__ import annotations

import pytest

from hearth.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from pool_managerd.domain.pool import (
    ChangeKind,
    ModelLoading,
    ModelState,
    PoolView,
    WorkerModel,
    WorkerSnapshot,
    WorkerState,
)

pytestmark = pytest.mark.unit

TTL = 2.0
RETRY = 30.0
GIB = 1024**3


def snapshot(
    worker_id: str,
    *,
    models: dict[str, int | WorkerModel] | None = None,
    state: WorkerState = WorkerState.READY,
    max_concurrency: int = 2,
    gpu_free_gib: int = 0,
) -> WorkerSnapshot:
    """A worker; a model given as a number is loaded with that context length."""
    given: dict[str, int | WorkerModel] = {"m": 4096} if models is None else models
    return WorkerSnapshot(
        worker_id=worker_id,
        address=f"{worker_id}.local:50051",
        models={name: WorkerModel(m) if isinstance(m, int) else m for name, m in given.items()},
        state=state,
        max_concurrency=max_concurrency,
        gpu_free_bytes=gpu_free_gib * GIB,
    )


def unloaded(estimate: float = 4.0) -> WorkerModel:
    return WorkerModel(4096, ModelState.UNLOADED, load_estimate_seconds=estimate)


def pool_of(*snapshots: WorkerSnapshot, now: float = 0.0) -> PoolView:
    pool = PoolView(TTL, load_retry_seconds=RETRY)
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


# -- loads on demand ---------------------------------------------------------


def loading_error(pool: PoolView, model: str, now: float) -> ModelLoading:
    with pytest.raises(ModelLoading) as loading:
        pool.place("job", model, now)
    return loading.value


def test_place_uses_only_loaded_models_and_orders_one_load_per_worker_and_model() -> None:
    pool = pool_of(snapshot("w1", models={"m": 4096, "n": unloaded(estimate=4.0)}))

    first = loading_error(pool, "n", 0.0)
    second = loading_error(pool, "n", 1.0)

    assert first.reason == "MODEL_LOADING" and first.code.name == "UNAVAILABLE"
    assert first.order is not None
    assert (first.order.worker_id, first.order.address, first.order.model) == ("w1", "w1.local:50051", "n")
    assert first.metadata == {"model": "n", "worker_id": "w1", "estimate_seconds": "4.0"}
    assert first.retry_after == pytest.approx(1.0)
    # The load is in flight: no second order, and the estimate counts down.
    assert second.order is None
    assert second.metadata["estimate_seconds"] == "3.0"
    assert pool.place("j", "m", 1.0).worker_id == "w1"


def test_a_load_goes_to_the_most_free_gpu_memory_then_the_least_loaded() -> None:
    pool = pool_of(
        snapshot("w1", models={"m": 4096, "n": unloaded()}, gpu_free_gib=8),
        snapshot("w2", models={"n": unloaded()}, gpu_free_gib=20),
        snapshot("w3", models={"n": unloaded(), "m": 4096}, gpu_free_gib=8),
    )
    assert loading_error(pool, "n", 0.0).metadata["worker_id"] == "w2"

    tie = pool_of(
        snapshot("w1", models={"m": 4096, "n": unloaded()}, gpu_free_gib=8),
        snapshot("w2", models={"m": 4096, "n": unloaded()}, gpu_free_gib=8),
    )
    tie.place("busy", "m", 0.0)  # w1 holds a lease now
    assert loading_error(tie, "n", 0.0).metadata["worker_id"] == "w2"


def test_a_model_the_worker_reports_loading_is_waited_for_without_a_new_order() -> None:
    loading_model = WorkerModel(4096, ModelState.LOADING, load_estimate_seconds=0.05)
    pool = pool_of(snapshot("w1", models={"n": loading_model}), snapshot("w2", models={"n": unloaded()}))

    error = loading_error(pool, "n", 0.0)

    assert error.order is None and error.metadata["worker_id"] == "w1"
    assert error.retry_after == pytest.approx(0.1)  # never below 0.1 s


def test_a_finished_load_is_placed_on_at_once_before_the_next_heartbeat() -> None:
    pool = pool_of(snapshot("w1", models={"n": unloaded()}))
    order = loading_error(pool, "n", 0.0).order
    assert order is not None

    pool.load_finished(order, 0.5, model=WorkerModel(2048, ModelState.LOADED))

    lease = pool.place("j", "n", 0.6)
    assert (lease.worker_id, lease.context_length) == ("w1", 2048)
    assert pool.worker("w1").snapshot.models["n"].state is ModelState.LOADED


def test_a_failed_load_answers_model_load_failed_until_the_retry_interval_passes() -> None:
    pool = pool_of(snapshot("w1", models={"n": unloaded()}))
    order = loading_error(pool, "n", 0.0).order
    assert order is not None

    pool.load_finished(order, 1.0, error="needs 24 GiB, 20 free")
    pool.observe(snapshot("w1", models={"n": unloaded()}), 1.5)  # the heartbeat still says unloaded
    with pytest.raises(FailedPrecondition) as failed:
        pool.place("j", "n", 2.0)
    pool.observe(snapshot("w1", models={"n": unloaded()}), 1.0 + RETRY)
    again = loading_error(pool, "n", 1.0 + RETRY)

    assert failed.value.reason == "MODEL_LOAD_FAILED"
    assert failed.value.metadata == {"model": "n", "worker_id": "w1", "error": "needs 24 GiB, 20 free"}
    assert again.order is not None


def test_a_failure_on_one_worker_sends_the_load_to_another() -> None:
    pool = pool_of(
        snapshot("w1", models={"n": unloaded()}, gpu_free_gib=20),
        snapshot("w2", models={"n": unloaded()}, gpu_free_gib=10),
    )
    first = loading_error(pool, "n", 0.0).order
    assert first is not None and first.worker_id == "w1"
    pool.load_finished(first, 0.5, error="engine crashed")

    assert loading_error(pool, "n", 0.6).metadata["worker_id"] == "w2"


def test_a_failed_state_in_heartbeats_counts_from_when_it_is_first_seen() -> None:
    failed = WorkerModel(4096, ModelState.FAILED, error="no weights")
    pool = pool_of(snapshot("w1", models={"n": failed}), now=5.0)
    pool.observe(snapshot("w1", models={"n": failed}), 20.0)

    with pytest.raises(FailedPrecondition) as refused:
        pool.place("j", "n", 20.0)
    pool.observe(snapshot("w1", models={"n": failed}), 5.0 + RETRY)
    retried = loading_error(pool, "n", 5.0 + RETRY)

    assert refused.value.metadata["error"] == "no weights"
    assert retried.order is not None
    # Loaded at last: the failure is forgotten.
    pool.observe(snapshot("w1", models={"n": 4096}), 5.0 + RETRY + 1)
    assert pool.place("j", "n", 5.0 + RETRY + 1).worker_id == "w1"


def test_draining_and_starting_workers_get_no_loads() -> None:
    pool = pool_of(
        snapshot("w1", models={"n": unloaded()}, state=WorkerState.DRAINING),
        snapshot("w2", models={"s": unloaded()}, state=WorkerState.STARTING),
    )
    with pytest.raises(NotFound) as gone:
        pool.place("j", "n", 0.0)
    with pytest.raises(ResourceExhausted) as soon:
        pool.place("j", "s", 0.0)
    assert gone.value.reason == "MODEL_NOT_FOUND"
    assert soon.value.reason == "NO_CAPACITY"


def test_loaded_on_a_full_worker_is_no_capacity_not_a_second_load() -> None:
    pool = pool_of(
        snapshot("w1", models={"n": 4096}, max_concurrency=1),
        snapshot("w2", models={"n": unloaded()}),
    )
    pool.place("j1", "n", 0.0)
    with pytest.raises(ResourceExhausted) as full:
        pool.place("j2", "n", 0.0)
    assert full.value.reason == "NO_CAPACITY"


def test_choose_load_on_a_given_worker_or_the_pools_choice() -> None:
    pool = pool_of(
        snapshot("w1", models={"n": unloaded()}, gpu_free_gib=30),
        snapshot("w2", models={"n": 4096}, gpu_free_gib=1),
        snapshot("w3", models={"x": unloaded()}, state=WorkerState.DRAINING),
    )
    assert pool.choose_load("n", "w1", 0.0).worker_id == "w1"
    # Loaded somewhere already: that worker, whatever its free memory.
    assert pool.choose_load("n", "", 0.0).worker_id == "w2"
    with pytest.raises(NotFound) as unknown_worker:
        pool.choose_load("n", "ghost", 0.0)
    with pytest.raises(NotFound) as not_listed:
        pool.choose_load("other", "w1", 0.0)
    with pytest.raises(NotFound) as nowhere:
        pool.choose_load("other", "", 0.0)
    with pytest.raises(FailedPrecondition) as draining:
        pool.choose_load("x", "w3", 0.0)
    assert unknown_worker.value.reason == "WORKER_NOT_FOUND"
    assert not_listed.value.reason == nowhere.value.reason == "MODEL_NOT_FOUND"
    assert not_listed.value.metadata == {"model": "other", "worker_id": "w1"}
    assert draining.value.reason == "WORKER_DRAINING"


def test_an_explicit_load_retries_a_failed_model_and_joins_a_load_in_flight() -> None:
    pool = pool_of(snapshot("w1", models={"n": unloaded()}))
    order = loading_error(pool, "n", 0.0).order
    assert order is not None

    assert pool.choose_load("n", "", 0.1) is order  # the same load
    pool.load_finished(order, 0.5, error="boom")
    retry = pool.choose_load("n", "", 0.6)

    assert retry is not order and retry.worker_id == "w1"


def test_choose_unload_finds_the_one_worker_holding_the_model() -> None:
    pool = pool_of(
        snapshot("w1", models={"a": 4096, "b": unloaded()}),
        snapshot("w2", models={"a": 4096, "c": 4096}),
    )
    assert pool.choose_unload("c", "").worker_id == "w2"
    assert pool.choose_unload("a", "w1").worker_id == "w1"
    with pytest.raises(InvalidArgument) as several:
        pool.choose_unload("a", "")
    with pytest.raises(NotFound) as not_loaded:
        pool.choose_unload("b", "")
    with pytest.raises(NotFound) as not_listed:
        pool.choose_unload("c", "w1")
    assert several.value.field == "worker_id"
    assert not_loaded.value.reason == "MODEL_NOT_LOADED"
    assert not_listed.value.reason == "MODEL_NOT_FOUND"

    pool.set_model("w2", "c", unloaded())
    assert pool.worker("w2").snapshot.models["c"].state is ModelState.UNLOADED


def test_a_dropped_worker_forgets_its_loads() -> None:
    pool = pool_of(snapshot("w1", models={"n": unloaded()}), now=0.0)
    order = loading_error(pool, "n", 0.0).order
    assert order is not None
    assert pool.expire(TTL + 1) == ["w1"]

    pool.load_finished(order, TTL + 1, model=WorkerModel(4096))  # a no-op now

    assert pool.observe(snapshot("w1", models={"n": unloaded()}), TTL + 2) is ChangeKind.JOINED
    assert loading_error(pool, "n", TTL + 2).order is not None

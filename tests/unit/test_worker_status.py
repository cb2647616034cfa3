"""workerd's admission and lifecycle state."""

from __future__ import annotations

import pytest

from hearth.errors import (
    AlreadyExists,
    HearthError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from workerd.domain import GenerationRequest, ServedModel
from workerd.domain.generation import validate_generation
from workerd.domain.worker_status import WorkerStatus

pytestmark = pytest.mark.unit


def test_admission_is_bounded_and_counted() -> None:
    status = WorkerStatus("w1", max_concurrency=2)
    status.mark_ready()

    with status.admit("a"), status.admit("b"):
        assert status.running == 2
        with pytest.raises(ResourceExhausted) as caught:
            with status.admit("c"):
                pass
        with pytest.raises(AlreadyExists):
            with status.admit("a"):
                pass

    assert caught.value.reason == "WORKER_BUSY"
    assert caught.value.retry_after == 0.5
    assert status.running == 0
    assert status.counters.requests_total == 2


@pytest.mark.parametrize("state", ["starting", "draining"])
def test_no_admission_unless_ready(state: str) -> None:
    status = WorkerStatus("w1", max_concurrency=2)
    if state == "draining":
        status.mark_ready()
        status.mark_draining()

    with pytest.raises(Unavailable) as caught:
        with status.admit("a"):
            pass

    assert caught.value.reason == f"WORKER_{state.upper()}"


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"model": "other"}, NotFound, None),
        ({"prompt": ""}, InvalidArgument, "prompt"),
        ({"max_tokens": 0}, InvalidArgument, "max_tokens"),
        ({"temperature": -1.0}, InvalidArgument, "temperature"),
        ({"job_id": ""}, InvalidArgument, "job_id"),
    ],
)
def test_request_validation_names_the_field(
    changes: dict[str, object], error: type[HearthError], field: str | None
) -> None:
    fields: dict[str, object] = {"job_id": "j1", "model": "m", "prompt": "hi", "max_tokens": 4, **changes}
    request = GenerationRequest(**fields)  # type: ignore[arg-type]

    with pytest.raises(error) as caught:
        validate_generation(request, [ServedModel("m", 100)])

    if field is None:
        assert caught.value.reason == "MODEL_NOT_FOUND"
    else:
        assert isinstance(caught.value, InvalidArgument)
        assert caught.value.field == field

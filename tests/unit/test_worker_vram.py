"""The VRAM preflight."""

from __future__ import annotations

import pytest

from hearth.errors import FailedPrecondition
from workerd.domain.vram import check_fits
from workerd.domain.worker_status import GpuStatus

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
GPU = GpuStatus(
    present=True,
    name="RTX 5090",
    index=0,
    memory_total_bytes=32_000 * MIB,
    memory_used_bytes=22_000 * MIB,
    memory_free_bytes=10_000 * MIB,
)


def test_a_model_that_fits_passes() -> None:
    check_fits("small", 9_000 * MIB, GPU)
    check_fits("exact", 10_000 * MIB, GPU)
    check_fits("with-reserve", 8_000 * MIB, GPU, reserve_bytes=2_000 * MIB)


def test_too_big_raises_insufficient_vram_with_the_numbers() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_fits("big", 12_000 * MIB + 1, GPU)

    err = caught.value
    assert err.reason == "INSUFFICIENT_VRAM"
    assert err.metadata == {
        "model": "big",
        "needed_mib": "12001",
        "free_mib": "10000",
        "reserve_mib": "0",
        "total_mib": "32000",
    }
    assert "12001 MiB" in err.message and "10000 MiB free" in err.message and "32000 MiB" in err.message


def test_the_reserve_counts_against_free_memory() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_fits("mid", 9_000 * MIB, GPU, reserve_bytes=1_500 * MIB)

    assert caught.value.metadata["reserve_mib"] == "1500"
    assert "1500 MiB are kept in reserve" in caught.value.message


def test_no_gpu_or_unknown_need_is_a_no_op() -> None:
    check_fits("cpu", 10**15, GpuStatus(present=False))
    check_fits("unknown", 0, GpuStatus(present=True, memory_free_bytes=0))


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        check_fits("m", -1, GPU)
    with pytest.raises(ValueError):
        check_fits("m", 1, GPU, reserve_bytes=-1)

"""The NVML GPU probe: a GPU where one exists, never a crash where none does."""

from __future__ import annotations

import pytest

from workerd.adapters.gpu import NvmlGpuProbe

pytestmark = pytest.mark.unit


def test_reads_the_gpu_or_reports_none() -> None:
    probe = NvmlGpuProbe("")
    probe.open()
    try:
        gpu = probe.read()
    finally:
        probe.close()
        probe.close()

    # On a CPU machine present is False and the sizes are zero; on a GPU machine both are set.
    assert gpu.present == (gpu.memory_total_bytes > 0)


def test_an_unknown_gpu_is_reported_absent() -> None:
    probe = NvmlGpuProbe("GPU-00000000-0000-0000-0000-000000000000")
    probe.open()
    try:
        gpu = probe.read()
    finally:
        probe.close()

    assert gpu.present is False

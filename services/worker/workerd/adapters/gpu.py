"""The worker's GPU, read through NVML (nvidia-ml-py)."""

from __future__ import annotations

import logging
from typing import Any

from workerd.domain.worker_status import GpuStatus

log = logging.getLogger(__name__)


class NvmlGpuProbe:
    """Reads name and memory of the worker's GPU.

    NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES, so the GPU
    is the first entry of ``visible_devices`` (an index, or a ``GPU-``/``MIG-``
    UUID), else index 0. Where there is no GPU, no driver, or NVML fails,
    :meth:`read` returns ``GpuStatus(present=False)``: a CPU machine is a
    normal case, never an error. open() and close() are each safe twice.
    NVML reads are sub-millisecond driver calls, so read() runs on the event
    loop.
    """

    def __init__(self, visible_devices: str = "") -> None:
        self._selector = visible_devices.split(",")[0].strip()
        self._nvml: Any = None
        self._handle: Any = None
        self._index = 0

    def open(self) -> None:
        if self._nvml is not None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as err:  # no driver or library: the CPU-machine case
            log.info("no GPU: NVML unavailable (%s)", err)
            return
        self._nvml = pynvml
        try:
            if self._selector.startswith(("GPU-", "MIG-")):
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(self._selector)
                self._index = int(pynvml.nvmlDeviceGetIndex(self._handle))
            else:
                self._index = int(self._selector) if self._selector.isdigit() else 0
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._index)
        except Exception as err:
            log.warning("NVML cannot open GPU %r: %s", self._selector or "0", err)
            self._handle = None

    def read(self) -> GpuStatus:
        if self._handle is None:
            return GpuStatus()
        try:
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            name = self._nvml.nvmlDeviceGetName(self._handle)
        except Exception as err:  # report "no GPU" rather than fail a heartbeat
            log.debug("NVML read failed: %s", err)
            return GpuStatus()
        return GpuStatus(
            present=True,
            name=name.decode() if isinstance(name, bytes) else str(name),
            index=self._index,
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            memory_free_bytes=int(memory.free),
        )

    def close(self) -> None:
        nvml, self._nvml, self._handle = self._nvml, None, None
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception as err:
                log.debug("NVML shutdown failed: %s", err)

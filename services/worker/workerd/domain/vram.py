"""The VRAM preflight: will a model fit in the GPU's free memory?

Pure: it reads a :class:`~workerd.domain.worker_status.GpuStatus` snapshot
and raises; the caller reads the GPU and decides what to do.
"""

from __future__ import annotations

from hearth.errors import FailedPrecondition
from workerd.domain.worker_status import GpuStatus

_MIB = 1024 * 1024


def check_fits(model: str, needed_bytes: int, gpu: GpuStatus, *, reserve_bytes: int = 0) -> None:
    """Raise when ``needed_bytes`` do not fit in the GPU's free memory less
    ``reserve_bytes`` (memory kept back for the CUDA context, activations or
    another process).

    A no-op when there is no GPU (``gpu.present`` is False: the engine runs on
    the CPU or a remote API) or when the need is unknown (``needed_bytes`` 0).

    Raises:
        FailedPrecondition: reason ``INSUFFICIENT_VRAM``, metadata ``model``,
            ``needed_mib`` (rounded up), ``free_mib``, ``reserve_mib`` and
            ``total_mib`` (rounded down). FAILED_PRECONDITION rather than
            RESOURCE_EXHAUSTED: the load cannot succeed until the system's
            state changes (another model is unloaded, a smaller model or
            quantisation is chosen, or the card is too small anyway), so a
            client must not blindly retry after a delay, which is what
            RESOURCE_EXHAUSTED with a retry delay means in Hearth.
        ValueError: a negative ``needed_bytes`` or ``reserve_bytes``.
    """
    if needed_bytes < 0 or reserve_bytes < 0:
        raise ValueError("needed_bytes and reserve_bytes must not be negative")
    if not gpu.present or needed_bytes == 0:
        return
    usable = gpu.memory_free_bytes - reserve_bytes
    if needed_bytes <= usable:
        return
    needed_mib = -(-needed_bytes // _MIB)
    free_mib = gpu.memory_free_bytes // _MIB
    reserve_mib = -(-reserve_bytes // _MIB)
    total_mib = gpu.memory_total_bytes // _MIB
    gpu_name = f"GPU {gpu.index}" + (f" ({gpu.name})" if gpu.name else "")
    reserve_text = f", of which {reserve_mib} MiB are kept in reserve" if reserve_bytes else ""
    raise FailedPrecondition(
        f"model {model!r} needs {needed_mib} MiB of GPU memory but {gpu_name} has {free_mib} MiB free "
        f"of {total_mib} MiB{reserve_text}; unload a model or choose a smaller one",
        reason="INSUFFICIENT_VRAM",
        metadata={
            "model": model,
            "needed_mib": str(needed_mib),
            "free_mib": str(free_mib),
            "reserve_mib": str(reserve_mib),
            "total_mib": str(total_mib),
        },
    )

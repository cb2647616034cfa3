"""workerd's composition root: ``python -m workerd [--flags]``.

Start order: settings -> CUDA_VISIBLE_DEVICES -> the model set (one engine
per loadable model, built on load) -> host and servicer -> NATS -> `model`
loaded when load_on_start (a failure exits non-zero after cleanup) -> ready
-> server up -> heartbeats, the cancellation listener and the idle-unload
loop. Stop order: leave (DRAINING, one heartbeat at once) -> the server drains
running generations -> listener, heartbeats and idle loop stop -> every engine
cleaned up -> bus and exporters.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os

from hearth.api.worker.v1 import worker_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, serve
from workerd.adapters.cancel_listener import CancelListener
from workerd.adapters.engines.factory import build_engine, served_model
from workerd.adapters.gpu import NvmlGpuProbe
from workerd.adapters.heartbeat import Heartbeater
from workerd.adapters.metrics import WorkerMetrics
from workerd.api.servicer import WorkerServicer
from workerd.config import Settings
from workerd.domain.engine import ServedModel
from workerd.domain.model_set import ModelSet, ModelSpec
from workerd.domain.worker_status import WorkerStatus

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def model_spec(settings: Settings, name: str) -> ModelSpec:
    """What the worker knows of a loadable model before loading it: from its
    `models` entry, or for the sim engine its settings (and the entry's
    vram_mib when there is one, so the preflight can be exercised)."""
    entry = settings.model_entry(name)
    vram_bytes = entry.vram_mib * _MIB if entry is not None else 0
    if settings.engine == "sim":
        served = ServedModel(name, settings.sim_context_length)
        return ModelSpec(served, vram_bytes, load_estimate_seconds=settings.sim_load_seconds)
    if entry is None:  # pragma: no cover - the settings validation refuses it
        raise ValueError(f"model {name!r} is not in models")
    return ModelSpec(served_model(entry), vram_bytes)


async def run(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM."""
    host = ServiceHost("workerd", settings)
    if host.bus is None:  # pragma: no cover - the host always has a bus here
        raise SystemExit("workerd: needs NATS")
    gpu = NvmlGpuProbe(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    gpu.open()
    status = WorkerStatus(settings.worker_id, settings.max_concurrency)

    def announce_soon() -> None:
        heartbeater.beat_soon()

    async def announce() -> None:
        await heartbeater.beat()

    models = ModelSet(
        [model_spec(settings, name) for name in settings.loadable()],
        functools.partial(build_engine, settings, read_gpu=gpu.read),
        read_gpu=gpu.read,
        reserve_bytes=settings.preflight_reserve_bytes(),
        idle_unload_seconds=settings.idle_unload_seconds,
        keep_one_loaded=settings.keep_one_loaded,
        on_change=announce_soon,
    )
    servicer = WorkerServicer(
        models,
        status,
        engine_kind=settings.engine,
        metrics=WorkerMetrics(host.metrics),
        tracer=host.telemetry.tracer,
        address=lambda: host.address,
        read_gpu=gpu.read,
        announce=announce,
    )
    host.add_service(
        worker_pb2_grpc.add_WorkerServiceServicer_to_server, servicer, "hearth.api.worker.v1.WorkerService"
    )
    heartbeater = Heartbeater(
        host.bus, settings.worker_id, servicer.describe, settings.heartbeat_interval_seconds
    )
    cancellations = CancelListener(host.bus, models.abort)

    try:
        # NATS first: fail fast, before a model load that may take minutes.
        await host.bus.connect()
        if settings.load_on_start:
            log.info("starting the %s engine for %r", settings.engine, settings.model)
            await models.load(settings.model)
    except BaseException as err:
        await models.cleanup()
        gpu.close()
        await host.stop()
        if isinstance(err, Exception):
            log.error("the %s engine failed to start: %s", settings.engine, err, exc_info=err)
            raise SystemExit(f"workerd: the {settings.engine} engine failed to start: {err}") from None
        raise
    status.mark_ready()

    async def leave() -> None:
        status.mark_draining()
        await heartbeater.beat()

    async def close_gpu() -> None:
        gpu.close()

    # Cleanup hooks run newest first: listener and heartbeats, then the engines.
    host.on_cleanup(close_gpu)
    host.on_cleanup(models.cleanup)
    host.on_cleanup(heartbeater.stop)
    host.on_cleanup(cancellations.stop)
    host.on_leave(leave)

    async def started() -> None:
        await heartbeater.start()
        await cancellations.start()
        await models.start()

    await serve(host, started=started)


def main() -> None:
    settings = load_settings(Settings)
    if settings.cuda_visible_devices:
        # Before anything imports torch: CUDA reads it once, at initialisation.
        os.environ["CUDA_VISIBLE_DEVICES"] = settings.cuda_visible_devices
    # Models come from local folders only; never reach for the Hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()

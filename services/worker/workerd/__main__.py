"""workerd's composition root: ``python -m workerd [--flags]``.

Start order: settings -> CUDA_VISIBLE_DEVICES -> engine built -> host and
servicer -> engine started (a failure exits non-zero after cleanup) -> server
up -> heartbeats and the cancellation listener. Stop order: leave (DRAINING,
one heartbeat at once) -> the server drains running generations -> heartbeats
and listener stop -> engine cleanup -> bus and exporters.
"""

from __future__ import annotations

import asyncio
import logging
import os

from hearth.api.worker.v1 import worker_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, serve
from workerd.adapters.cancel_listener import CancelListener
from workerd.adapters.engines.factory import build_engine
from workerd.adapters.gpu import NvmlGpuProbe
from workerd.adapters.heartbeat import Heartbeater
from workerd.adapters.metrics import WorkerMetrics
from workerd.api.servicer import WorkerServicer
from workerd.config import Settings
from workerd.domain.worker_status import WorkerStatus

log = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM."""
    host = ServiceHost("workerd", settings)
    if host.bus is None:  # pragma: no cover - the host always has a bus here
        raise SystemExit("workerd: needs NATS")
    gpu = NvmlGpuProbe(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    gpu.open()
    engine = build_engine(settings, settings.model, read_gpu=gpu.read)
    status = WorkerStatus(settings.worker_id, settings.max_concurrency)
    servicer = WorkerServicer(
        engine,
        status,
        metrics=WorkerMetrics(host.metrics),
        tracer=host.telemetry.tracer,
        address=lambda: host.address,
        read_gpu=gpu.read,
    )
    host.add_service(
        worker_pb2_grpc.add_WorkerServiceServicer_to_server, servicer, "hearth.api.worker.v1.WorkerService"
    )
    heartbeater = Heartbeater(
        host.bus, settings.worker_id, servicer.describe, settings.heartbeat_interval_seconds
    )
    cancellations = CancelListener(host.bus, engine)

    log.info("starting the %s engine for %r", engine.kind, settings.model)
    try:
        # NATS first: fail fast, before a model load that may take minutes.
        await host.bus.connect()
        await engine.start()
    except BaseException as err:
        await engine.cleanup()
        gpu.close()
        await host.stop()
        if isinstance(err, Exception):
            log.error("the %s engine failed to start: %s", engine.kind, err, exc_info=err)
            raise SystemExit(f"workerd: the {engine.kind} engine failed to start: {err}") from None
        raise
    status.mark_ready()

    async def leave() -> None:
        status.mark_draining()
        await heartbeater.beat()

    async def close_gpu() -> None:
        gpu.close()

    # Cleanup hooks run newest first: listener and heartbeats, then the engine.
    host.on_cleanup(close_gpu)
    host.on_cleanup(engine.cleanup)
    host.on_cleanup(heartbeater.stop)
    host.on_cleanup(cancellations.stop)
    host.on_leave(leave)

    async def started() -> None:
        await heartbeater.start()
        await cancellations.start()

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

"""routerd's composition root: build every part once and run."""

from __future__ import annotations

import asyncio
import logging

from hearth.api.router.v1 import router_pb2_grpc
from hearth.runtime import ServiceHost, load_settings, serve
from routerd.adapters.conformance_file import ConformanceFile
from routerd.api.servicer import RouterServicer
from routerd.config import RouterSettings

log = logging.getLogger(__name__)


async def run(settings: RouterSettings) -> None:
    # Routing needs no bus yet; the pool-aware policy will subscribe to pool changes.
    host = ServiceHost("routerd", settings, connect_bus=False)
    catalog = settings.model_catalog()
    if not catalog.models:
        log.warning("no models configured: every Route will fail with MODEL_NOT_FOUND")
    log.info(
        "routing over %d models, policy %s, default role %s",
        len(catalog.models),
        catalog.version,
        catalog.default_role,
    )
    servicer = RouterServicer(
        catalog,
        registry=settings.models,
        conformance=ConformanceFile(settings.data_dir / "router" / "conformance.json"),
        tracer=host.telemetry.tracer,
        metrics=host.metrics,
    )
    host.add_service(
        router_pb2_grpc.add_RouterServiceServicer_to_server, servicer, "hearth.api.router.v1.RouterService"
    )
    await serve(host)


def main() -> None:
    asyncio.run(run(load_settings(RouterSettings)))


if __name__ == "__main__":
    main()

"""``python -m hearth.healthcheck ADDRESS``: is the gRPC service at ADDRESS serving?

The container healthcheck of every Hearth service (docker-compose.yml): it asks
the standard gRPC health service (grpc.health.v1.Health/Check) that every
service's ServiceHost runs, prints one line, and exits 0 when the answer is
SERVING and 1 otherwise (NOT_SERVING while a service starts or drains,
unreachable, too slow). It needs nothing but the Hearth package, so it works in
the service image, which has no curl or grpc_health_probe.

    python -m hearth.healthcheck 127.0.0.1:7100
    python -m hearth.healthcheck 127.0.0.1:7100 --service hearth.api.orchestrator.v1.OrchestratorService
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: What :func:`check` answers when no health answer came back.
UNREACHABLE = "UNREACHABLE"


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[str, str]:
    """The health status name of ``service`` ("" = the whole server) at ``address``.

    Returns (status, detail): status is SERVING, NOT_SERVING, SERVICE_UNKNOWN, ... as the
    server says, or UNREACHABLE with the gRPC error in detail.
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            if code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN", f"no health status for {service!r}"
            return UNREACHABLE, f"{name}: {err.details() if isinstance(err, grpc.Call) else err}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (0: SERVING)."""
    parser = argparse.ArgumentParser(
        prog="python -m hearth.healthcheck", description="Exit 0 when the gRPC server at ADDRESS is SERVING."
    )
    parser.add_argument("address", help="host:port of the service's gRPC server")
    parser.add_argument("--service", default="", help="a service name to ask about; default: the server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    status, detail = check(args.address, args.service, args.timeout)
    print(f"{args.address} {status}" + (f" ({detail})" if detail else ""))
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

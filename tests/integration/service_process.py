"""One Hearth service as a child process (``python -m <module>``) on a free
port, its output in a log file: start it, wait until it is healthy, stop it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hearth.embedded import free_port, wait_healthy


def service_command(module: str, address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, "--listen", address, *args]


class ServiceProcess:
    """``python -m <module> --listen 127.0.0.1:<free port> <args>``, stdout and
    stderr appended to ``log_path``. ``start`` may follow ``stop`` (on a fresh
    port). As a context manager it starts, waits until healthy, and at the end
    stops and prints the log's tail (pytest shows it only when a test failed)."""

    def __init__(
        self,
        module: str,
        log_path: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        healthy_within: float = 30,
        stop_within: float = 10,
    ) -> None:
        self.module = module
        self.log_path = log_path
        self.args = args
        self.env = env
        self.healthy_within = healthy_within
        self.stop_within = stop_within
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process without waiting for it."""
        self.address = f"127.0.0.1:{free_port()}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                service_command(self.module, self.address, *self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    async def healthy(self) -> None:
        """Wait until it serves; if it exits or takes too long, stop it and fail with its log."""
        proc = self.proc
        assert proc is not None, "spawn first"
        waiting = asyncio.ensure_future(wait_healthy(self.address, timeout=self.healthy_within))
        while not waiting.done() and proc.poll() is None:
            await asyncio.wait([waiting], timeout=0.2)
        if not waiting.done():
            waiting.cancel()
        elif waiting.exception() is None:
            return
        self.stop()
        raise AssertionError(f"{self.module} did not become healthy:\n{self.log()[-5000:]}")

    def start(self) -> None:
        """Spawn and wait until healthy (from a thread without a running event loop)."""
        self.spawn()
        asyncio.run(self.healthy())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_within`` seconds; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_within)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        print(self.log()[-4000:])

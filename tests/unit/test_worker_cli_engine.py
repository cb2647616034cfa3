"""The cli engine against real small Python scripts run as the agent."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest

from hearth.chat import ChatMessage, render_plain
from hearth.errors import DeadlineExceeded, FailedPrecondition, Internal, NotFound
from workerd.adapters.engines.cli_engine import CliEngine, estimate_tokens
from workerd.domain import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MODEL = ServedModel("agent", context_length=10_000)

ECHO_ARGUMENT = """
import sys
sys.stdout.write("got: " + sys.argv[1])
"""

ECHO_STDIN = """
import sys
sys.stdout.write("got: " + sys.stdin.read())
"""

# Prints, flushes, then waits until the test has seen the first piece.
IN_PIECES = """
import pathlib, sys, time
sys.stdout.write("first part"); sys.stdout.flush()
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
sys.stdout.write(" second part"); sys.stdout.flush()
"""

# "é" (2 bytes), "€" (3 bytes) and "🔥" (4 bytes), each split across two writes.
SPLIT_UTF8 = """
import sys, time
data = "é € 🔥".encode()
for i in range(len(data)):
    sys.stdout.buffer.write(data[i:i + 1]); sys.stdout.buffer.flush()
    time.sleep(0.005)
"""

FAIL_WITH_3 = """
import sys
sys.stdout.write("partial"); sys.stdout.flush()
sys.stderr.write("x" * 6000 + "fatal: the repo is dirty\\n")
sys.exit(3)
"""

SLEEPER = """
import time
time.sleep(60)
"""

CHATTY = """
import sys, time
while True:
    sys.stdout.write("word " * 7); sys.stdout.flush()
    time.sleep(0.01)
"""

# Starts a child (in its own group, so also signalled), records both pids and
# how it is signalled, then waits. IGNORE names the signals it traps.
STUBBORN = """
import os, pathlib, signal, subprocess, sys, time
log = pathlib.Path(sys.argv[1])
ignore = sys.argv[2].split(",")

def note(signum, frame):
    with log.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")

for name in ignore:
    signal.signal(getattr(signal, name), note)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(log.parent / "pids").write_text(f"{os.getpid()} {child.pid}")
sys.stdout.write("ready"); sys.stdout.flush()
while True:
    time.sleep(0.01)
"""


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def request(job_id: str = "j1", prompt: str = "hello world", max_tokens: int = 1000) -> GenerationRequest:
    return GenerationRequest(job_id=job_id, model="agent", prompt=prompt, max_tokens=max_tokens)


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def collect(engine: CliEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(req)]


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., CliEngine]]:
    engines: list[CliEngine] = []

    def build(command: list[str], **options: float) -> CliEngine:
        engine = CliEngine(MODEL, command, **options)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        await engine.cleanup()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.02)


def test_the_command_template_is_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        CliEngine(MODEL, [])
    with pytest.raises(ValueError, match=r"\{foo\}"):
        CliEngine(MODEL, ["agent", "--task={foo}"])
    # JSON in an argument is not a placeholder.
    engine = CliEngine(MODEL, ["agent", '{"mode": "auto"}', "-p", "{prompt}"])
    assert engine.argv_for("fix it") == ["agent", '{"mode": "auto"}', "-p", "fix it"]


def test_token_estimate_counts_words() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("\n") == 1
    assert estimate_tokens("two words ") == 2


async def test_start_refuses_a_missing_program(make_engine: Callable[..., CliEngine]) -> None:
    engine = make_engine(["/nonexistent/agent-binary", "{prompt}"])
    with pytest.raises(FailedPrecondition) as caught:
        await engine.start()
    assert caught.value.reason == "CLI_COMMAND_NOT_FOUND"


async def test_prompt_as_an_argument(tmp_path: Path, make_engine: Callable[..., CliEngine]) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "arg", ECHO_ARGUMENT), "{prompt}"])
    await engine.start()
    prompt = 'it\'s "quoted" $HOME; rm -rf /'
    events = await collect(engine, request(prompt=prompt))

    assert events[0] == GenerationStarted(input_tokens=estimate_tokens(prompt))
    assert text_of(events) == "got: " + prompt
    finished = events[-1]
    assert isinstance(finished, GenerationFinished) and finished.finish_reason == "stop"
    assert finished.output_tokens == sum(e.token_count for e in events if isinstance(e, TokenDelta))
    assert engine.stats().running == 0


async def test_prompt_on_stdin_and_conversation_rendered(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "stdin", ECHO_STDIN)])
    await engine.start()
    messages = (ChatMessage("system", "be brief"), ChatMessage("user", "add tests"))
    req = GenerationRequest(job_id="j1", model="agent", prompt="", max_tokens=1000, messages=messages)
    events = await collect(engine, req)

    assert text_of(events) == "got: " + render_plain(messages)
    assert events[0] == GenerationStarted(estimate_tokens(render_plain(messages)))
    finished = events[-1]
    assert isinstance(finished, GenerationFinished) and finished.finish_reason == "stop"


async def test_unknown_model_is_refused(tmp_path: Path, make_engine: Callable[..., CliEngine]) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "arg", ECHO_ARGUMENT), "{prompt}"])
    await engine.start()
    with pytest.raises(NotFound):
        await collect(engine, GenerationRequest(job_id="j", model="other", prompt="x", max_tokens=5))


async def test_output_streams_before_the_agent_exits(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    go = tmp_path / "go"
    engine = make_engine([sys.executable, script(tmp_path, "pieces", IN_PIECES), str(go)])
    await engine.start()
    stream = engine.generate(request())
    assert isinstance(await anext(stream), GenerationStarted)

    first = await anext(stream)
    assert isinstance(first, TokenDelta) and first.text == "first part"
    go.touch()  # only now may the agent write the rest
    rest = [event async for event in stream]
    assert text_of(rest) == " second part"
    assert isinstance(rest[-1], GenerationFinished) and rest[-1].finish_reason == "stop"


async def test_multibyte_characters_split_across_writes(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "utf8", SPLIT_UTF8)])
    await engine.start()
    events = await collect(engine, request())
    deltas = [e for e in events if isinstance(e, TokenDelta)]

    assert "".join(d.text for d in deltas) == "é € 🔥"
    assert all("\ufffd" not in d.text for d in deltas)


async def test_nonzero_exit_raises_with_the_stderr_tail(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "fail", FAIL_WITH_3)])
    await engine.start()
    seen: list[GenerationEvent] = []
    with pytest.raises(Internal) as caught:
        async for event in engine.generate(request()):
            seen.append(event)

    err = caught.value
    assert err.reason == "CLI_EXIT_NONZERO"
    assert err.metadata["exit_code"] == "3"
    assert err.metadata["stderr_tail"].endswith("fatal: the repo is dirty")
    assert len(err.metadata["stderr_tail"]) <= 4096
    assert "status 3" in err.message and "the repo is dirty" in err.message
    assert text_of(seen) == "partial"


async def test_timeout_stops_the_agent(tmp_path: Path, make_engine: Callable[..., CliEngine]) -> None:
    engine = make_engine(
        [sys.executable, script(tmp_path, "sleep", SLEEPER)],
        timeout_seconds=0.3,
        interrupt_grace_seconds=2,
    )
    await engine.start()
    with pytest.raises(DeadlineExceeded) as caught:
        await collect(engine, request())
    assert caught.value.reason == "CLI_TIMEOUT"
    assert engine.stats().running == 0


async def test_max_tokens_finishes_with_length(tmp_path: Path, make_engine: Callable[..., CliEngine]) -> None:
    engine = make_engine([sys.executable, script(tmp_path, "chatty", CHATTY)], interrupt_grace_seconds=2)
    await engine.start()
    events = await collect(engine, request(max_tokens=10))

    assert events[-1] == GenerationFinished("length", 2, 10)
    assert len(text_of(events).split()) == 10
    assert engine.stats().running == 0


async def start_stubborn(
    tmp_path: Path, engine: CliEngine
) -> tuple[AsyncIterator[GenerationEvent], int, int, Path]:
    stream = engine.generate(request())
    assert isinstance(await anext(stream), GenerationStarted)
    assert await anext(stream) == TokenDelta("ready", 1)
    agent_pid, child_pid = map(int, (tmp_path / "pids").read_text().split())
    return stream, agent_pid, child_pid, tmp_path / "signals"


async def test_abort_ends_an_agent_that_ignores_sigint_by_sigterm(
    tmp_path: Path, make_engine: Callable[..., CliEngine], caplog: pytest.LogCaptureFixture
) -> None:
    log_file = tmp_path / "signals"
    engine = make_engine(
        [sys.executable, script(tmp_path, "stubborn", STUBBORN), str(log_file), "SIGINT"],
        interrupt_grace_seconds=0.3,
        # Long: if SIGTERM did not end it, the test would time out before SIGKILL.
        terminate_grace_seconds=30,
    )
    await engine.start()
    stream, agent_pid, child_pid, _ = await start_stubborn(tmp_path, engine)

    with caplog.at_level(logging.INFO, logger="workerd.adapters.engines.cli_engine"):
        assert await engine.abort("j1") is True
        rest = [event async for event in stream]

    assert rest == [GenerationFinished("aborted", 2, 1)]
    assert log_file.read_text().split() == ["SIGINT"]
    assert "ended by SIGTERM" in caplog.text
    assert gone(agent_pid)
    await wait_until(lambda: gone(child_pid))
    assert await engine.abort("j1") is False


async def test_abort_ends_an_agent_that_ignores_sigint_and_sigterm_by_sigkill(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    log_file = tmp_path / "signals"
    engine = make_engine(
        [sys.executable, script(tmp_path, "stubborn", STUBBORN), str(log_file), "SIGINT,SIGTERM"],
        interrupt_grace_seconds=0.2,
        terminate_grace_seconds=0.2,
    )
    await engine.start()
    stream, agent_pid, child_pid, _ = await start_stubborn(tmp_path, engine)

    assert await engine.abort("j1") is True
    rest = [event async for event in stream]

    assert isinstance(rest[-1], GenerationFinished) and rest[-1].finish_reason == "aborted"
    assert log_file.read_text().split() == ["SIGINT", "SIGTERM"]
    assert gone(agent_pid)
    await wait_until(lambda: gone(child_pid))


async def test_a_consumer_that_goes_away_stops_the_agent_and_cleanup_is_safe_twice(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    engine = make_engine(
        [sys.executable, script(tmp_path, "stubborn", STUBBORN), str(tmp_path / "signals"), "SIGINT"],
        interrupt_grace_seconds=0.2,
        terminate_grace_seconds=0.2,
    )
    await engine.start()
    stream, agent_pid, child_pid, _ = await start_stubborn(tmp_path, engine)

    await stream.aclose()  # type: ignore[attr-defined]
    await engine.cleanup()  # waits for the stop the consumer left behind
    await engine.cleanup()

    assert gone(agent_pid)
    await wait_until(lambda: gone(child_pid))
    assert engine.stats().running == 0


async def test_cleanup_aborts_running_generations(
    tmp_path: Path, make_engine: Callable[..., CliEngine]
) -> None:
    engine = make_engine(
        [sys.executable, script(tmp_path, "stubborn", STUBBORN), str(tmp_path / "signals"), "SIGINT"],
        interrupt_grace_seconds=0.2,
        terminate_grace_seconds=0.2,
    )
    await engine.start()
    stream, agent_pid, _, _ = await start_stubborn(tmp_path, engine)

    await engine.cleanup()
    rest = [event async for event in stream]

    assert isinstance(rest[-1], GenerationFinished) and rest[-1].finish_reason == "aborted"
    assert gone(agent_pid)

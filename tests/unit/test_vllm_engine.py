"""The vllm engine: its command line, VRAM share and restart policy, and the
supervision of a real child process standing in for `vllm serve`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import FailedPrecondition, Unavailable
from workerd.adapters.engines.vllm_engine import (
    RestartPolicy,
    VllmEngine,
    VllmOptions,
    build_vllm_command,
    gpu_memory_utilization,
)
from workerd.domain.engine import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    GenerationStarted,
    ServedModel,
    TokenDelta,
)
from workerd.domain.worker_status import GpuStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

GIB = 1024**3
MIB = 1024**2
SERVED = ServedModel("tiny", context_length=2048)


# --- the command line ---------------------------------------------------------------


def test_command_with_defaults() -> None:
    options = VllmOptions(model_path="/models/qwen", served_model_name="qwen", max_model_len=8192)

    assert build_vllm_command(options, port=8123, gpu_memory_utilization=0.5) == [
        "vllm",
        "serve",
        "/models/qwen",
        "--served-model-name",
        "qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.50",
    ]


def test_command_with_the_model_after_a_flag() -> None:
    options = VllmOptions(
        model_path="/models/tiny",
        executable=["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
        model_flag="--model",
    )

    command = build_vllm_command(options, port=8123, gpu_memory_utilization=0.9)

    assert command[:5] == [
        "/venv/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/tiny",
    ]
    assert command.count("/models/tiny") == 1


def test_command_with_tool_parser_and_extra_args() -> None:
    options = VllmOptions(
        model_path="Qwen/Qwen2.5-7B-Instruct-AWQ",
        served_model_name="qwen",
        tool_call_parser="hermes",
        extra_args=("--quantization", "awq"),
        executable=["/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main", "serve"],
        host="0.0.0.0",
    )

    command = build_vllm_command(options, port=9000, gpu_memory_utilization=0.87)

    assert command[:5] == [
        "/opt/vllm/bin/python",
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct-AWQ",
    ]
    assert "--max-model-len" not in command
    assert command[-7:] == [
        "--gpu-memory-utilization",
        "0.87",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--quantization",
        "awq",
    ]
    assert command[command.index("--host") + 1] == "0.0.0.0"


# --- the share of the card ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "free", "reserve", "share"),
    [
        (32 * GIB, 30 * GIB, 0, 0.93),  # 0.9375 rounded down
        (32 * GIB, 31 * GIB + 900 * MIB, 0, 0.95),  # clamped to 0.95
        (32 * GIB, 30 * GIB, 4 * GIB, 0.81),  # 26/32 = 0.8125
        (100, 29, 0, 0.29),  # exact, no float rounding below
        (100, 5, 0, 0.05),  # exactly the 5% floor
    ],
)
def test_gpu_memory_utilization(total: int, free: int, reserve: int, share: float) -> None:
    assert gpu_memory_utilization(total, free, reserve) == share


def test_gpu_memory_utilization_refuses_too_little() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        gpu_memory_utilization(32 * GIB, 3 * GIB, 2 * GIB)

    assert caught.value.reason == "INSUFFICIENT_VRAM"
    assert caught.value.metadata == {
        "total_bytes": str(32 * GIB),
        "free_bytes": str(3 * GIB),
        "reserve_bytes": str(2 * GIB),
    }


# --- the restart policy ---------------------------------------------------------------


def test_restart_policy_doubles_caps_and_gives_up() -> None:
    policy = RestartPolicy(max_restarts=5, initial_backoff=1.0, max_backoff=6.0, window_seconds=100.0)

    assert [policy.next_delay(t) for t in (0, 1, 2, 3, 4)] == [1.0, 2.0, 4.0, 6.0, 6.0]
    assert policy.next_delay(5) is None
    assert policy.next_delay(99) is None


def test_restart_policy_forgets_restarts_outside_the_window() -> None:
    policy = RestartPolicy(max_restarts=2, initial_backoff=0.5, max_backoff=60.0, window_seconds=10.0)

    assert (policy.next_delay(0.0), policy.next_delay(5.0), policy.next_delay(9.0)) == (0.5, 1.0, None)
    assert policy.next_delay(10.5) == 1.0  # the restart at 0 has left the window
    assert policy.next_delay(25.0) == 0.5  # and now both


def test_restart_policy_with_no_restarts_gives_up_at_once() -> None:
    assert RestartPolicy(0, 1.0, 60.0, 60.0).next_delay(0.0) is None


# --- a stand-in for `vllm serve` ---------------------------------------------------------------

FAKE_VLLM = textwrap.dedent(
    '''
    """Stands in for `vllm serve`: /health, /metrics, /v1/models and a streamed
    /v1/chat/completions. Controlled by files in $FAKE_VLLM_DIR."""
    import argparse, json, os, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    control = Path(os.environ["FAKE_VLLM_DIR"])
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--served-model-name", default="")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    args, _ = parser.parse_known_args()
    launch = len(list(control.glob("argv-*.json")))
    (control / f"argv-{launch}.json").write_text(json.dumps(sys.argv[1:]))
    (control / f"pid-{launch}").write_text(str(os.getpid()))
    print(f"INFO loading weights of {args.model}", flush=True)
    if (control / "crash-on-start").exists():
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(1)
    if (control / "spawn-helper").exists():
        # Like vLLM's engine core: a child that shares the output pipe and outlives a SIGKILL.
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (control / f"helper-{launch}").write_text(str(helper.pid))
    healthy = not (control / "never-healthy").exists()
    name = args.served_model_name or args.model
    METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
    # TYPE vllm:num_requests_running gauge
    vllm:num_requests_running{engine="0",model_name="%s"} 2.0
    # HELP vllm:num_requests_waiting Number of requests waiting to be processed.
    # TYPE vllm:num_requests_waiting gauge
    vllm:num_requests_waiting{engine="0",model_name="%s"} 1.0
    # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
    # TYPE vllm:kv_cache_usage_perc gauge
    vllm:kv_cache_usage_perc{engine="0",model_name="%s"} 0.5
    """ % (name, name, name)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, status, body, kind="application/json"):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.send(200 if healthy else 503, "")
            elif self.path == "/metrics":
                self.send(200, METRICS.replace("\\n    ", "\\n"), "text/plain; version=0.0.4")
            elif self.path == "/v1/models":
                self.send(200, json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}))
            else:
                self.send(404, "{}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            slow = "slow" in body["messages"][-1]["content"]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            def chunk(delta, finish=None, usage=None):
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
                data = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": name,
                        "choices": choices, "usage": usage}
                self.wfile.write(("data: " + json.dumps(data) + "\\n\\n").encode())
                self.wfile.flush()
            for i in range(200 if slow else 3):
                chunk({"content": f"w{i} "})
                if slow:
                    time.sleep(0.05)
            chunk({}, finish="length")
            chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
            self.wfile.write(b"data: [DONE]\\n\\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"INFO serving on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    '''
)


def no_gpu() -> GpuStatus:
    return GpuStatus(present=False)


@pytest.fixture
def fake_vllm(tmp_path: Path) -> tuple[Path, Path]:
    """(the script, its control folder)."""
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    control = tmp_path / "control"
    control.mkdir()
    return script, control


def make_engine(
    fake_vllm: tuple[Path, Path],
    *,
    read_gpu: Callable[[], GpuStatus] = no_gpu,
    **option_values: Any,
) -> VllmEngine:
    script, control = fake_vllm
    values: dict[str, Any] = {
        "model_path": "/models/tiny",
        "served_model_name": "tiny",
        "max_model_len": 2048,
        "executable": [sys.executable, str(script)],
        "load_timeout_seconds": 20.0,
        "restart_backoff_seconds": 0.05,
    }
    values.update(option_values)
    return VllmEngine(
        SERVED,
        VllmOptions(**values),
        read_gpu=read_gpu,
        env={"FAKE_VLLM_DIR": str(control)},
        metrics_interval_seconds=0.1,
    )


@pytest.fixture
async def engine(fake_vllm: tuple[Path, Path]) -> AsyncIterator[VllmEngine]:
    eng = make_engine(fake_vllm)
    await eng.start()
    yield eng
    await eng.cleanup()


def request(job_id: str, prompt: str = "hi") -> GenerationRequest:
    return GenerationRequest(job_id=job_id, model="tiny", prompt=prompt, max_tokens=3)


async def collect(engine: VllmEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(req)]


async def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


# --- supervision ---------------------------------------------------------------


async def test_launches_serves_and_reports_the_servers_load(
    engine: VllmEngine, fake_vllm: tuple[Path, Path]
) -> None:
    _, control = fake_vllm

    events = await collect(engine, request("a"))

    assert events == [
        GenerationStarted(1),
        TokenDelta("w0 ", 1),
        TokenDelta("w1 ", 1),
        TokenDelta("w2 ", 1),
        GenerationFinished("length", input_tokens=5, output_tokens=3),
    ]
    argv = json.loads((control / "argv-0.json").read_text())
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.90"  # no GPU: vLLM's default
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    await eventually(lambda: engine.stats().kv_cache_usage is not None)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (2, 1, 0.5)
    assert engine.state == "running"


async def test_restarts_a_crashed_server_and_fails_its_generations(
    engine: VllmEngine, fake_vllm: tuple[Path, Path]
) -> None:
    first_pid = engine.pid
    assert first_pid is not None
    stream = engine.generate(request("long", prompt="slow please"))
    await anext(stream)
    await anext(stream)

    os.kill(first_pid, 9)
    with pytest.raises(Unavailable) as caught:
        async for _ in stream:
            pass

    assert caught.value.reason == "ENGINE_RESTARTING"
    await eventually(lambda: engine.state == "running" and engine.pid not in (None, first_pid))
    assert engine.restarts == 1
    events = await collect(engine, request("after"))
    assert isinstance(events[-1], GenerationFinished) and events[-1].finish_reason == "length"


async def test_a_crash_is_seen_while_the_servers_own_child_holds_its_output_open(
    fake_vllm: tuple[Path, Path],
) -> None:
    _, control = fake_vllm
    (control / "spawn-helper").touch()
    eng = make_engine(fake_vllm)
    await eng.start()
    try:
        first_pid = eng.pid
        assert first_pid is not None
        helper = int((control / "helper-0").read_text())
        assert alive(helper)

        os.kill(first_pid, 9)

        await eventually(lambda: eng.state == "running" and eng.pid not in (None, first_pid))
        assert eng.restarts == 1
        await eventually(lambda: not alive(helper))  # the group went with the server
        events = await collect(eng, request("after"))
        assert isinstance(events[-1], GenerationFinished) and events[-1].finish_reason == "length"
    finally:
        await eng.cleanup()


def scheduling_of(pid: int) -> tuple[int, str | None]:
    """(nice, its autogroup's nice or None where there are no autogroups) of a process."""
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])  # stat field 19
    autogroup = Path(f"/proc/{pid}/autogroup")
    fields = autogroup.read_text().split() if autogroup.exists() else []
    return nice, fields[-1] if fields else None  # some kernels and sandboxes show an empty file


async def test_nice_lowers_the_servers_priority_and_its_sessions(fake_vllm: tuple[Path, Path]) -> None:
    own = scheduling_of(os.getpid())
    eng = make_engine(fake_vllm, nice=7)
    await eng.start()
    try:
        pid = eng.pid
        assert pid is not None
        nice, group = scheduling_of(pid)
        assert nice == 7
        assert group in ("7", None)
        assert scheduling_of(os.getpid()) == own  # workerd itself is left as it was
    finally:
        await eng.cleanup()


async def test_gives_up_after_restart_max(fake_vllm: tuple[Path, Path]) -> None:
    _, control = fake_vllm
    eng = make_engine(fake_vllm, restart_max=2)
    await eng.start()
    try:
        (control / "crash-on-start").touch()
        pid = eng.pid
        assert pid is not None
        os.kill(pid, 9)

        await eventually(lambda: eng.state == "failed")

        assert len(list(control.glob("argv-*.json"))) == 3  # the start and two failed restarts
        with pytest.raises(Unavailable) as caught:
            await anext(eng.generate(request("late")))
        assert caught.value.reason == "ENGINE_FAILED"
        assert eng.stats().running == 0 and eng.stats().kv_cache_usage is None
    finally:
        await eng.cleanup()


async def test_cleanup_stops_the_child_and_is_safe_twice(fake_vllm: tuple[Path, Path]) -> None:
    eng = make_engine(fake_vllm)
    await eng.start()
    pid = eng.pid
    assert pid is not None and alive(pid)
    stream = eng.generate(request("running", prompt="slow please"))
    await anext(stream)

    await eng.cleanup()
    await eng.cleanup()

    rest = [event async for event in stream]
    assert isinstance(rest[-1], GenerationFinished) and rest[-1].finish_reason == "aborted"
    assert not alive(pid)
    assert eng.state == "closed"


async def test_a_server_that_dies_while_loading_fails_start_with_its_output(
    fake_vllm: tuple[Path, Path],
) -> None:
    _, control = fake_vllm
    (control / "crash-on-start").touch()
    eng = make_engine(fake_vllm)

    with pytest.raises(Unavailable) as caught:
        await eng.start()
    await eng.cleanup()

    assert caught.value.reason == "ENGINE_START_FAILED"
    assert "CUDA out of memory" in caught.value.message
    assert "exited with code 1" in caught.value.message


async def test_a_server_that_never_gets_healthy_is_killed(fake_vllm: tuple[Path, Path]) -> None:
    _, control = fake_vllm
    (control / "never-healthy").touch()
    eng = make_engine(fake_vllm, load_timeout_seconds=1.0)

    with pytest.raises(Unavailable) as caught:
        await eng.start()
    await eng.cleanup()

    assert caught.value.reason == "ENGINE_START_FAILED"
    assert "did not become healthy" in caught.value.message
    assert "loading weights" in caught.value.message
    assert not alive(int((control / "pid-0").read_text()))


async def test_the_share_of_the_card_comes_from_the_gpu(fake_vllm: tuple[Path, Path]) -> None:
    _, control = fake_vllm
    gpu = GpuStatus(present=True, memory_total_bytes=32 * GIB, memory_free_bytes=30 * GIB)
    eng = make_engine(fake_vllm, read_gpu=lambda: gpu, reserve_mib=4096)
    await eng.start()
    await eng.cleanup()

    argv = json.loads((control / "argv-0.json").read_text())
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.81"


async def test_too_little_vram_fails_start_before_launching(fake_vllm: tuple[Path, Path]) -> None:
    _, control = fake_vllm
    gpu = GpuStatus(present=True, memory_total_bytes=32 * GIB, memory_free_bytes=1 * GIB)
    eng = make_engine(fake_vllm, read_gpu=lambda: gpu)

    with pytest.raises(FailedPrecondition) as caught:
        await eng.start()
    await eng.cleanup()

    assert caught.value.reason == "INSUFFICIENT_VRAM"
    assert list(control.glob("argv-*.json")) == []


# --- the real thing ---------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_real_vllm_serves_a_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from hearth.tinymodel import build_tiny_llama
    from workerd.adapters.gpu import NvmlGpuProbe

    # A head size of 64, which every vLLM attention backend supports.
    tiny_model_dir = build_tiny_llama(tmp_path / "tiny", context_length=256, hidden_size=128, heads=2)
    # The tiny tokenizer has no chat template, which /v1/chat/completions needs.
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")

    probe = NvmlGpuProbe(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    probe.open()
    eng = VllmEngine(
        ServedModel("tiny", context_length=256),
        VllmOptions(
            model_path=str(tiny_model_dir),
            served_model_name="tiny",
            max_model_len=256,
            executable=[sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"],
            extra_args=("--enforce-eager", "--chat-template", str(template)),
            load_timeout_seconds=600.0,
        ),
        read_gpu=probe.read,
        env={"HF_HUB_OFFLINE": "1"},
    )
    try:
        await eng.start()
        events = await collect(
            eng, GenerationRequest(job_id="g", model="tiny", prompt="The hearth", max_tokens=8)
        )
        await eventually(lambda: eng.stats().kv_cache_usage is not None, timeout=10)
    finally:
        await eng.cleanup()
        probe.close()

    assert isinstance(events[0], GenerationStarted)
    assert isinstance(events[-1], GenerationFinished)
    assert events[-1].finish_reason in ("stop", "length")
    assert events[-1].input_tokens > 0

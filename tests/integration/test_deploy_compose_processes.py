"""docker-compose.yml's five Hearth services run as local processes, as the file describes them.

No Docker engine runs here, so the test does what the containers would: for each Hearth service
it takes the compose ``command`` (a console script, run from this venv), the image's ENV (read
from its Dockerfile) and the compose ``environment`` (interpolated with .env.example's values),
with deploy/config mounted where HEARTH_CONFIG says. What a container network would give is
mapped, and only that:

* every compose host name and port (``routerd:7101``, a listen address ``0.0.0.0:7101``) becomes
  ``127.0.0.1:<a free port>``, in the config and in the environment alike; each service gets a
  metrics port of its own, as each container has;
* NATS and PostgreSQL are the test's own (a private nats-server, the module's PostgreSQL with a
  fresh database) instead of the nats and postgres containers;
* memoryd uses the embedded defaults the stack supports in place of the qdrant and TEI
  containers (Qdrant local mode in its data dir, the local all-MiniLM-L6-v2 embedder);
* the worker runs the sim engine, since there is no GPU for vLLM; the OTLP endpoint is empty, as
  no collector runs.

The services start in depends_on order, each once the compose healthcheck command (run as
written, with its address mapped) says the previous ones are healthy. Then a job goes through
orchestratord's gRPC API and one through the OpenAI-compatible API with the .env key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hearth.client import AsyncClient
from hearth.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.conftest import create_database
from tests.unit.test_deploy_compose import (
    CONFIG_DIR,
    SETTINGS_CLASSES,
    dockerfile_of,
    env_example,
    image_env,
    interpolate,
    load_compose,
    spec_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
#: Compose services the test provides itself or replaces (see the module docstring).
REPLACED = {"nats", "postgres", "qdrant", "tei-cpu", "tei-gpu", "otel-collector", "prometheus", "grafana"}


def start_order(services: dict[str, Any]) -> list[str]:
    """The Hearth services in an order that respects depends_on."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name not in SETTINGS_CLASSES:
            return
        for dependency in services[name].get("depends_on", {}):
            visit(dependency)
        order.append(name)

    for name in sorted(SETTINGS_CLASSES):
        visit(name)
    return order


class ComposeAsProcesses:
    """The compose file's Hearth services, their config and environment mapped to this machine."""

    def __init__(self, root: Path, nats_url: str, database_url: str) -> None:
        self.root = root
        self.env = env_example()
        self.services = interpolate(load_compose(), self.env)["services"]
        self.config_dir = root / "etc-hearth"
        self.config_dir.mkdir()
        # The compose address of each service -> a free local one; the metrics port likewise.
        self.address: dict[str, str] = {}
        self.local: dict[str, str] = {}
        self.metrics: dict[str, str] = {}
        config = yaml.safe_load((CONFIG_DIR / "hearth.yaml").read_text())
        for name in SETTINGS_CLASSES:
            port = str(config[spec_of(name).section]["listen"]).rpartition(":")[2]
            self.address[f"{name}:{port}"] = self.local[name] = f"127.0.0.1:{free_port()}"
            self.metrics[name] = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.nats_url = nats_url
        self.database_url = database_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._write_config(config)

    def map(self, value: str, service: str = "") -> str:
        """A config or environment value with compose addresses replaced by local ones."""
        value = value.replace("nats://nats:4222", self.nats_url)
        for compose_address, local in self.address.items():
            value = re.sub(rf"\b{re.escape(compose_address)}\b", local, value)
        value = value.replace("/etc/hearth/", f"{self.config_dir}/")
        if service:
            value = value.replace("/var/lib/hearth", str(self.root / f"data-{service}"))
        return value

    def _write_config(self, config: dict[str, Any]) -> None:
        for name in ("models.yaml", "policy.yaml"):
            (self.config_dir / name).write_text((CONFIG_DIR / name).read_text())
        mapped: dict[str, Any] = json.loads(self.map(json.dumps(config)))
        for name in SETTINGS_CLASSES:
            mapped[spec_of(name).section]["listen"] = self.local[name]
        mapped["orchestrator"]["http_listen"] = self.http
        # One port per container in compose; here each process gets its own through the environment.
        mapped["metrics_listen"] = ""
        mapped["data_dir"] = str(self.root / "data")  # the image's HEARTH_DATA_DIR wins, as in the container
        mapped["memory"]["qdrant_url"] = ""  # Qdrant local mode instead of the qdrant container
        text = yaml.safe_dump(mapped, sort_keys=False)
        assert not re.search(r"0\.0\.0\.0|\b(nats|postgres|qdrant|tei|otel-collector):\d", text), text
        (self.config_dir / "hearth.yaml").write_text(text)

    def environment(self, name: str) -> dict[str, str]:
        service = self.services[name]
        section = spec_of(name).section.upper()
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("HEARTH_")]:
            del env[key]
        image = {k: v for k, v in image_env(dockerfile_of(service)).items() if k not in ("PATH", "HOME")}
        for key, value in {**image, **service.get("environment", {})}.items():
            env[key] = self.map(str(value), name)
        # What the containers around the service would be, as the module docstring says.
        for key in ("HEARTH_ORCHESTRATOR_DATABASE_URL", "HEARTH_ROUTER_DATABASE_URL"):
            if key in env:
                assert env[key].endswith("@postgres:5432/hearth"), env[key]
                env[key] = self.database_url
        if "HEARTH_MEMORY_TEI_URL" in env:
            assert env["HEARTH_MEMORY_TEI_URL"] == "http://tei:80"
            env["HEARTH_MEMORY_TEI_URL"] = ""
        if env.get("HEARTH_OTLP_ENDPOINT"):
            assert env["HEARTH_OTLP_ENDPOINT"] == "http://otel-collector:4317"
            env["HEARTH_OTLP_ENDPOINT"] = ""
        if name == "workerd":
            assert env["HEARTH_WORKER_ENGINE"] == "vllm"
            env["HEARTH_WORKER_ENGINE"] = "sim"
            env["HF_HUB_OFFLINE"] = "1"
        env[f"HEARTH_{section}_METRICS_LISTEN"] = self.metrics[name]
        env["PYTHONUNBUFFERED"] = "1"
        leftover = {
            k: v for k, v in env.items() if k.startswith("HEARTH_") and re.search(r"\b[a-z-]+d:\d{4}\b", v)
        }
        assert leftover == {}, leftover
        return env

    def healthcheck(self, name: str) -> list[str]:
        """The compose healthcheck command, its container address mapped to the local one."""
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python"
        container_address = test[-1]
        assert container_address.startswith("127.0.0.1:")
        return [sys.executable, *test[2:-1], self.local[name]]

    def start(self, name: str) -> None:
        command = self.services[name]["command"]
        executable = BIN / command[0]
        assert executable.exists(), f"{command[0]} is not a console script of this venv"
        (self.root / f"data-{name}").mkdir(exist_ok=True)
        with (self.root / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(executable), *command[1:]],
                env=self.environment(name),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.log(name)}"
            check = subprocess.run(self.healthcheck(name), capture_output=True, text=True)
            if check.returncode == 0:
                assert "SERVING" in check.stdout
                return
            assert time.monotonic() < deadline, f"{name} not healthy: {check.stdout}\n{self.log(name)}"
            time.sleep(0.5)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[name] = proc.returncode
        return codes


@pytest.fixture(scope="module")
def nats() -> Iterator[EmbeddedNats]:
    with tempfile.TemporaryDirectory(prefix="hearth-nats-") as folder:
        server = EmbeddedNats(Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def compose_stack(
    nats: EmbeddedNats, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeAsProcesses]:
    database = asyncio.run(create_database(postgres))
    stack = ComposeAsProcesses(tmp_path_factory.mktemp("compose"), nats.url, database)
    order = start_order(stack.services)
    try:
        for name in order:
            # The healthcheck says "not healthy" before the service runs.
            early = subprocess.run(stack.healthcheck(name), capture_output=True, text=True)
            assert early.returncode == 1 and "UNREACHABLE" in early.stdout, early.stdout
            stack.start(name)
            stack.wait_healthy(name)
        yield stack
    finally:
        codes = stack.stop()
    # SIGTERM, as `docker compose down` sends it: every service leaves cleanly.
    assert codes == dict.fromkeys(order, 0), {name: stack.log(name) for name, code in codes.items() if code}


def test_the_services_start_in_depends_on_order() -> None:
    services = load_compose()["services"]
    order = start_order(services)
    assert sorted(order) == sorted(SETTINGS_CLASSES)
    for name in order:
        for dependency in services[name].get("depends_on", {}):
            if dependency in SETTINGS_CLASSES:
                assert order.index(dependency) < order.index(name), f"{name} before {dependency}"
    assert set(services) - set(order) == REPLACED


async def test_a_job_runs_through_the_compose_services(compose_stack: ComposeAsProcesses) -> None:
    local = compose_stack.local
    async with AsyncClient(
        orchestrator=local["orchestratord"],
        pool=local["pool-managerd"],
        memory=local["memoryd"],
        router=local["routerd"],
    ) as client:
        health = await client.health()
        assert set(health.values()) == {"SERVING"}, health
        workers = await client.list_workers()
        assert [w.info.address for w in workers] == [local["workerd"]]  # its advertised address, mapped
        memory = await client.memory_store("the compose stack keeps its memories", project_id="deploy")
        job = await client.run(
            "hello from compose", max_tokens=8, use_memory_context=True, project_id="deploy"
        ).result()
    assert memory.memory_id
    assert job.state == 3, (job.state, job.end_reason, job.end_message)  # JOB_STATE_COMPLETED
    assert job.run.model == "qwen2.5-7b-instruct" and job.run.engine == "sim"
    assert job.output


async def test_the_openai_api_takes_the_env_key(compose_stack: ComposeAsProcesses) -> None:
    key = compose_stack.env["HEARTH_API_KEY"]
    body = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with httpx.AsyncClient(base_url=f"http://{compose_stack.http}", timeout=60) as http:
        refused = await http.post("/v1/chat/completions", json=body)
        answered = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
    assert refused.status_code == 401
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"]


def test_every_service_serves_its_metrics(compose_stack: ComposeAsProcesses) -> None:
    for name, address in compose_stack.metrics.items():
        text = httpx.get(f"http://{address}/metrics", timeout=10).text
        assert f"hearth_{spec_of(name).section}_rpcs_total" in text, name

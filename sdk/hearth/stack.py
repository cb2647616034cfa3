"""The embedded stack: what ``hearth up`` runs, and what the end-to-end tests
start.

:class:`Stack` starts a private NATS and PostgreSQL unless URLs are
configured, builds a tiny random model when no model is configured, writes one
effective config file that every service reads, and runs the five services as
separate processes, as in production. Their log lines are relayed with the
service's name as a prefix. Each service serves Prometheus /metrics on a port
of its own (:attr:`Stack.metrics_addresses`); with ``StackOptions.prometheus``
a local Prometheus scrapes them with the scrape config and alert rules that
docker compose uses (deploy/observability, rendered by
:func:`render_scrape_config`). ``stop()`` stops everything in the reverse order
of start (Prometheus, then orchestratord first, so no new work arrives), then
the infrastructure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from hearth.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from hearth.runtime.settings import read_config_file

log = logging.getLogger(__name__)

#: Name of the file, in the data dir, that tells clients where the stack is.
STACK_FILE = "stack.json"
TINY_MODEL_NAME = "tiny-llama"
#: The Prometheus scrape config, alert rules and Grafana dashboards of the
#: repository, shared by docker compose, k8s and ``hearth up --metrics``.
OBSERVABILITY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "observability"
#: The label every Hearth scrape target carries: the service it is.
SERVICE_LABEL = "hearth_service"


@dataclass(frozen=True)
class ServiceSpec:
    """One service process: its name, module and yaml section."""

    name: str
    module: str
    section: str


#: In start order. Stop runs in reverse.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("memoryd", "memoryd", "memory"),
    ServiceSpec("routerd", "routerd", "router"),
    ServiceSpec("pool-managerd", "pool_managerd", "pool_manager"),
    ServiceSpec("workerd", "workerd", "worker"),
    ServiceSpec("orchestratord", "orchestratord", "orchestrator"),
)


@dataclass
class StackOptions:
    """How to run the stack.

    Attributes:
        data_dir: state: the embedded Postgres and NATS, Qdrant, models, traces.
        config: the user's hearth.yaml as a mapping (may be empty).
        log_sink: where relayed service log lines go (None: discard).
        pretty_logs: render JSON log lines as short text lines.
        health_timeout: how long to wait for all services to serve.
        extra_workers: more workerd processes, each a mapping of worker
            settings (engine, model, max_concurrency, sim_*...) that override
            the `worker:` section for that process.
        prometheus: once the services are healthy, start a local Prometheus
            (the ``prometheus`` binary, when installed) that scrapes them with
            the shipped scrape config and alert rules.
    """

    data_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    log_sink: TextIO | None = None
    pretty_logs: bool = True
    health_timeout: float = 180.0
    extra_workers: list[dict[str, Any]] = field(default_factory=list)
    prometheus: bool = False


class Stack:
    """The whole Hearth stack on one machine. ``start()``/``stop()``; stop is
    safe to call twice and after a failed start."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.config_path = self.data_dir / "hearth.effective.yaml"
        self.addresses: dict[str, str] = {}
        #: host:port of each service process's Prometheus /metrics. Set by prepare().
        self.metrics_addresses: dict[str, str] = {}
        #: The local Prometheus (StackOptions.prometheus), once started.
        self.prometheus: LocalPrometheus | None = None
        #: host:port of orchestratord's OpenAI-compatible HTTP API (base URL
        #: http://<http_address>/v1); empty when it is disabled. Set by prepare().
        self.http_address = ""
        self.config: dict[str, Any] = {}
        self.notes: list[str] = []
        self._nats: EmbeddedNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # Extra workers: name -> environment overriding the worker section.
        self._worker_env: dict[str, dict[str, str]] = {}
        self._relays: list[threading.Thread] = []
        self._sink_lock = threading.Lock()
        self._stopped = False

    # -- configuration -------------------------------------------------------

    def prepare(self) -> dict[str, Any]:
        """Start the infrastructure that is not configured and write the
        effective config. Returns it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = json.loads(json.dumps(self.options.config or {}))  # deep copy
        cfg.setdefault("data_dir", str(self.data_dir))
        for spec in SERVICES:
            section = cfg.setdefault(spec.section, {}) or {}
            cfg[spec.section] = section
            section.setdefault("listen", f"127.0.0.1:{free_port()}")
            self.addresses[spec.name] = section["listen"]
            # One port per process: a shared top-level metrics_listen cannot serve five of them.
            if not section.get("metrics_listen"):
                section["metrics_listen"] = f"127.0.0.1:{free_port()}"
            self.metrics_addresses[spec.name] = _client_address(section["metrics_listen"])

        if not cfg.get("nats_url"):
            self._nats = EmbeddedNats(self.data_dir / "nats")
            self._nats.start()
            cfg["nats_url"] = self._nats.url
        orch = cfg["orchestrator"]
        if not orch.get("database_url"):
            self._postgres = EmbeddedPostgres(self.data_dir / "postgres")
            self._postgres.start()
            orch["database_url"] = self._postgres.url
        # routerd keeps its budget ledger in the same database (its own tables and version table).
        cfg["router"].setdefault("database_url", orch["database_url"])
        orch.setdefault("router_address", self.addresses["routerd"])
        orch.setdefault("pool_address", self.addresses["pool-managerd"])
        orch.setdefault("memory_address", self.addresses["memoryd"])
        # memoryd submits its summary jobs to orchestratord (started after it;
        # the address is known already and the channel connects lazily).
        cfg["memory"].setdefault("orchestrator_address", self.addresses["orchestratord"])
        self.http_address = _pick_http_address(orch)

        worker = cfg["worker"]
        if not cfg.get("models") and worker.get("engine", "transformers") == "transformers":
            from hearth.tinymodel import build_tiny_llama

            path = build_tiny_llama(self.data_dir / "models" / TINY_MODEL_NAME)
            cfg["models"] = [
                {"name": TINY_MODEL_NAME, "path": str(path), "context_length": 2048, "roles": ["default"]}
            ]
            self.notes.append(
                f"No model configured: using {TINY_MODEL_NAME}, a tiny randomly initialised model made in "
                f"{path}. Its text is noise. To serve a real model, list it in hearth.yaml, e.g.\n"
                "  models:\n    - name: qwen2.5-0.5b\n      path: /models/Qwen2.5-0.5B-Instruct\n"
                "      context_length: 32768\n      roles: [default]\n"
                "and start with `hearth up --config hearth.yaml`."
            )
        if not worker.get("model") and cfg.get("models"):
            worker["model"] = cfg["models"][0]["name"]
        for index, overrides in enumerate(self.options.extra_workers, start=2):
            name = f"workerd-{index}"
            values = {
                "listen": f"127.0.0.1:{free_port()}",
                "metrics_listen": f"127.0.0.1:{free_port()}",
                "worker_id": name,
                **overrides,
            }
            self._worker_env[name] = {f"HEARTH_WORKER_{k.upper()}": _env_value(v) for k, v in values.items()}
            self.addresses[name] = values["listen"]
            self.metrics_addresses[name] = _client_address(values["metrics_listen"])
        self.config = cfg
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return cfg

    # -- processes -----------------------------------------------------------

    def client(self) -> Any:
        """An AsyncClient (not yet entered) for every service of this started stack."""
        from hearth.client import AsyncClient

        return AsyncClient(
            orchestrator=self.addresses["orchestratord"],
            pool=self.addresses["pool-managerd"],
            memory=self.addresses["memoryd"],
            router=self.addresses["routerd"],
        )

    def start(self) -> None:
        """Start everything and wait until every service is healthy and a
        worker has joined the pool."""
        try:
            self.prepare()
            for name in self.service_names():
                self.start_service(name)
            self.wait_ready(self.options.health_timeout)
            if self.options.prometheus:
                self.start_prometheus()
            self.write_stack_file()
        except BaseException:
            self.stop()
            raise

    def scrape_targets(self) -> dict[str, list[str]]:
        """The /metrics address of every service process, by service (extra workers under workerd)."""
        targets: dict[str, list[str]] = {}
        for name, address in self.metrics_addresses.items():
            service = "workerd" if name in self._worker_env else name
            targets.setdefault(service, []).append(address)
        return targets

    def start_prometheus(self, *, scrape_interval: str | None = None) -> LocalPrometheus | None:
        """Start a Prometheus in <data_dir>/prometheus that scrapes this stack with the shipped
        scrape config and alert rules. None, with a note, where the prometheus binary or the
        shipped config is missing."""
        binary = shutil.which("prometheus")
        if binary is None:
            self.notes.append(
                "prometheus is not installed, so no local Prometheus runs (Debian/Ubuntu: "
                "`apt-get install prometheus`); each service's /metrics is listed above."
            )
            return None
        if not (OBSERVABILITY_DIR / "prometheus" / "prometheus.yml").is_file():
            self.notes.append(
                f"no Prometheus config at {OBSERVABILITY_DIR}/prometheus (it ships in the repository's "
                "deploy/ folder): no local Prometheus runs."
            )
            return None
        prometheus = LocalPrometheus(self.data_dir / "prometheus", binary=binary)
        config = render_scrape_config(
            load_scrape_config(),
            self.scrape_targets(),
            prometheus_address=prometheus.address,
            rule_files=[str(OBSERVABILITY_DIR / "prometheus" / "rules" / "*.yml")],
            scrape_interval=scrape_interval,
        )
        prometheus.start(config)
        self.prometheus = prometheus
        return prometheus

    def service_names(self) -> list[str]:
        """Every service process in start order (extra workers after workerd)."""
        names = [spec.name for spec in SERVICES]
        at = names.index("workerd") + 1
        return names[:at] + list(self._worker_env) + names[at:]

    def start_service(self, name: str) -> None:
        spec = _spec("workerd" if name in self._worker_env else name)
        env = dict(os.environ)
        env.update(self._worker_env.get(name, {}))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", spec.module, "--config", str(self.config_path)]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._procs[name] = proc
        relay = threading.Thread(target=self._relay, args=(name, proc), daemon=True, name=f"relay-{name}")
        relay.start()
        self._relays.append(relay)

    def _relay(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            sink = self.options.log_sink
            if sink is None or not line:
                continue
            text = _pretty(line) if self.options.pretty_logs else line
            with self._sink_lock:
                sink.write(f"{name:>13} | {text}\n")
                sink.flush()
        code = proc.wait()
        if not self._stopped and self.options.log_sink is not None:
            with self._sink_lock:
                self.options.log_sink.write(f"{name:>13} | exited with code {code}\n")
                self.options.log_sink.flush()

    def wait_ready(self, timeout: float) -> None:
        import asyncio

        from hearth.embedded import wait_healthy

        async def ready() -> None:
            for name in self.service_names():
                address = self.addresses[name]
                proc = self._procs.get(name)
                deadline = time.monotonic() + timeout
                while True:
                    if proc is not None and proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with code {proc.returncode} during start")
                    try:
                        await wait_healthy(address, timeout=1.0)
                        break
                    except TimeoutError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{name} not healthy after {timeout:.0f}s") from None
            await self._wait_worker_joined(timeout)

        asyncio.run(ready())

    async def _wait_worker_joined(self, timeout: float) -> None:
        import asyncio

        import grpc

        from hearth.api.pool.v1 import pool_pb2, pool_pb2_grpc

        deadline = time.monotonic() + timeout
        async with grpc.aio.insecure_channel(self.addresses["pool-managerd"]) as channel:
            stub = pool_pb2_grpc.PoolServiceStub(channel)
            while True:
                reply = await stub.ListWorkers(pool_pb2.ListWorkersRequest(), timeout=2)
                if len(reply.workers) >= 1 + len(self._worker_env):
                    self.addresses["workers"] = ",".join(w.info.address for w in reply.workers)
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("no worker joined the pool")
                await asyncio.sleep(0.1)

    def write_stack_file(self) -> Path:
        info = {
            "orchestrator": self.addresses["orchestratord"],
            "router": self.addresses["routerd"],
            "pool_manager": self.addresses["pool-managerd"],
            "memory": self.addresses["memoryd"],
            "http_address": self.http_address,
            "metrics": dict(self.metrics_addresses),
            "prometheus": self.prometheus.url if self.prometheus is not None else "",
            "workers": [a for a in self.addresses.get("workers", "").split(",") if a],
            "nats_url": self.config.get("nats_url", ""),
            "data_dir": str(self.data_dir),
            "pid": os.getpid(),
        }
        path = self.data_dir / STACK_FILE
        path.write_text(json.dumps(info, indent=2))
        return path

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self._procs[name]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one service (tests use it to kill a worker)."""
        proc = self._procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)

    def stop_service(self, name: str, timeout: float = 20.0) -> int | None:
        proc = self._procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", name, timeout)
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart_service(self, name: str) -> None:
        self.stop_service(name)
        self.start_service(name)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.prometheus is not None:
            self.prometheus.stop()
        for name in reversed(self.service_names()):
            self.stop_service(name)
        for relay in self._relays:
            relay.join(timeout=5)
        if self._nats is not None:
            self._nats.stop()
        if self._postgres is not None:
            self._postgres.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STACK_FILE).unlink()


class LocalPrometheus:
    """A prometheus child process: config, rules and TSDB under ``folder``, on
    a free loopback port. start()/stop(); stop() is safe twice and before
    start()."""

    def __init__(self, folder: Path, *, binary: str = "prometheus", port: int = 0) -> None:
        self.folder = Path(folder)
        self.binary = binary
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.config_path = self.folder / "prometheus.yml"
        self.log_path = self.folder / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, config: Mapping[str, Any], timeout: float = 30.0) -> None:
        """Write ``config`` and start Prometheus; returns once it answers /-/ready.

        Raises:
            RuntimeError: it exited, or was not ready within ``timeout`` (its log's end is in the message).
        """
        import httpx

        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address={self.address}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=7d",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self._proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready after {timeout:.0f}s: {self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def load_scrape_config(path: Path | None = None) -> dict[str, Any]:
    """The shipped Prometheus config (deploy/observability/prometheus/prometheus.yml)."""
    path = path or OBSERVABILITY_DIR / "prometheus" / "prometheus.yml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return data


def render_scrape_config(
    shipped: Mapping[str, Any],
    targets: Mapping[str, Sequence[str]],
    *,
    prometheus_address: str,
    rule_files: Sequence[str],
    scrape_interval: str | None = None,
) -> dict[str, Any]:
    """The shipped scrape config for a stack whose services are not at their compose addresses.

    Each job whose static targets carry the ``hearth_service`` label scrapes ``targets`` of
    that service instead (labels kept; a service with no targets drops its job); the job
    named ``prometheus`` scrapes ``prometheus_address``; jobs of other parts of the compose
    stack (the OpenTelemetry collector) are dropped, as they do not run here. ``rule_files``
    replaces the rule file paths; ``scrape_interval`` (e.g. "1s") the global scrape and
    evaluation intervals. Everything else is as shipped.
    """
    config: dict[str, Any] = json.loads(json.dumps(dict(shipped)))  # deep copy
    jobs = []
    for job in config.get("scrape_configs") or []:
        statics = job.get("static_configs") or []
        labelled = [g for g in statics if SERVICE_LABEL in (g.get("labels") or {})]
        if labelled:
            groups = []
            for group in labelled:
                service = group["labels"][SERVICE_LABEL]
                if targets.get(service):
                    groups.append({**group, "targets": list(targets[service])})
            if groups:
                jobs.append({**job, "static_configs": groups})
        elif job.get("job_name") == "prometheus":
            jobs.append({**job, "static_configs": [{"targets": [prometheus_address]}]})
    config["scrape_configs"] = jobs
    config["rule_files"] = list(rule_files)
    if scrape_interval:
        config.setdefault("global", {})
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
        for job in jobs:
            job.pop("scrape_interval", None)
    return config


def _client_address(listen: str) -> str:
    """The address a client on this machine uses for a listen address (0.0.0.0 -> 127.0.0.1)."""
    host, _, port = str(listen).rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _env_value(value: Any) -> str:
    """A setting as the environment carries it: lists and mappings as JSON."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def _pick_http_address(orchestrator: dict[str, Any]) -> str:
    """Fix the port of orchestratord's HTTP API in its config section (a free
    one unless a port is configured), so that the stack knows the address
    before the process starts; returns the address clients use, "" when the
    API is disabled (http_listen set empty)."""
    listen = orchestrator.setdefault("http_listen", "127.0.0.1:0")
    if not listen:
        return ""
    host, _, port = str(listen).rpartition(":")
    host = host or "127.0.0.1"
    if port in ("", "0"):
        port = str(free_port())
        orchestrator["http_listen"] = f"{host}:{port}"
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _spec(name: str) -> ServiceSpec:
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown service {name!r}; one of {', '.join(s.name for s in SERVICES)}")


def _pretty(line: str) -> str:
    """A JSON log line as 'level message' (trace id shortened), else as is."""
    if not line.startswith("{"):
        return line
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    text = f"{entry.get('level', ''):<7} {entry.get('message', '')}"
    if entry.get("trace_id"):
        text += f"  trace={entry['trace_id'][:8]}"
    if entry.get("exception"):
        text += "\n" + str(entry["exception"])
    return text


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read a hearth.yaml into a mapping (empty when there is none)."""
    return {} if path is None else read_config_file(path)


def run_until_signal(stack: Stack, on_ready: Callable[[], None] | None = None) -> int:
    """Start the stack, wait for SIGINT/SIGTERM, stop. Returns an exit code."""
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        if on_ready is not None:
            on_ready()
        while not stopping.wait(0.5):
            pass
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

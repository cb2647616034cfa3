"""`hearth doctor`: each check against real small things (a model folder, sockets, a NATS
greeting, HTTP servers, a fake distribution on sys.path) and GPU reports of our own GpuReport
type, since this machine has no GPU; the command itself through typer's CliRunner."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from hearth.cli import doctor
from hearth.cli.doctor import (
    Check,
    DoctorInputs,
    GpuDevice,
    GpuReport,
    check_clock,
    check_disk,
    check_gpu,
    check_infrastructure,
    check_models,
    check_packages,
    check_ports,
    check_python,
    check_vllm,
    effective_config,
    read_nvml,
)
from hearth.embedded import EmbeddedNats, EmbeddedPostgres, free_port

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

GIB = 1 << 30
RTX_5090 = GpuDevice(0, "NVIDIA GeForce RTX 5090", (12, 0), 32 * GIB, 30 * GIB)
GTX_1080 = GpuDevice(0, "NVIDIA GeForce GTX 1080", (6, 1), 8 * GIB, 7 * GIB)
BLACKWELL = GpuReport(devices=(RTX_5090,), driver_version="570.133.07", cuda_version=(12, 8))
NO_GPU = GpuReport(error="NVML Shared Library Not Found")
VLLM_WORKER = {"worker": {"engine": "vllm", "model": "q"}}


def inputs(config: dict[str, Any], tmp_path: Path, gpu: GpuReport = NO_GPU, **kw: Any) -> DoctorInputs:
    return DoctorInputs(config, None, tmp_path, read_gpu=lambda: gpu, timeout=1.0, **kw)


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


# -- python, packages, GPU, vLLM ---------------------------------------------------------------


def test_python_range() -> None:
    assert check_python().status == "ok"
    assert check_python((3, 10, 14)).status == "fail"
    assert check_python((3, 14, 0)).status == "fail"
    assert check_python((3, 13, 1)).status == "ok"


def test_packages_of_the_installed_hearth_are_met() -> None:
    checks = check_packages()
    assert statuses(checks)["packages"] == "ok", checks
    assert "hearth 0.1.0" in checks[0].detail


def test_packages_names_a_missing_and_a_mismatched_requirement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "doctorfake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: doctorfake\nVersion: 1.0\n"
        "Requires-Dist: grpcio<1.0\nRequires-Dist: no-such-package-for-doctor>=1\n"
        'Requires-Dist: pytest>=1; extra == "dev"\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (check, *_rest) = check_packages("doctorfake")
    assert check.status == "fail"
    assert "no-such-package-for-doctor missing" in check.detail
    assert "grpcio" in check.detail and "(needs <1.0)" in check.detail
    assert "pytest" not in check.detail  # an extra's requirement
    assert check_packages("no-such-distribution-at-all")[0].status == "fail"


def test_no_gpu_is_a_warning_with_what_to_do() -> None:
    (check,) = check_gpu(NO_GPU)
    assert check.status == "warn" and "no GPU" in check.detail and check.fix
    # NVML on this machine: a report either way, never an exception.
    report = read_nvml()
    assert isinstance(report, GpuReport) and (report.error or report.devices)


def test_a_gpu_is_described_by_driver_cuda_capability_and_free_memory() -> None:
    (check,) = check_gpu(BLACKWELL)
    assert check.status == "ok"
    for part in (
        "RTX 5090",
        "compute capability 12.0 (sm_120)",
        "30.0 of 32.0 GiB free",
        "570.133.07",
        "CUDA 12.8",
    ):
        assert part in check.detail


@pytest.mark.parametrize(
    ("report", "vllm", "status", "words"),
    [
        (BLACKWELL, "0.11.0", "ok", "supports"),
        (BLACKWELL, "0.8.5", "fail", "no kernels for sm_120"),
        (GpuReport((RTX_5090,), "560.35", (12, 6)), "0.11.0", "fail", "needs CUDA 12.8+"),
        (GpuReport((GTX_1080,), "550.1", (12, 4)), "0.11.0", "fail", "compute capability 7.0"),
        (BLACKWELL, None, "warn", "not installed"),
        (NO_GPU, None, "warn", "no GPU here"),
    ],
)
def test_vllm_support(report: GpuReport, vllm: str | None, status: str, words: str) -> None:
    check = check_vllm(VLLM_WORKER, report, vllm)
    assert check is not None and check.status == status and words in check.detail, check


def test_vllm_is_not_checked_where_nothing_needs_it() -> None:
    assert check_vllm({}, NO_GPU, None) is None
    check = check_vllm({}, BLACKWELL, None)
    assert check is not None and check.status == "ok"  # a GPU, no vLLM wanted: just say it could run


def test_the_worker_pinned_gpu_is_the_one_checked() -> None:
    report = GpuReport(devices=(GTX_1080, GpuDevice(1, "RTX 5090", (12, 0), 32 * GIB, 30 * GIB)),
                       driver_version="570.1", cuda_version=(12, 8))  # fmt: skip
    pinned = {"worker": {"engine": "vllm", "cuda_visible_devices": "1"}}
    check = check_vllm(pinned, report, "0.11.0")
    assert check is not None and check.status == "ok"
    assert check_vllm(VLLM_WORKER, report, "0.11.0").status == "fail"  # type: ignore[union-attr]


# -- models ----------------------------------------------------------------------------------


def test_a_model_folder_and_its_fit_on_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = {"models": [{"name": "tiny", "path": str(tiny_model_dir)}]}
    (check,) = check_models(inputs(config, tmp_path, BLACKWELL), BLACKWELL)
    assert check.status == "ok" and "needs" in check.detail and "GiB free" in check.detail
    (on_cpu,) = check_models(inputs(config, tmp_path), NO_GPU)
    assert on_cpu.status == "ok" and "CPU" in on_cpu.detail


def test_a_model_that_does_not_fit_or_is_missing_fails(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = {
        "models": [
            {"name": "huge", "path": str(tiny_model_dir), "vram_mib": 40 * 1024},
            {"name": "tight", "path": str(tiny_model_dir), "vram_mib": 29 * 1024},
            {"name": "gone", "path": str(tmp_path / "nowhere")},
            {"name": "empty", "path": str(tmp_path)},
        ],
        "worker": {"vllm_reserve_mib": 2048},
    }
    found = statuses(check_models(inputs(config, tmp_path, BLACKWELL), BLACKWELL))
    assert found == {"model huge": "fail", "model tight": "warn", "model gone": "fail", "model empty": "fail"}


def test_remote_cli_and_hub_models(tmp_path: Path) -> None:
    config = {
        "models": [
            {"name": "claude", "engine": "anthropic", "api_key_env": "DOCTOR_TEST_KEY"},
            {"name": "lan", "engine": "openai", "base_url": "http://192.168.1.2:11434/v1"},
            {"name": "agent", "engine": "cli", "command": ["no-such-agent-binary", "{prompt}"]},
            {"name": "py", "engine": "cli", "command": [sys.executable]},
            {"name": "qwen", "engine": "vllm", "upstream_model": "Qwen/Qwen2.5-7B-Instruct"},
        ]
    }
    found = statuses(check_models(inputs(config, tmp_path, environ={}), NO_GPU))
    assert found == {
        "model claude": "warn",
        "model lan": "ok",
        "model agent": "fail",
        "model py": "ok",
        "model qwen": "ok",
    }
    with_key = check_models(inputs(config, tmp_path, environ={"DOCTOR_TEST_KEY": "x"}), NO_GPU)
    assert statuses(with_key)["model claude"] == "ok"


def test_models_from_the_models_file(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models:\n  - name: s\n    engine: sim\n")
    config_path = tmp_path / "hearth.yaml"
    found = check_models(DoctorInputs({"models_file": "models.yaml"}, config_path, tmp_path), NO_GPU)
    assert statuses(found) == {"model s": "ok"}
    (tmp_path / "models.yaml").write_text("models:\n  - nme: s\n")
    assert statuses(
        check_models(DoctorInputs({"models_file": "models.yaml"}, config_path, tmp_path), NO_GPU)
    ) == {"models": "fail"}


# -- ports, disk, clock ---------------------------------------------------------------------------


def test_a_configured_port_in_use_fails_and_a_free_one_passes() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        free = free_port()
        config = {"orchestrator": {"listen": f"127.0.0.1:{busy}"}, "router": {"listen": f"127.0.0.1:{free}"}}
        (check,) = check_ports(config, None)
        assert check.status == "fail" and str(busy) in check.detail and "orchestrator.listen" in check.detail
        assert check_ports(config, running_pid=1234)[0].status == "ok"  # the running stack holds them
    assert check_ports({"router": {"listen": f"127.0.0.1:{free}"}}, None)[0].status == "ok"
    assert check_ports({"router": {"listen": "127.0.0.1:0"}}, None)[0].detail.startswith("no fixed ports")
    clash = {"router": {"listen": f"127.0.0.1:{free}"}, "memory": {"listen": f"127.0.0.1:{free}"}}
    assert check_ports(clash, None)[0].status == "fail"


def test_disk_thresholds(tmp_path: Path) -> None:
    def usage(free: int) -> Any:
        return lambda _path: SimpleNamespace(free=free)

    assert check_disk(tmp_path / "not" / "yet", usage(500 << 20)).status == "fail"
    assert check_disk(tmp_path, usage(5 * GIB)).status == "warn"
    assert check_disk(tmp_path, usage(50 * GIB)).status == "ok"
    assert check_disk(tmp_path).status in ("ok", "warn", "fail")  # the real disk answers


def test_clock_skew_thresholds() -> None:
    assert check_clock(None).status == "ok"
    assert check_clock(0.3).status == "ok"
    assert check_clock(-5.0).status == "warn"
    assert check_clock(120.0).status == "fail"


# -- infrastructure -----------------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    codes: dict[str, int] = {}

    def do_GET(self) -> None:
        self.send_response(self.codes.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Handler", (_Health,), {"codes": {"/readyz": 200, "/health": 200}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_qdrant_and_tei_are_asked_for_health(http_server: tuple[str, type[_Health]], tmp_path: Path) -> None:
    url, handler = http_server
    config = {
        "nats_url": f"nats://127.0.0.1:{free_port()}",
        "memory": {"qdrant_url": url, "tei_url": url, "rerank_url": url},
    }
    found = statuses(asyncio.run(check_infrastructure(inputs(config, tmp_path))))
    assert found["qdrant"] == found["tei"] == found["tei rerank"] == "ok"
    assert found["nats"] == "fail"  # nothing listens there
    handler.codes = {"/readyz": 503}
    found = statuses(asyncio.run(check_infrastructure(inputs(config, tmp_path))))
    assert found["qdrant"] == "fail" and found["tei"] == "fail"


def test_unconfigured_parts_are_the_embedded_ones(tmp_path: Path) -> None:
    found = statuses(asyncio.run(check_infrastructure(inputs({}, tmp_path))))
    assert found == {"nats": "ok", "postgres": "ok", "qdrant": "ok", "tei": "ok", "clock": "ok"}


def test_a_postgres_that_does_not_answer_fails(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://hearth:pw@127.0.0.1:{free_port()}/hearth"
    config = {"orchestrator": {"database_url": url}, "router": {"database_url": url}}
    checks = asyncio.run(check_infrastructure(inputs(config, tmp_path)))
    assert [c.status for c in checks if c.name == "postgres"] == ["fail"]  # one check for one URL
    assert "orchestrator.database_url" in next(c.detail for c in checks if c.name == "postgres")


@pytest.mark.integration
def test_a_real_nats_with_jetstream(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        found = {
            c.name: c for c in asyncio.run(check_infrastructure(inputs({"nats_url": server.url}, tmp_path)))
        }
    finally:
        server.stop()
    assert found["nats"].status == "ok" and "JetStream on" in found["nats"].detail


@pytest.mark.integration
def test_a_real_postgres_and_its_clock(postgres: EmbeddedPostgres, tmp_path: Path) -> None:
    config = {"orchestrator": {"database_url": postgres.url}}
    found = {c.name: c for c in asyncio.run(check_infrastructure(inputs(config, tmp_path)))}
    assert found["postgres"].status == "ok" and "PostgreSQL" in found["postgres"].detail
    assert found["clock"].status == "ok" and "against PostgreSQL" in found["clock"].detail


def test_environment_urls_override_the_file() -> None:
    config = effective_config(
        {"nats_url": "nats://nats:4222", "memory": {"tei_url": "http://tei:80"}},
        {"HEARTH_NATS_URL": "nats://127.0.0.1:1", "HEARTH_MEMORY_TEI_URL": "", "HEARTH_OTHER": "x"},
    )
    assert config == {"nats_url": "nats://127.0.0.1:1", "memory": {"tei_url": ""}}


# -- the command -----------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    doctor.register(app)
    return app


def test_the_command_prints_one_line_per_check_and_exits_0_without_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEARTH_CONFIG", raising=False)
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert all(line.split()[0] in ("ok", "warn", "fail") for line in lines)
    names = {line[5:21].strip() for line in lines}
    assert {
        "python",
        "packages",
        "nats",
        "postgres",
        "qdrant",
        "tei",
        "disk",
        "clock",
        "ports",
        "stack",
    } <= names


def test_the_command_exits_1_on_a_failure_and_speaks_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path))
    config = tmp_path / "hearth.yaml"
    config.write_text(f"nats_url: nats://127.0.0.1:{free_port()}\n")
    result = CliRunner().invoke(_app(), ["doctor", "--config", str(config), "--json", "--timeout", "0.5"])
    assert result.exit_code == 1, result.output
    checks = json.loads(result.output)
    nats = next(c for c in checks if c["name"] == "nats")
    assert nats["status"] == "fail" and nats["fix"]
    assert set(checks[0]) == {"name", "status", "detail", "fix"}
    missing = CliRunner().invoke(_app(), ["doctor", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2

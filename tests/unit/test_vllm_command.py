"""Finding the vLLM server's command when worker.vllm_command is not set."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hearth.runtime import load_settings
from workerd.adapters.engines.factory import build_engine
from workerd.adapters.engines.vllm_command import (
    API_SERVER_MODULE,
    VENV_NAME,
    VllmCommand,
    default_search_dirs,
    find_vllm_command,
    venv_python,
)
from workerd.adapters.engines.vllm_engine import VllmEngine, build_vllm_command
from workerd.config import Settings
from workerd.domain.worker_status import GpuStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def make_venv(folder: Path, *, with_vllm: bool = True, executable: bool = True) -> Path:
    """A folder laid out like a virtualenv: bin/python and, with vllm, its server module."""
    venv = folder / VENV_NAME
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755 if executable else 0o644)
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    if with_vllm:
        server = site / "vllm" / "entrypoints" / "openai" / "api_server.py"
        server.parent.mkdir(parents=True)
        server.write_text("")
    return venv


def no_vllm_on_path(_name: str) -> str | None:
    return None


def test_a_configured_command_wins_and_says_how_to_pass_the_model(tmp_path: Path) -> None:
    make_venv(tmp_path)

    serve = find_vllm_command(configured=["/opt/vllm/bin/vllm", "serve"], python="/usr/bin/python3")
    module = find_vllm_command(configured=["/opt/py", "-m", API_SERVER_MODULE], search_dirs=[tmp_path])

    assert serve == VllmCommand(("/opt/vllm/bin/vllm", "serve"), "", "vllm_command")
    assert module == VllmCommand(("/opt/py", "-m", API_SERVER_MODULE), "--model", "vllm_command")


def test_vllm_python_comes_before_a_venv(tmp_path: Path) -> None:
    make_venv(tmp_path)

    command = find_vllm_command(python="/opt/vllm-env/bin/python", search_dirs=[tmp_path])

    assert command == VllmCommand(
        ("/opt/vllm-env/bin/python", "-m", API_SERVER_MODULE), "--model", "vllm_python"
    )


def test_finds_the_venv_of_make_install_in_the_first_folder_that_has_one(tmp_path: Path) -> None:
    empty, with_venv, later = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    empty.mkdir()
    venv = make_venv(with_venv)
    make_venv(later)

    command = find_vllm_command(search_dirs=[empty, with_venv, later], which=no_vllm_on_path)

    assert command.argv == (str(venv / "bin" / "python"), "-m", API_SERVER_MODULE)
    assert (command.model_flag, command.source) == ("--model", str(venv))


def test_a_venv_without_vllm_or_a_runnable_python_is_passed_over(tmp_path: Path) -> None:
    no_vllm, not_runnable = tmp_path / "a", tmp_path / "b"
    make_venv(no_vllm, with_vllm=False)
    make_venv(not_runnable, executable=False)

    assert venv_python(no_vllm / VENV_NAME) is None
    assert venv_python(not_runnable / VENV_NAME) is None
    command = find_vllm_command(search_dirs=[no_vllm, not_runnable], which=lambda name: f"/usr/bin/{name}")
    assert command == VllmCommand(("vllm", "serve"), "", "PATH")


def test_nothing_found_falls_back_to_vllm_serve_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        command = find_vllm_command(search_dirs=[tmp_path], which=no_vllm_on_path)

    assert command == VllmCommand(("vllm", "serve"), "", "default")
    assert "no vLLM found" in caplog.text and "vllm_python" in caplog.text


def test_the_source_checkout_is_searched() -> None:
    # workerd runs from this checkout here: its root holds pyproject.toml and services/.
    root = default_search_dirs()[0]

    assert (root / "pyproject.toml").is_file() and (root / "services" / "worker" / "workerd").is_dir()


def vllm_settings(tmp_path: Path, *flags: str) -> Settings:
    config = tmp_path / "hearth.yaml"
    config.write_text("models:\n  - name: m\n    path: /models/m\n    context_length: 1024\n")
    return load_settings(Settings, ["--config", str(config), "--engine", "vllm", "--model", "m", *flags])


def test_the_api_server_gets_the_model_after_model_flag(tmp_path: Path) -> None:
    """The factory builds the found command into the engine; the model follows --model."""
    venv = make_venv(tmp_path)
    settings = vllm_settings(tmp_path, "--vllm-python", str(venv / "bin" / "python"))

    engine = build_engine(settings, "m", read_gpu=lambda: GpuStatus(present=False))

    assert isinstance(engine, VllmEngine)
    command = build_vllm_command(engine._options, port=9, gpu_memory_utilization=0.5)
    assert command[:5] == [str(venv / "bin" / "python"), "-m", API_SERVER_MODULE, "--model", "/models/m"]
    assert command[command.index("--served-model-name") + 1] == "m"


def test_vllm_python_must_be_an_executable_file(tmp_path: Path) -> None:
    not_executable = tmp_path / "python"
    not_executable.write_text("")

    for python in (not_executable, tmp_path / "missing"):
        with pytest.raises(SystemExit) as caught:
            vllm_settings(tmp_path, "--vllm-python", str(python))
        assert f"worker.vllm_python {str(python)!r} is not an executable file" in str(caught.value)
    not_executable.chmod(0o755)
    assert vllm_settings(tmp_path, "--vllm-python", str(not_executable)).vllm_python == str(not_executable)
    assert vllm_settings(tmp_path).vllm_command == []  # unset: the worker finds it

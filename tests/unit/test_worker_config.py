"""workerd's settings: engine, model and defaults validated at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.runtime import load_settings
from workerd.config import Settings

pytestmark = pytest.mark.unit


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hearth.yaml"
    path.write_text(text)
    return str(path)


def test_sim_needs_no_models_entry() -> None:
    settings = load_settings(Settings, ["--engine", "sim", "--sim-max-batch", "16"])

    assert settings.model == "sim"
    assert settings.max_concurrency == 32
    assert settings.worker_id


def test_transformers_model_comes_from_the_models_list(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"models:\n  - name: tiny\n    path: {tmp_path}\n    context_length: 512\n"
        "worker:\n  model: tiny\n  worker_id: w7\n",
    )

    settings = load_settings(Settings, ["--config", config])

    entry = settings.model_config_entry()
    assert entry is not None and entry.context_length == 512
    assert (settings.engine, settings.worker_id, settings.max_concurrency) == ("transformers", "w7", 8)


def test_a_model_not_in_the_list_exits_with_a_clear_message(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, f"models:\n  - name: a\n    path: {tmp_path}\n  - name: b\n    path: {tmp_path}\n"
    )

    with pytest.raises(SystemExit) as caught:
        load_settings(Settings, ["--config", config, "--model", "x"])

    assert "worker.model 'x' is not in models: (a, b)" in str(caught.value)


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(Settings, ["--engine", "tpu"])

    assert "worker.engine 'tpu' is not one of: transformers, vllm, openai, anthropic, cli, sim" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("engine", "entry", "problem"),
    [
        ("openai", "name: m", "has no base_url"),
        ("cli", "name: m", "has no command"),
        ("vllm", "name: m", "has neither path nor upstream_model"),
    ],
)
def test_each_engine_names_what_its_models_entry_lacks(
    tmp_path: Path, engine: str, entry: str, problem: str
) -> None:
    config = write_config(tmp_path, f"models:\n  - {entry}\n")

    with pytest.raises(SystemExit) as caught:
        load_settings(Settings, ["--config", config, "--engine", engine, "--model", "m"])

    assert f"models entry 'm': {problem}" in str(caught.value)


def test_remote_engines_get_their_own_default_concurrency(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "models:\n  - name: m\n    engine: openai\n    base_url: http://127.0.0.1:9/v1\n"
    )

    settings = load_settings(Settings, ["--config", config, "--engine", "openai", "--model", "m"])

    assert settings.max_concurrency == 64

"""`hearth models` through typer's CliRunner, on a catalog in a temp data dir."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hearth.cli import app
from hearth.tinymodel import build_tiny_llama

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

Invoke = Callable[..., Any]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("source") / "tiny-llama")


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.delenv("HEARTH_MODELS_DIR", raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, ["--data-dir", str(tmp_path / "data"), "models", *args], input=input)

    return run


def test_pull_prints_the_models_config_for_hearth_yaml(
    invoke: Invoke, tiny_source: Path, tmp_path: Path
) -> None:
    result = invoke("pull", str(tiny_source), "--name", "tiny")

    assert result.exit_code == 0, result.output
    snippet = yaml.safe_load(result.stdout)
    assert snippet == {
        "models": [
            {
                "name": "tiny",
                "path": str((tmp_path / "data" / "models" / "tiny").absolute()),
                "context_length": 2048,
                "vram_mib": snippet["models"][0]["vram_mib"],
            }
        ]
    }
    assert snippet["models"][0]["vram_mib"] >= 1
    assert "pulled tiny" in result.stderr


def test_list_as_a_table_and_as_json(invoke: Invoke, tiny_source: Path) -> None:
    assert "no models" in invoke("list").stderr
    invoke("pull", str(tiny_source), "--name", "tiny")

    table = invoke("list")
    as_json = invoke("list", "--json")

    assert table.exit_code == 0 and "tiny" in table.stdout and "float32" in table.stdout
    entries = json.loads(as_json.stdout)
    assert [e["name"] for e in entries] == ["tiny"]
    assert entries[0]["context_length"] == 2048 and entries[0]["parameters"] > 0
    assert entries[0]["source"] == f"path:{tiny_source.resolve()}"


def test_verify_exits_nonzero_when_a_file_changed(invoke: Invoke, tiny_source: Path, tmp_path: Path) -> None:
    invoke("pull", str(tiny_source), "--name", "tiny")
    ok = invoke("verify", "tiny")
    assert ok.exit_code == 0 and "tiny: ok" in ok.stdout

    (tmp_path / "data" / "models" / "tiny" / "config.json").write_text("{}")
    bad = invoke("verify", "tiny")
    bad_json = invoke("verify", "tiny", "--json")

    assert bad.exit_code == 1
    assert "changed: config.json" in bad.stdout
    assert bad_json.exit_code == 1
    assert json.loads(bad_json.stdout)["changed"] == ["config.json"]


def test_errors_are_one_line_with_the_reason(invoke: Invoke, tiny_source: Path) -> None:
    invoke("pull", str(tiny_source), "--name", "tiny")

    twice = invoke("pull", str(tiny_source), "--name", "tiny")
    unknown = invoke("verify", "nope")

    assert twice.exit_code == 2 and "error: MODEL_EXISTS" in twice.stderr
    assert unknown.exit_code == 2 and "error: MODEL_NOT_FOUND" in unknown.stderr
    assert invoke("pull", str(tiny_source), "--name", "tiny", "--force").exit_code == 0


def test_rm_asks_unless_yes(invoke: Invoke, tiny_source: Path) -> None:
    invoke("pull", str(tiny_source), "--name", "tiny")

    declined = invoke("rm", "tiny", input="n\n")
    assert declined.exit_code != 0
    assert json.loads(invoke("list", "--json").stdout)[0]["name"] == "tiny"

    confirmed = invoke("rm", "tiny", input="y\n")
    assert confirmed.exit_code == 0 and "removed tiny" in confirmed.stderr
    assert json.loads(invoke("list", "--json").stdout) == []

    invoke("pull", str(tiny_source), "--name", "tiny")
    assert invoke("rm", "tiny", "--yes").exit_code == 0
    assert invoke("rm", "tiny", "--yes").exit_code == 2


def test_models_dir_overrides_the_data_dir(invoke: Invoke, tiny_source: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"

    pulled = invoke("pull", str(tiny_source), "--models-dir", str(elsewhere))

    assert pulled.exit_code == 0, pulled.output
    assert (elsewhere / "tiny-llama" / "hearth-model.json").is_file()
    listed = json.loads(invoke("list", "--json", "--models-dir", str(elsewhere)).stdout)
    assert [e["name"] for e in listed] == ["tiny-llama"]
    assert json.loads(invoke("list", "--json").stdout) == []

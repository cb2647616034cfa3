"""Finding a running stack: HEARTH_*_ADDRESS variables, then <data_dir>/stack.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.client import ADDRESS_ENV, AsyncClient, Client, discover_addresses
from hearth.errors import FailedPrecondition

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (*ADDRESS_ENV.values(), "HEARTH_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)


def write_stack(data_dir: Path, **overrides: object) -> None:
    stack = {
        "orchestrator": "127.0.0.1:7100",
        "router": "127.0.0.1:7101",
        "pool_manager": "127.0.0.1:7102",
        "memory": "127.0.0.1:7103",
        "workers": ["127.0.0.1:7200", "127.0.0.1:7201"],
        "nats_url": "nats://127.0.0.1:4222",
        "data_dir": str(data_dir),
        "pid": os.getpid(),
        **overrides,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "stack.json").write_text(json.dumps(stack))


def test_stack_json_gives_every_address(tmp_path: Path) -> None:
    write_stack(tmp_path)

    client = AsyncClient.from_env(tmp_path)

    assert client.addresses.named() == {
        "orchestrator": "127.0.0.1:7100",
        "router": "127.0.0.1:7101",
        "pool": "127.0.0.1:7102",
        "memory": "127.0.0.1:7103",
        "worker-1": "127.0.0.1:7200",
        "worker-2": "127.0.0.1:7201",
    }


def test_environment_variables_win_over_stack_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stack(tmp_path)
    monkeypatch.setenv("HEARTH_ORCHESTRATOR_ADDRESS", "10.0.0.5:7100")

    found = discover_addresses(tmp_path)

    assert found.orchestrator == "10.0.0.5:7100"
    assert found.pool == "127.0.0.1:7102"


def test_environment_alone_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_MEMORY_ADDRESS", "127.0.0.1:9000")

    found = discover_addresses(tmp_path)

    assert found.named() == {"memory": "127.0.0.1:9000"}


def test_data_dir_defaults_to_hearth_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stack(tmp_path / "stack-a", orchestrator="127.0.0.1:7300")
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "stack-a"))

    assert discover_addresses().orchestrator == "127.0.0.1:7300"


def test_data_dir_defaults_to_dot_hearth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_stack(tmp_path / ".hearth", orchestrator="127.0.0.1:7400")
    monkeypatch.chdir(tmp_path)

    assert discover_addresses().orchestrator == "127.0.0.1:7400"


def test_no_stack_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        Client.from_env(tmp_path)

    assert caught.value.reason == "STACK_NOT_FOUND"
    assert caught.value.message == "no running stack found; start one with `hearth up`"


def test_a_stack_json_left_by_a_dead_process_is_ignored(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    write_stack(tmp_path, pid=int(finished.stdout))

    with pytest.raises(FailedPrecondition) as caught:
        discover_addresses(tmp_path)

    assert caught.value.reason == "STACK_NOT_FOUND"
    assert "stale" in caught.value.message


def test_an_unreadable_stack_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")

    with pytest.raises(FailedPrecondition) as caught:
        discover_addresses(tmp_path)

    assert caught.value.reason == "STACK_FILE_INVALID"
    assert "stack.json" in caught.value.message

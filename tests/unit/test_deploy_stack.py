"""`hearth up`'s metrics: a /metrics port per service process, the addresses it prints, and the
shipped scrape config rendered for the embedded stack (what `hearth up --metrics` gives its
Prometheus; tests/integration/test_deploy_prometheus.py runs one against a live stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from hearth.cli import up
from hearth.stack import (
    OBSERVABILITY_DIR,
    SERVICES,
    Stack,
    StackOptions,
    load_scrape_config,
    render_scrape_config,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

# URLs configured, so that prepare() starts no NATS or PostgreSQL; a sim worker builds no model.
CONFIG = {
    "nats_url": "nats://127.0.0.1:4222",
    "orchestrator": {"database_url": "postgresql+asyncpg://u@/db?host=/tmp"},
    "worker": {"engine": "sim"},
}


def prepared(tmp_path: Path, config: dict[str, Any] | None = None, **options: Any) -> Stack:
    stack = Stack(StackOptions(data_dir=tmp_path, config=dict(config or CONFIG), **options))
    stack.prepare()
    return stack


def test_each_service_process_gets_a_metrics_port_of_its_own(tmp_path: Path) -> None:
    stack = prepared(tmp_path, extra_workers=[{"engine": "sim"}])
    assert list(stack.metrics_addresses) == [*(s.name for s in SERVICES), "workerd-2"]
    ports = [address.rpartition(":")[2] for address in stack.metrics_addresses.values()]
    assert len(set(ports)) == len(ports)
    effective = yaml.safe_load(stack.config_path.read_text())
    for spec in SERVICES:
        assert effective[spec.section]["metrics_listen"] == stack.metrics_addresses[spec.name]
    assert (
        stack._worker_env["workerd-2"]["HEARTH_WORKER_METRICS_LISTEN"] == stack.metrics_addresses["workerd-2"]
    )
    assert stack.scrape_targets()["workerd"] == [
        stack.metrics_addresses["workerd"],
        stack.metrics_addresses["workerd-2"],
    ]


def test_a_configured_metrics_address_is_kept(tmp_path: Path) -> None:
    config = {**CONFIG, "router": {"metrics_listen": "0.0.0.0:9555"}}
    stack = prepared(tmp_path, config)
    assert stack.metrics_addresses["routerd"] == "127.0.0.1:9555"  # what a client on this machine uses


def test_hearth_up_prints_every_metrics_address(tmp_path: Path) -> None:
    stack = prepared(tmp_path)
    lines = up.ready_lines(stack)
    assert lines[0].startswith("hearth: all services healthy")
    for name, address in stack.metrics_addresses.items():
        assert f"hearth: metrics of {name} at http://{address}/metrics" in lines
    assert not any("Prometheus at" in line for line in lines)


def test_the_shipped_scrape_config_is_rendered_for_the_stack(tmp_path: Path) -> None:
    stack = prepared(tmp_path, extra_workers=[{"engine": "sim"}])
    shipped = load_scrape_config()
    config = render_scrape_config(
        shipped,
        stack.scrape_targets(),
        prometheus_address="127.0.0.1:9999",
        rule_files=["/r/*.yml"],
        scrape_interval="1s",
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"hearth-{s.name}" for s in SERVICES} | {"prometheus"}  # no collector here
    for spec in SERVICES:
        (group,) = jobs[f"hearth-{spec.name}"]["static_configs"]
        assert group["labels"] == {"hearth_service": spec.name}
        assert group["targets"] == stack.scrape_targets()[spec.name]
    assert len(jobs["hearth-workerd"]["static_configs"][0]["targets"]) == 2
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert config["rule_files"] == ["/r/*.yml"]
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["global"]["external_labels"] == shipped["global"]["external_labels"]
    # The shipped mapping itself is left as it was.
    assert shipped == load_scrape_config()
    partial = render_scrape_config(
        shipped, {"routerd": ["127.0.0.1:1"]}, prometheus_address="x:1", rule_files=[]
    )
    assert {job["job_name"] for job in partial["scrape_configs"]} == {"hearth-routerd", "prometheus"}


def test_no_prometheus_binary_means_a_note_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    stack = prepared(tmp_path)
    assert stack.start_prometheus() is None
    assert stack.prometheus is None
    assert any("prometheus is not installed" in note for note in stack.notes)


def test_the_observability_files_ship_with_the_checkout() -> None:
    assert (OBSERVABILITY_DIR / "prometheus" / "prometheus.yml").is_file()
    assert list((OBSERVABILITY_DIR / "prometheus" / "rules").glob("*.yml"))


def test_hearth_up_has_a_metrics_option() -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    up.register(app)
    result = CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--metrics" in result.output

"""The Grafana dashboards and provisioning of deploy/observability, and the metric names they and
the alert rules use.

The dashboards are read as Grafana reads them: JSON with a schemaVersion, panels whose datasource
is the provisioned Prometheus by uid, targets with unique refIds, no instance or address written
into a query. Every metric name a panel or a rule selects must be one the services define, found
in their source as ``hearth_<service>_<what>`` (the live check is
tests/integration/test_deploy_prometheus.py, which runs each query against a real Prometheus).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD_DIR = OBSERVABILITY / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
PROVISIONING = OBSERVABILITY / "grafana" / "provisioning"
RULES = OBSERVABILITY / "prometheus" / "rules" / "hearth.rules.yml"
#: The service part of metric names, by the folder of the service's package.
SERVICE_OF_FOLDER = {
    "orchestrator": "orchestrator",
    "router": "router",
    "pool-manager": "pool_manager",
    "worker": "worker",
    "memory": "memory",
}
_METRIC = re.compile(r"\b(hearth_[a-z0-9_]+|up)\b(?!\s*\()")
_LABELS = re.compile(r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(_LABELS.sub(" ", expr)))


def defined_metrics() -> set[str]:
    """Every series name the services' code defines (histograms with _bucket, _sum, _count)."""
    names: set[str] = set()
    constructor = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*f\"hearth_\{[^}]+\}_([a-z0-9_]+)\"")
    helper = re.compile(r"\.(counter|histogram)\(\s*\"([a-z0-9_]+)\"")

    def add(service: str, kind: str, what: str) -> None:
        name = f"hearth_{service}_{what}"
        names.update(
            [f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind.lower() == "histogram" else [name]
        )

    for folder, service in SERVICE_OF_FOLDER.items():
        for path in (REPO / "services" / folder).rglob("*.py"):
            text = path.read_text()
            for kind, what in constructor.findall(text) + helper.findall(text):
                add(service, kind, what)
        # Every service's host registers these (hearth.runtime.metrics.ServiceMetrics).
        runtime = (REPO / "sdk" / "hearth" / "runtime" / "metrics.py").read_text()
        for kind, what in constructor.findall(runtime):
            add(service, kind, what)
    return names | {"up"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def provisioned_uid() -> str:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    uid: str = sources[0]["uid"]
    return uid


def test_there_are_the_four_dashboards() -> None:
    assert {load(p)["uid"] for p in DASHBOARDS} == {
        "hearth-overview",
        "hearth-workers",
        "hearth-router",
        "hearth-memory",
    }
    for path in DASHBOARDS:
        assert path.stem == load(path)["uid"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_grafana_dashboard_json(path: Path) -> None:
    board = load(path)
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"].startswith("Hearth / ") and board["uid"] and "id" not in board
    assert isinstance(board["templating"]["list"], list) and board["time"]["from"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    uid = provisioned_uid()
    for panel in panels(board):
        where = f"{path.stem} / {panel['title']}"
        assert panel["description"], where
        assert (
            set(panel["gridPos"]) == {"h", "w", "x", "y"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, where
            expr = target["expr"]
            assert not re.search(r"\binstance\s*(=|!=|=~|!~)", expr), f"{where}: a hard-coded instance"
            assert not re.search(r"[\w.-]+:\d{2,5}\b", expr), f"{where}: an address in {expr}"


def test_the_dashboards_show_what_operators_look_for() -> None:
    exprs = {
        load(p)["uid"]: " ".join(t["expr"] for x in panels(load(p)) for t in x["targets"]) for p in DASHBOARDS
    }
    wanted = {
        "hearth-overview": [
            "hearth_orchestrator_jobs_ended_total",
            "hearth_orchestrator_queue_depth",
            "hearth_orchestrator_time_to_first_token_seconds_bucket",
            "hearth_worker_decode_rate_tokens_per_second_bucket",
            "hearth_worker_generated_tokens_total",
            'state="FAILED"',
        ],
        "hearth-workers": [
            "hearth_worker_gpu_memory_free_bytes",
            "hearth_worker_kv_cache_usage_ratio",
            "hearth_worker_running_requests",
            "hearth_worker_waiting_requests",
            "hearth_worker_models",
        ],
        "hearth-router": [
            "hearth_router_decisions_total",
            "position, result) (rate(hearth_router_attempts_total",
            "hearth_router_breakers",
            "hearth_router_budget_spent",
            "hearth_router_budget_usage_ratio",
        ],
        "hearth-memory": [
            "hearth_memory_stored_total",
            "hearth_memory_query_duration_seconds_bucket",
            "hearth_memory_collection_points",
        ],
    }
    for uid, needles in wanted.items():
        for needle in needles:
            assert needle in exprs[uid], f"{uid} lacks {needle}"
    heatmaps = [p for path in DASHBOARDS for p in panels(load(path)) if p["type"] == "heatmap"]
    assert {t["format"] for p in heatmaps for t in p["targets"]} == {"heatmap"}
    assert len(heatmaps) == 2  # time to first token, decode rate


def test_every_metric_of_the_dashboards_and_rules_is_defined_by_a_service() -> None:
    defined = defined_metrics()
    # The scan finds what the services define, and nothing that only looks like a name.
    assert {
        "hearth_orchestrator_queue_depth",
        "hearth_memory_rpcs_total",
        "hearth_router_breakers",
    } <= defined
    assert "hearth_router_rpc_duration_seconds_bucket" in defined
    assert "hearth_worker_queue_depth" not in defined
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                for name in metric_names(target["expr"]):
                    used.setdefault(name, set()).add(f"{path.stem} / {panel['title']}")
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(f"rule {rule['alert']}")
    unknown = {name: sorted(places) for name, places in used.items() if name not in defined}
    assert unknown == {}


def test_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_in = mounts["./deploy/observability/grafana/dashboards"]
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "hearth.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_in
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_in + "/") and (DASHBOARD_DIR / Path(home).name).is_file()
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose
    prometheus = compose["prometheus"]
    mounted = dict(v.split(":")[:2] for v in prometheus["volumes"] if v.startswith("./"))
    assert mounted["./deploy/observability/prometheus/rules"] == "/etc/prometheus/rules"
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_the_scrape_config_has_one_labelled_job_per_service() -> None:
    from tests.unit.test_deploy_compose import SETTINGS_CLASSES, hearth_config

    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = str(hearth_config()["metrics_listen"]).rpartition(":")[2]
    for service in SETTINGS_CLASSES:
        (group,) = jobs[f"hearth-{service}"]["static_configs"]
        assert group == {"targets": [f"{service}:{port}"], "labels": {"hearth_service": service}}
    assert jobs["otel-collector"]["static_configs"] == [{"targets": ["otel-collector:8888"]}]

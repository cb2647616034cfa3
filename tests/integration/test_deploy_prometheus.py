"""The shipped Prometheus config, alert rules and Grafana dashboards against a real Prometheus
scraping a running stack.

A real ``prometheus`` (Debian's package: ``make install`` installs it where apt-get works)
scrapes the embedded stack (a sim worker) with deploy/observability/prometheus/prometheus.yml,
rendered for the stack's ports by :func:`hearth.stack.render_scrape_config` (the code
``hearth up --metrics`` runs) at a 1 s interval. After two rounds of jobs (some of them fail on
their deadline) and memory calls, every query of every dashboard panel must return at least one
finite sample, and every alert rule's expression must evaluate: the error-rate alert fires (a
quarter of the jobs failed), every other alert is quiet, and each metric an alert names exists,
so a quiet alert is never quiet because of a misspelt metric. ``promtool`` checks the rules and
runs their unit tests (deploy/observability/prometheus/tests).

Without the prometheus binary the tests skip and say so; nothing else replaces them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import client_for, start_stack, stop_stack

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "deploy" / "observability"
RULES = OBSERVABILITY / "prometheus" / "rules" / "hearth.rules.yml"
RULE_TESTS = OBSERVABILITY / "prometheus" / "tests" / "hearth.rules.test.yml"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="*** prometheus/promtool NOT INSTALLED: the Prometheus checks of the shipped scrape config, "
        "alert rules and dashboards did NOT run. `make install` installs Debian's prometheus package "
        "where apt-get works (as root). ***",
    ),
]

MODEL = "sim-deploy"
#: What Grafana puts in for its interval variables when it sends a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
#: Every alert of the rules file and whether the workload below makes it fire.
EXPECTED_FIRING = {
    "HearthServiceDown": False,
    "HearthServiceMissing": False,
    "HearthQueueNearlyFull": False,
    "HearthQueueFull": False,
    "HearthJobErrorRate": True,  # 3 of 12 jobs fail on their deadline
    "HearthTimeToFirstTokenHigh": False,
    "HearthKvCacheNearlyFull": False,
    "HearthGpuMemoryLow": False,
    "HearthWorkerRequestsWaiting": False,
    "HearthModelLoadFailed": False,
    "HearthBudgetNearLimit": False,
    "HearthCircuitBreakerOpen": False,
    "HearthMemoryQueriesSlow": False,
}
_METRIC = re.compile(r"\b(hearth_[a-z0-9_]+|up)\b(?!\s*\()")
#: Label matchers and label lists, which name labels rather than metrics.
_LABELS = re.compile(r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    return set(_METRIC.findall(_LABELS.sub(" ", expr)))


def _grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _rules() -> list[dict[str, Any]]:
    import yaml

    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _panel_targets() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((board["uid"], panel["title"], target["expr"]))
    return found


class PrometheusApi:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert reply["status"] == "success", f"{expr}: {reply}"
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def series(self, name: str) -> list[dict[str, str]]:
        reply = httpx.get(f"{self.url}/api/v1/series", params={"match[]": name}, timeout=10).json()
        assert reply["status"] == "success", reply
        found: list[dict[str, str]] = reply["data"]
        return found

    def get(self, path: str) -> Any:
        reply = httpx.get(f"{self.url}{path}", timeout=10).json()
        assert reply["status"] == "success", reply
        return reply["data"]


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


async def _workload(stack: Any, round_: int, ok_jobs: int, failing_jobs: int) -> list[str]:
    """Jobs that complete, jobs that fail on their deadline, memories stored and queried, and
    calls to the OpenAI-compatible API. Returns the end reasons of the failed jobs."""
    async with client_for(stack) as client:
        done = [client.run(f"hello {round_}-{i}", max_tokens=12).result() for i in range(ok_jobs)]
        # 400 sim tokens take 4 s; the job's deadline is half a second.
        late = [
            client.run(f"slow {round_}-{i}", max_tokens=400, timeout=0.5).result()
            for i in range(failing_jobs)
        ]
        jobs = await asyncio.gather(*done, *late)
        for index in range(3):
            await client.memory_store(
                f"the greenhouse faces south, note {round_}-{index}", project_id="deploy"
            )
        for _ in range(2):
            await client.memory_query("which way does the greenhouse face?", project_id="deploy")
    async with httpx.AsyncClient(base_url=f"http://{stack.http_address}") as http:
        assert (await http.get("/v1/models")).status_code == 200
    failed = [job.end_reason for job in jobs if job.end_reason]
    assert len(failed) == failing_jobs, [(job.state, job.end_reason) for job in jobs]
    return failed


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    config = {
        "models": [{"name": MODEL, "engine": "sim", "context_length": 8192, "roles": ["default"]}],
        "worker": {"engine": "sim", "model": MODEL, "sim_decode_seconds_per_step": 0.01},
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-prometheus"), config)
    try:
        prometheus = stack.start_prometheus(scrape_interval="1s")
        assert prometheus is not None, stack.notes
        api = PrometheusApi(prometheus.url)
        _wait_for(
            lambda: len([r for r in api.query('up{hearth_service!=""} == 1')]) == 5, 30, "5 services up"
        )
        # Two rounds a few scrapes apart: a labelled counter appears at its first increment, and a
        # rate needs the increments after its first sample.
        failed = asyncio.run(_workload(stack, 1, ok_jobs=2, failing_jobs=1))
        time.sleep(3)
        failed += asyncio.run(_workload(stack, 2, ok_jobs=7, failing_jobs=2))
        time.sleep(3)
        yield {"stack": stack, "api": api, "prometheus": prometheus, "failed": failed}
    finally:
        stop_stack(stack)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout


def test_the_rendered_scrape_config_passes_promtool(observed: dict[str, Any]) -> None:
    assert PROMTOOL is not None
    config = observed["prometheus"].config_path
    check = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_every_service(observed: dict[str, Any]) -> None:
    targets = observed["api"].get("/api/v1/targets")["activeTargets"]
    by_service = {t["labels"].get("hearth_service"): t for t in targets if t["labels"].get("hearth_service")}
    assert set(by_service) == {"orchestratord", "routerd", "pool-managerd", "workerd", "memoryd"}
    assert all(t["health"] == "up" for t in by_service.values()), by_service
    assert {t["labels"]["job"] for t in by_service.values()} == {f"hearth-{s}" for s in by_service}


@pytest.mark.parametrize(("dashboard", "panel", "expr"), _panel_targets())
def test_every_dashboard_query_returns_data(
    observed: dict[str, Any], dashboard: str, panel: str, expr: str
) -> None:
    result = observed["api"].query(_grafana_expr(expr))
    assert result, f"{dashboard} / {panel}: no series for {expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{dashboard} / {panel}: only {values} for {expr}"


def test_every_alert_rule_has_an_expectation() -> None:
    assert {rule["alert"] for rule in _rules()} == set(EXPECTED_FIRING)


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_alert_expression_evaluates_as_expected(observed: dict[str, Any], rule: dict[str, Any]) -> None:
    api: PrometheusApi = observed["api"]
    names = _metric_names(rule["expr"])
    assert names, rule["expr"]
    for name in sorted(names):
        assert api.series(name), f"{rule['alert']} reads {name}, which no service emits"
    result = api.query(rule["expr"])
    if EXPECTED_FIRING[rule["alert"]]:
        assert result, f"{rule['alert']} should fire: {rule['expr']}"
    else:
        assert result == [], f"{rule['alert']} should be quiet, got {result}"


def test_the_error_rate_alert_names_the_failure_reason(observed: dict[str, Any]) -> None:
    rule = next(r for r in _rules() if r["alert"] == "HearthJobErrorRate")
    reasons = {sample["metric"]["reason"] for sample in observed["api"].query(rule["expr"])}
    assert reasons == set(observed["failed"])
    # Prometheus evaluates the shipped rules itself: all healthy, the error-rate alert pending (for: 10m).
    groups = observed["api"].get("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == set(EXPECTED_FIRING)
    assert all(r["health"] == "ok" for r in rules.values()), {n: r.get("lastError") for n, r in rules.items()}
    _wait_for(
        lambda: any(
            r["name"] == "HearthJobErrorRate" and r["state"] == "pending"
            for g in observed["api"].get("/api/v1/rules")["groups"]
            for r in g["rules"]
        ),
        10,
        "HearthJobErrorRate pending",
    )

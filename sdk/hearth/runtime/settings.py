"""Typed settings: hearth.yaml, then HEARTH_* environment, then flags.

Every service has one settings class derived from :class:`ServiceSettings`.
A field ``listen`` of orchestratord is read, last one winning, from:

1. hearth.yaml, top level (shared keys) and then the ``orchestrator:`` section;
2. the environment: ``HEARTH_LISTEN`` (shared), then ``HEARTH_ORCHESTRATOR_LISTEN``;
3. the command line: ``--listen``.

The file is ``--config FILE``, else ``$HEARTH_CONFIG``, else none. Settings are
validated at start; :func:`load_settings` exits with one clear message naming
every bad field.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class ModelConfig(BaseModel):
    """One model in the models config (the `models:` list of hearth.yaml)."""

    name: str = Field(description="The name jobs use to ask for this model.")
    path: str = Field(default="", description="Local folder of the weights (transformers engine).")
    context_length: int = Field(default=2048, gt=0, description="Prompt plus completion, in tokens.")
    roles: list[str] = Field(default_factory=list, description="Roles this model is the default for.")
    engine: str = Field(
        default="transformers",
        description="The engine kind that serves it: transformers, vllm, openai, anthropic, cli or sim.",
    )
    base_url: str = Field(
        default="", description="openai/anthropic: the upstream API's base URL (e.g. http://host:8000/v1)."
    )
    upstream_model: str = Field(
        default="", description="openai/anthropic/vllm: the model's name at the upstream; defaults to name."
    )
    api_key_env: str = Field(
        default="", description="openai/anthropic: the environment variable holding the API key."
    )
    api_key_file: str = Field(
        default="", description="openai/anthropic: a file holding the API key (read at start, never logged)."
    )
    remote: bool | None = Field(
        default=None,
        description="Whether the model runs off this machine (a cloud API). Unset: true for anthropic, "
        "and for openai when base_url's host is not a loopback or private address.",
    )
    supports_tools: bool = Field(
        default=False, description="The model can make tool calls (the conformance probe checks it)."
    )
    tool_call_parser: str = Field(
        default="", description="vllm: --tool-call-parser (e.g. hermes, llama3_json)."
    )
    command: list[str] = Field(
        default_factory=list,
        description="cli: the command line; the argument {prompt} is replaced by the prompt "
        "(otherwise the prompt goes to stdin).",
    )
    timeout_seconds: float = Field(
        default=600.0, gt=0, description="openai/anthropic/cli: longest a single generation may take."
    )
    max_retries: int = Field(
        default=3, ge=0, description="openai/anthropic: retries on 429 and 5xx before the first token."
    )
    vram_mib: int = Field(
        default=0, ge=0, description="GPU memory the model needs, in MiB; 0 estimates it from its files."
    )
    price_input_per_1k: float = Field(
        default=0.0, ge=0, description="Price per 1,000 prompt tokens, in the routing policy's currency."
    )
    price_output_per_1k: float = Field(
        default=0.0, ge=0, description="Price per 1,000 generated tokens, in the routing policy's currency."
    )
    trusted: bool = Field(
        default=False, description="A remote model trusted with sensitive (L2/L3) data by the routing policy."
    )

    def is_remote(self) -> bool:
        """Whether the model runs off this machine (see ``remote``)."""
        if self.remote is not None:
            return self.remote
        if self.engine == "anthropic":
            return True
        if self.engine == "openai":
            return not _is_local_url(self.base_url)
        return False


#: The context tiers a role's context policy may name, in bundle order.
CONTEXT_TIERS = ("index", "required", "sibling", "memory", "pinned")


class RoleContextPolicy(BaseModel):
    """What context a role's tasks get: how much, and from which tiers."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(
        default=0,
        ge=0,
        description="Tokens of context of the role's tasks that set no budget of their own; 0: the "
        "orchestrator's default (task_context_tokens).",
    )
    tiers: list[str] = Field(
        default_factory=lambda: list(CONTEXT_TIERS),
        description="The bundle tiers the role's tasks draw on: index, required (outputs of required "
        "tasks and handoffs), sibling, memory, pinned. Candidates of other tiers are left out.",
    )

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, tiers: list[str]) -> list[str]:
        unknown = [t for t in tiers if t not in CONTEXT_TIERS]
        if unknown:
            raise ValueError(f"unknown tiers {', '.join(unknown)}; known: {', '.join(CONTEXT_TIERS)}")
        return tiers


class RoleConfig(BaseModel):
    """An agent role (manager, coder, tester, researcher, writer, or one of your own) in the models
    file's ``roles:``: its default model chain, system prompt, context policy and tool permissions.
    The short form of an entry, a list of model names, is a role with only a chain."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=list,
        description="The role's default model chain, best first (the router's role map); empty: the "
        "models whose `roles` name it, then the default role's.",
    )
    description: str = Field(default="", description="What the role does, for people and the manager.")
    system_prompt: str = Field(
        default="", description="The system message of every job of the role's tasks; empty: none."
    )
    context: RoleContextPolicy = Field(default_factory=RoleContextPolicy)
    tools: list[str] | None = Field(
        default=None,
        description="Names of the tools the role's jobs may offer; unset: any tool, []: none.",
    )


def _is_local_url(url: str) -> bool:
    """Loopback, private and single-label hosts are this machine or its LAN."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", "") or host.endswith(".local") or ("." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``service`` (the yaml section
    and the env infix, e.g. ``orchestrator``)."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    service: ClassVar[str] = ""
    config_file: ClassVar[Path | None] = None

    listen: str = Field(default="127.0.0.1:0", description="host:port the gRPC server binds.")
    advertise_address: str = Field(
        default="", description="host:port others use to reach this service; defaults to the bound address."
    )
    metrics_listen: str = Field(default="", description="host:port for Prometheus /metrics; empty disables.")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL.")
    data_dir: Path = Field(default=Path(".hearth"), description="State folder (embedded mode, trace files).")
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    log_format: str = Field(default="json", description="json or text.")
    otlp_endpoint: str = Field(default="", description="OTLP gRPC endpoint for spans; empty disables.")
    trace_to_files: bool = Field(default=True, description="Also write spans to <data_dir>/traces/.")
    shutdown_grace_seconds: float = Field(default=5.0, ge=0, description="How long running RPCs may finish.")
    models: list[ModelConfig] = Field(default_factory=list, description="The models config.")
    models_file: Path | None = Field(
        default=None,
        description="A models.yaml holding `models:` (added after the inline list) and `roles:` "
        "(role -> ordered model names); relative to the config file's folder.",
    )
    roles: dict[str, list[str]] = Field(
        default_factory=dict, description="Role -> ordered model names (read from models_file)."
    )
    role_profiles: dict[str, RoleConfig] = Field(
        default_factory=dict,
        description="Role -> its system prompt, context policy and tool permissions (the long form of "
        "the models file's `roles:` entries; their `models` also go to `roles`).",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_role_profiles(cls, data: Any) -> Any:
        """``roles:`` given inline may use the long form too: its mappings become profiles."""
        if not isinstance(data, dict) or not isinstance(data.get("roles"), dict):
            return data
        chains, profiles = split_roles(data["roles"])
        return {**data, "roles": chains, "role_profiles": {**(data.get("role_profiles") or {}), **profiles}}

    @model_validator(mode="after")
    def _read_models_file(self) -> ServiceSettings:
        if self.models_file is None:
            return self
        path = self.models_file
        if not path.is_absolute() and self.config_file is not None:
            path = self.config_file.parent / path
        models, roles, profiles = read_models_file_with_profiles(path, known=[m.name for m in self.models])
        names = [m.name for m in self.models] + [m.name for m in models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"models_file {path}: names must be unique; repeated: {', '.join(repeated)}")
        self.models = [*self.models, *models]
        self.roles = {**self.roles, **roles}
        self.role_profiles = {**self.role_profiles, **profiles}
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError("must be json or text")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            EnvSettingsSource(settings_cls, env_prefix=f"HEARTH_{cls.service.upper()}_"),
            EnvSettingsSource(settings_cls, env_prefix="HEARTH_"),
        ]
        if cls.config_file is not None:
            data = read_config_file(cls.config_file)
            sources.append(_DictSource(settings_cls, data.get(cls.service) or {}))
            sources.append(
                _DictSource(settings_cls, {k: v for k, v in data.items() if not isinstance(v, dict)})
            )
        return tuple(sources)


class _ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(default_factory=list)
    roles: dict[str, list[str] | RoleConfig] = Field(default_factory=dict)

    @field_validator("roles", mode="before")
    @classmethod
    def _role_entries(cls, roles: Any) -> Any:
        """A list is a chain, a mapping the long form; validated one by one so that an error names
        the role and the field rather than both members of the union."""
        if not isinstance(roles, dict):
            return roles
        parsed: dict[str, list[str] | RoleConfig] = {}
        for role, entry in roles.items():
            if isinstance(entry, dict):
                try:
                    parsed[role] = RoleConfig.model_validate(entry)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ValueError(f"roles.{role}.{where}: {first['msg']}") from None
            elif isinstance(entry, list) and all(isinstance(name, str) for name in entry):
                parsed[role] = entry
            else:
                raise ValueError(f"roles.{role}: must be a list of model names or a mapping (models, ...)")
        return parsed


def split_roles(
    roles: dict[str, Any],
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """``roles:`` entries as (role -> model chain, role -> long-form profile): a list is a chain
    alone; a mapping (or a RoleConfig) is a profile whose ``models`` are the chain."""
    chains: dict[str, list[str]] = {}
    profiles: dict[str, Any] = {}
    for role, entry in roles.items():
        if isinstance(entry, RoleConfig):
            chains[role] = list(entry.models)
            profiles[role] = entry
        elif isinstance(entry, dict):
            chains[role] = list(entry.get("models") or [])
            profiles[role] = entry
        else:
            chains[role] = entry
    return chains, profiles


def read_models_file(
    path: Path, known: list[str] | tuple[str, ...] = ()
) -> tuple[list[ModelConfig], dict[str, list[str]]]:
    """The ``models:`` and ``roles:`` (each role's model chain) of a models.yaml. ValueError naming
    the file, the entry and the field when it cannot be read or is invalid (a role naming a model
    that is neither in the file nor in ``known`` included)."""
    models, roles, _ = read_models_file_with_profiles(path, known)
    return models, roles


def read_models_file_with_profiles(
    path: Path, known: list[str] | tuple[str, ...] = ()
) -> tuple[list[ModelConfig], dict[str, list[str]], dict[str, RoleConfig]]:
    """:func:`read_models_file`, and the roles given in the long form (system prompt, context
    policy, tool permissions) as :class:`RoleConfig`."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ValueError(f"models_file {path}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"models_file {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"models_file {path}: must be a mapping with models: and roles:")
    try:
        parsed = _ModelsFile.model_validate(data)
    except ValidationError as err:
        problems = []
        for problem in err.errors():
            loc = list(problem["loc"])
            where = ".".join(str(p) for p in loc)
            if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
                entry = data["models"][loc[1]]
                name = entry.get("name") if isinstance(entry, dict) else None
                if name:
                    where = f"models[{loc[1]}] ({name})" + "".join(f".{p}" for p in loc[2:])
            problems.append(f"{where}: {problem['msg']}")
        raise ValueError(f"models_file {path}: " + "; ".join(problems)) from None
    names = {m.name for m in parsed.models} | set(known)
    chains, profiles = split_roles(dict(parsed.roles))
    for role, listed in chains.items():
        unknown = [n for n in listed if n not in names]
        if unknown:
            raise ValueError(f"models_file {path}: roles.{role}: unknown models {', '.join(unknown)}")
    return parsed.models, chains, profiles


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def read_config_file(path: Path) -> dict[str, Any]:
    """A hearth.yaml as a mapping; exits with a clear message when it cannot
    be read or is not a YAML mapping."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise SystemExit(f"hearth: cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SystemExit(f"hearth: config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"hearth: config {path} must be a mapping at the top level")
    return data


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], argv: list[str] | None = None) -> S:
    """Build and validate settings from the config file, environment and
    flags. Exits the process with a clear message when they are invalid."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.environ.get("HEARTH_CONFIG") or None)
    known, rest = pre.parse_known_args(argv)
    config = Path(known.config) if known.config else None
    bound = type(cls.__name__, (cls,), {"config_file": config, "__module__": cls.__module__})
    try:
        cli: CliSettingsSource[Any] = CliSettingsSource(
            bound, cli_prog_name=cls.service + "d", cli_kebab_case=True, cli_parse_args=rest
        )
        return bound(_cli_settings_source=cli(args=rest))  # type: ignore[no-any-return]
    except ValidationError as err:
        lines = [f"{cls.service}d: invalid settings" + (f" (config {config})" if config else "") + ":"]
        for problem in err.errors():
            if not problem["loc"]:  # a model-level check: no single field to name
                lines.append(f"  {problem['msg']}")
                continue
            where = ".".join(str(p) for p in problem["loc"])
            env = f"HEARTH_{cls.service.upper()}_{str(problem['loc'][0]).upper()}"
            lines.append(f"  {where}: {problem['msg']} (flag --{where.replace('_', '-')}, env {env})")
        raise SystemExit("\n".join(lines)) from None

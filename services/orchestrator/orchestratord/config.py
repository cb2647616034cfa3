"""orchestratord's settings: hearth.yaml (``orchestrator:``), then
HEARTH_ORCHESTRATOR_* / HEARTH_* environment, then --kebab-case flags."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

from hearth.runtime import ServiceSettings
from orchestratord.domain.roles import RoleBook, RoleSettings

_ASYNCPG_SCHEME = "postgresql+asyncpg://"


class Settings(ServiceSettings):
    service: ClassVar[str] = "orchestrator"

    database_url: str = Field(
        description="Postgres URL for SQLAlchemy with asyncpg (postgresql+asyncpg://...; a postgresql:// URL "
        "is rewritten to it)."
    )
    router_address: str = Field(description="host:port of routerd.")
    pool_address: str = Field(description="host:port of pool-managerd.")
    memory_address: str = Field(
        default="",
        description="host:port of memoryd; empty: jobs asking for memory fail with MEMORY_UNAVAILABLE.",
    )
    max_queued: int = Field(
        default=1024, gt=0, description="Queued jobs across both bands; more: QUEUE_FULL."
    )
    max_running: int = Field(default=256, gt=0, description="Jobs dispatched at once.")
    max_prompt_chars: int = Field(
        default=200_000, gt=0, description="Longest prompt accepted, in characters."
    )
    default_max_tokens: int = Field(
        default=256, gt=0, description="max_tokens of a job that leaves it unset."
    )
    default_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Deadline from submission of a job that sets no timeout."
    )
    place_retry_seconds: float = Field(
        default=0.2,
        gt=0,
        description="Wait between Place attempts while no worker has capacity (NO_CAPACITY); a job keeps "
        "waiting up to its deadline. The pool's retry delay wins when longer.",
    )
    memory_context_top_k: int = Field(
        default=5, gt=0, description="Retrieved memories asked for as context (summaries come on top)."
    )
    memory_context_tokens: int = Field(
        default=1024,
        gt=0,
        description="Tokens of memory context (as memoryd counts them) for a job that does not set "
        "memory_context_tokens.",
    )
    first_token_timeout_seconds: float = Field(
        default=0.0,
        ge=0,
        description="An attempt on a target with no first token this long after its generation began "
        "moves the job to the next target of its chain (TIMEOUT); 0: no such limit (the job's timeout "
        "still applies).",
    )
    task_context_tokens: int = Field(
        default=2048, gt=0, description="Context budget of a task that sets none, in tokens."
    )
    task_parallelism: int = Field(
        default=4, gt=0, description="Tasks a project run starts at once when the request says 0."
    )
    task_max_tokens: int = Field(default=512, gt=0, description="max_tokens of a task run's job.")
    task_escalation: bool = Field(
        default=True,
        description="Retry a task run that failed on a local model once on the next target of its role's "
        "chain (the run record says so).",
    )
    task_handoffs: bool = Field(
        default=True,
        description="When a task requires the work of another role, put memoryd's handoff summary of it in "
        "the task's bundle (two summary jobs per handoff, made once).",
    )
    handoff_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Longest a handoff summary may take before the run goes without it."
    )
    plan_max_tokens: int = Field(default=2048, gt=0, description="max_tokens of a manager's plan job.")
    plan_attempts: int = Field(
        default=3,
        ge=1,
        le=5,
        description="Jobs a plan proposal makes at most (an invalid plan is sent back with its errors) "
        "when the request says 0.",
    )
    run_migrations: bool = Field(default=True, description="Bring the database schema up to date at start.")
    journal_flush_seconds: float = Field(
        default=0.02,
        gt=0,
        description="Longest time a token event waits before it is written to the database.",
    )
    journal_max_batch: int = Field(
        default=500, gt=0, description="Events that trigger a database write at once."
    )
    database_pool_size: int = Field(default=10, gt=0, description="Database connections kept open.")
    http_listen: str = Field(
        default="127.0.0.1:0",
        description="host:port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, "
        "/v1/embeddings); port 0 picks a free one (logged at start); empty disables the API.",
    )
    http_api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys the HTTP API accepts as 'Authorization: Bearer <key>' (env: a JSON list). With "
        "none here or in http_api_keys_file every request is let in: only for a loopback listen address.",
    )
    http_api_keys_file: str = Field(
        default="",
        description="A file of HTTP API keys, one per line (blank lines and # comments skipped), added to "
        "http_api_keys. Prefer it to listing keys in flags or the environment.",
    )
    http_max_request_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest HTTP API request body, in bytes; larger: 413."
    )

    def role_book(self) -> RoleBook:
        """The agent roles: the built-in ones with the models file's ``roles:`` over them."""
        given = {}
        for name, config in self.role_profiles.items():
            fields = config.model_fields_set
            context = config.context.model_fields_set if "context" in fields else set()
            given[name] = RoleSettings(
                models=tuple(config.models),
                description=config.description if "description" in fields else None,
                system_prompt=config.system_prompt if "system_prompt" in fields else None,
                context_budget=config.context.budget if "budget" in context else None,
                tiers=tuple(config.context.tiers) if "tiers" in context else None,
                tools=tuple(config.tools) if config.tools is not None else None,
                tools_given="tools" in fields and config.tools is not None,
            )
        return RoleBook.of(self.roles, given)

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        for scheme in ("postgresql://", "postgres://"):
            if value.startswith(scheme):
                return _ASYNCPG_SCHEME + value[len(scheme) :]
        if not value.startswith(_ASYNCPG_SCHEME):
            raise ValueError("must be a postgresql+asyncpg:// (or postgresql://) URL")
        return value

    @field_validator("http_listen")
    @classmethod
    def _http_listen(cls, value: str) -> str:
        if value and not value.rpartition(":")[2].isdigit():
            raise ValueError("must be host:port (port 0: any free port), or empty to disable the HTTP API")
        return value

    @field_validator("router_address", "pool_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value or ":" not in value:
            raise ValueError("must be host:port")
        return value

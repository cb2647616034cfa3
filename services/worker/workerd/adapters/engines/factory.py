"""Builds the configured engine for a model: the one place that knows every
engine's constructor. Engines import their heavy libraries (torch, openai,
anthropic) only when chosen."""

from __future__ import annotations

import logging
from collections.abc import Callable

from hearth.runtime import ModelConfig
from workerd.config import Settings
from workerd.domain.engine import Engine, ServedModel
from workerd.domain.worker_status import GpuStatus

log = logging.getLogger(__name__)


def served_model(entry: ModelConfig) -> ServedModel:
    """How the engine describes a models entry."""
    return ServedModel(
        entry.name, entry.context_length, supports_tools=entry.supports_tools, remote=entry.is_remote()
    )


def build_engine(settings: Settings, model: str, *, read_gpu: Callable[[], GpuStatus]) -> Engine:
    """The engine of ``settings.engine`` for ``model`` (a models entry, or any
    name for the sim engine), not started.

    Raises ValueError when the models entry does not suit the engine (the
    settings validation reports the same for the configured model).
    """
    engine = settings.engine
    if engine == "sim":
        from workerd.adapters.engines.sim_engine import SimEngine

        return SimEngine(
            model,
            context_length=settings.sim_context_length,
            prefill_seconds_per_token=settings.sim_prefill_seconds_per_token,
            decode_seconds_per_step=settings.sim_decode_seconds_per_step,
            max_batch=settings.sim_max_batch,
            load_seconds=settings.sim_load_seconds,
            words=tuple(settings.sim_words),
            script=tuple((step.reply, step.fail) for step in settings.sim_scripts.get(model, ())),
        )
    entry = next((m for m in settings.models if m.name == model), None)
    if entry is None:
        raise ValueError(f"model {model!r} is not in models")
    served = served_model(entry)
    if engine == "transformers":
        from workerd.adapters.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            served, entry.path, device=settings.device, cpu_threads=settings.cpu_threads
        )
    if engine in ("openai", "anthropic"):
        from workerd.adapters.engines.api_keys import load_api_key

        api_key = load_api_key(entry.api_key_env, entry.api_key_file)
        if engine == "openai":
            from workerd.adapters.engines.openai_engine import OpenAIEngine

            return OpenAIEngine(
                served,
                base_url=entry.base_url,
                upstream_model=entry.upstream_model,
                api_key=api_key,
                timeout_seconds=entry.timeout_seconds,
                max_retries=entry.max_retries,
            )
        from workerd.adapters.engines.anthropic_engine import AnthropicEngine

        return AnthropicEngine(
            served,
            base_url=entry.base_url,
            upstream_model=entry.upstream_model,
            api_key=api_key,
            timeout_seconds=entry.timeout_seconds,
            max_retries=entry.max_retries,
        )
    if engine == "vllm":
        from workerd.adapters.engines.vllm_command import find_vllm_command
        from workerd.adapters.engines.vllm_engine import VllmEngine, VllmOptions

        command = find_vllm_command(configured=settings.vllm_command, python=settings.vllm_python)
        log.info("vllm for %r: %s (from %s)", model, " ".join(command.argv), command.source)
        options = VllmOptions(
            executable=list(command.argv),
            model_flag=command.model_flag,
            model_path=entry.path or entry.upstream_model,
            served_model_name=entry.name,
            max_model_len=entry.context_length,
            tool_call_parser=entry.tool_call_parser,
            extra_args=tuple(settings.vllm_extra_args),
            load_timeout_seconds=settings.vllm_load_timeout_seconds,
            reserve_mib=settings.vllm_reserve_mib,
            restart_max=settings.vllm_restart_max,
            nice=settings.vllm_nice,
        )
        return VllmEngine(served, options, read_gpu=read_gpu, timeout_seconds=entry.timeout_seconds)
    if engine == "cli":
        from workerd.adapters.engines.cli_engine import CliEngine

        return CliEngine(
            served,
            entry.command,
            timeout_seconds=entry.timeout_seconds,
            max_concurrency=settings.max_concurrency,
        )
    raise ValueError(f"unknown engine {engine!r}")

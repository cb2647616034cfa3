"""Submission validation: every check SubmitJob makes before it touches the
router or the database. Each failure names the request field it is about."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from hearth.chat import ROLES, ChatMessage, Tool, unsafe_pattern
from hearth.errors import InvalidArgument
from orchestratord.domain.jobs import DATA_CLASSES, JobSpec, Priority

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# NUL and lone surrogates: no engine, store or client handles them as text.
_UNTEXT = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class JobDraft:
    """A submission as it arrived, before validation and defaults.

    ``priority`` is the band's name ("interactive", "batch"), "" when
    unspecified, or anything else for a value this version does not know;
    ``data_class`` likewise ("L0".."L3", "", or an unknown value).
    ``timeout_seconds`` is None when the request left it unset.
    """

    prompt: str = ""
    model: str = ""
    role: str = ""
    max_tokens: int | None = None
    temperature: float = 0.0
    seed: int = 0
    priority: str = ""
    use_memory_context: bool = False
    store_in_memory: bool = False
    project_id: str = ""
    task_id: str = ""
    timeout_seconds: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    messages: tuple[ChatMessage, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: str = ""
    paths: tuple[str, ...] = ()
    data_class: str = ""
    agent: str = ""
    memory_context_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    max_prompt_chars: int = 200_000
    max_messages: int = 1000
    max_tools: int = 128
    max_paths: int = 256
    max_path_chars: int = 4096
    max_agent_chars: int = 256
    #: A tool's parameters schema: most nesting, and most characters as JSON.
    max_schema_depth: int = 32
    max_schema_chars: int = 65_536
    default_max_tokens: int = 256
    default_timeout_seconds: float = 600.0
    #: The most a job may ask for (the model's context is checked by the router).
    max_tokens: int = 1_048_576
    #: A week: a longer deadline is a mistake, not a job.
    max_timeout_seconds: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Submission:
    spec: JobSpec
    request_id: str | None


def validate_submission(draft: JobDraft, limits: SubmitLimits) -> Submission:
    """Check a draft and apply the defaults (max_tokens, priority, timeout).

    Raises InvalidArgument naming the field: ``spec.prompt`` (empty, blank, or
    longer than the limit: reason PROMPT_TOO_LONG; or given with messages),
    ``spec.messages[i].role|content|tool_call_id|tool_calls`` and
    ``spec.tools[i].name|parameters_json``, ``spec.tool_choice``, ``spec.max_tokens``,
    ``spec.temperature``, ``spec.priority``, ``spec.project_id`` (required by
    either memory flag), ``spec.timeout``, ``spec.paths`` / ``spec.paths[i]``
    (at most 256, each 1-4096 characters without NUL), ``spec.data_class``
    (a known class), ``spec.agent``, ``spec.memory_context_tokens`` (not
    negative), ``request_id`` (must be a UUID). Any text field holding a NUL
    or a lone surrogate is refused with reason INVALID_TEXT, naming it.
    """
    _check_text_fields(draft)
    if draft.messages:
        if draft.prompt:
            raise InvalidArgument("spec.prompt", "must be empty when messages are given (one or the other)")
        _check_messages(draft.messages, limits)
    elif not draft.prompt or not draft.prompt.strip():
        raise InvalidArgument("spec.prompt", "must not be empty or blank (or give messages)")
    elif len(draft.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            "spec.prompt",
            f"is {len(draft.prompt)} characters; the limit is {limits.max_prompt_chars}",
            reason="PROMPT_TOO_LONG",
            limit=str(limits.max_prompt_chars),
        )
    _check_tools(draft.tools, draft.tool_choice, limits)
    if draft.max_tokens is not None and not (1 <= draft.max_tokens <= limits.max_tokens):
        raise InvalidArgument(
            "spec.max_tokens", f"must be between 1 and {limits.max_tokens} (leave it unset for the default)"
        )
    if not (0.0 <= draft.temperature <= 2.0):  # also rejects NaN
        raise InvalidArgument("spec.temperature", "must be between 0 and 2")
    if draft.priority == "":
        priority = Priority.INTERACTIVE
    else:
        try:
            priority = Priority(draft.priority)
        except ValueError:
            raise InvalidArgument("spec.priority", f"unknown priority {draft.priority!r}") from None
    if (draft.use_memory_context or draft.store_in_memory) and not draft.project_id.strip():
        raise InvalidArgument(
            "spec.project_id", "is required when use_memory_context or store_in_memory is set"
        )
    _check_routing_facts(draft, limits)
    timeout = draft.timeout_seconds
    if timeout is not None and not (0 <= timeout <= limits.max_timeout_seconds):  # also rejects NaN
        raise InvalidArgument(
            "spec.timeout", f"must be between 0 (the default) and {limits.max_timeout_seconds:g} seconds"
        )
    request_id: str | None = None
    if draft.request_id:
        try:
            request_id = str(uuid.UUID(draft.request_id))
        except ValueError:
            raise InvalidArgument("request_id", "must be empty or a UUID") from None
    spec = JobSpec(
        prompt=draft.prompt,
        model=draft.model,
        role=draft.role,
        max_tokens=limits.default_max_tokens if draft.max_tokens is None else draft.max_tokens,
        temperature=draft.temperature,
        seed=draft.seed,
        priority=priority,
        use_memory_context=draft.use_memory_context,
        store_in_memory=draft.store_in_memory,
        project_id=draft.project_id,
        task_id=draft.task_id,
        # A zero timeout means "unset", as proto3 cannot tell the two apart.
        timeout_seconds=timeout or limits.default_timeout_seconds,
        labels=dict(draft.labels),
        messages=draft.messages,
        tools=draft.tools,
        tool_choice=draft.tool_choice,
        paths=draft.paths,
        data_class=draft.data_class,
        agent=draft.agent,
        memory_context_tokens=draft.memory_context_tokens,
    )
    return Submission(spec, request_id)


def check_text(where: str, value: str) -> None:
    """InvalidArgument (reason INVALID_TEXT) naming ``where`` when ``value``
    holds a NUL character or a lone surrogate."""
    bad = _UNTEXT.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate (not valid Unicode)"
        raise InvalidArgument(where, f"holds {what} at offset {bad.start()}", reason="INVALID_TEXT")


def _check_text_fields(draft: JobDraft) -> None:
    for name in ("prompt", "model", "role", "project_id", "task_id", "agent", "tool_choice"):
        check_text(f"spec.{name}", getattr(draft, name))
    for key, value in draft.labels.items():
        check_text("spec.labels", key)
        check_text(f"spec.labels[{key!r}]", value)
    for index, message in enumerate(draft.messages):
        where = f"spec.messages[{index}]"
        check_text(f"{where}.content", message.content)
        check_text(f"{where}.name", message.name)
        check_text(f"{where}.tool_call_id", message.tool_call_id)
        for number, call in enumerate(message.tool_calls):
            for part in ("id", "name", "arguments"):
                check_text(f"{where}.tool_calls[{number}].{part}", getattr(call, part))
    for index, tool in enumerate(draft.tools):
        check_text(f"spec.tools[{index}].name", tool.name)
        check_text(f"spec.tools[{index}].description", tool.description)


def _check_schema(where: str, schema: object, limits: SubmitLimits) -> None:
    """A tool's parameters schema: bounded nesting, and text in it valid."""
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_schema_depth:
            raise InvalidArgument(
                where, f"nests deeper than {limits.max_schema_depth} levels", reason="SCHEMA_TOO_DEEP"
            )
        if isinstance(node, str):
            check_text(where, node)
        elif isinstance(node, dict):
            for key, value in node.items():
                check_text(where, str(key))
                stack.append((value, depth + 1))
            patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
            if isinstance(node.get("patternProperties"), dict):
                patterns.extend(str(key) for key in node["patternProperties"])
            for pattern in patterns:
                why = unsafe_pattern(pattern)
                if why:
                    raise InvalidArgument(where, f"pattern {pattern!r}: {why}", reason="UNSAFE_PATTERN")
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    size = len(json.dumps(schema))
    if size > limits.max_schema_chars:
        raise InvalidArgument(
            where,
            f"is {size} characters as JSON; the limit is {limits.max_schema_chars}",
            reason="SCHEMA_TOO_LARGE",
            limit=str(limits.max_schema_chars),
        )


def _check_routing_facts(draft: JobDraft, limits: SubmitLimits) -> None:
    if len(draft.paths) > limits.max_paths:
        raise InvalidArgument("spec.paths", f"has {len(draft.paths)} paths; the limit is {limits.max_paths}")
    for index, path in enumerate(draft.paths):
        if not path:
            raise InvalidArgument(f"spec.paths[{index}]", "must not be empty")
        if len(path) > limits.max_path_chars:
            raise InvalidArgument(
                f"spec.paths[{index}]", f"is {len(path)} characters; the limit is {limits.max_path_chars}"
            )
        check_text(f"spec.paths[{index}]", path)
    if draft.data_class and draft.data_class not in DATA_CLASSES:
        raise InvalidArgument(
            "spec.data_class", f"unknown data class {draft.data_class!r}; one of {', '.join(DATA_CLASSES)}"
        )
    if len(draft.agent) > limits.max_agent_chars:
        raise InvalidArgument("spec.agent", f"is longer than {limits.max_agent_chars} characters")
    if draft.memory_context_tokens < 0:
        raise InvalidArgument("spec.memory_context_tokens", "must not be negative (0: the default)")


def _check_messages(messages: tuple[ChatMessage, ...], limits: SubmitLimits) -> None:
    if len(messages) > limits.max_messages:
        raise InvalidArgument(
            "spec.messages", f"has {len(messages)} messages; the limit is {limits.max_messages}"
        )
    total = 0
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"spec.messages[{index}]"
        if message.role not in ROLES:
            raise InvalidArgument(
                f"{where}.role", f"unknown role {message.role!r}; one of {', '.join(ROLES)}"
            )
        if message.tool_calls and message.role != "assistant":
            raise InvalidArgument(f"{where}.tool_calls", "only assistant messages make tool calls")
        call_ids.update(call.id for call in message.tool_calls)
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidArgument(f"{where}.tool_call_id", "a tool message must name the call it answers")
            if message.tool_call_id not in call_ids:
                raise InvalidArgument(
                    f"{where}.tool_call_id",
                    f"{message.tool_call_id!r} answers no earlier assistant tool call",
                )
        elif not message.content.strip() and not message.tool_calls:
            raise InvalidArgument(f"{where}.content", "must not be empty or blank")
        total += len(message.content) + sum(len(c.arguments) for c in message.tool_calls)
    if total > limits.max_prompt_chars:
        raise InvalidArgument(
            "spec.messages",
            f"hold {total} characters; the limit is {limits.max_prompt_chars}",
            reason="PROMPT_TOO_LONG",
            limit=str(limits.max_prompt_chars),
        )
    if messages[-1].role == "assistant" and not messages[-1].tool_calls:
        raise InvalidArgument(
            f"spec.messages[{len(messages) - 1}].role", "the last message must not be the assistant's answer"
        )


def _check_tools(tools: tuple[Tool, ...], tool_choice: str, limits: SubmitLimits) -> None:
    if len(tools) > limits.max_tools:
        raise InvalidArgument("spec.tools", f"has {len(tools)} tools; the limit is {limits.max_tools}")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"spec.tools[{index}]"
        if not _TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument(f"{where}.name", "must be 1-64 letters, digits, underscores or dashes")
        if tool.name in names:
            raise InvalidArgument(f"{where}.name", f"{tool.name!r} is defined twice")
        names.add(tool.name)
        if tool.parameters and tool.parameters.get("type", "object") != "object":
            raise InvalidArgument(f"{where}.parameters_json", "must be a JSON Schema of type object")
        _check_schema(f"{where}.parameters_json", dict(tool.parameters), limits)
    if tool_choice in ("", "auto", "none"):
        return
    if not tools:
        raise InvalidArgument("spec.tool_choice", "needs tools")
    if tool_choice != "required" and tool_choice not in names:
        raise InvalidArgument(
            "spec.tool_choice", f"{tool_choice!r} is not auto, none, required or a tool's name"
        )


def estimate_prompt_tokens(prompt_chars: int) -> int:
    """A tokenizer-free estimate of a prompt's tokens: ceil(chars / 4).

    About four characters per token holds for English with BPE tokenizers; the
    worker counts exactly and rejects what does not fit, so this only has to
    be good enough for routing at submit time.
    """
    return -(-prompt_chars // 4)


def parse_job_id(job_id: str) -> str:
    """The canonical form of a job id; InvalidArgument("job_id") if malformed."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise InvalidArgument("job_id", "must be a job id (a UUID)") from None

"""What the agent-facing APIs (Anthropic Messages, OpenAI Responses) share when
they turn a request into a job: the file paths the conversation touches, the
model named, the agent, and the token ceiling.

Paths feed ``JobSpec.paths``, so the router's denylist and sensitive lists
apply to what a coding agent reads, edits or lists (docs/routing.md). They are
found in the arguments of tool calls (``path``, ``file_path``,
``notebook_path``, ``paths``; the files an apply_patch names; path-like words
of a shell command) and in tool results (lines that are a path, as Glob or
``ls`` print them). Wrongly taking a word for a path can only raise a job's
class, never lower it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hearth.chat import ChatMessage, Tool, render_plain
from hearth.runtime import ModelConfig
from orchestratord.domain.validation import SubmitLimits, estimate_prompt_tokens

#: Argument names whose string value is a file path.
PATH_ARGUMENTS = frozenset({"path", "file_path", "notebook_path", "filename", "file"})
#: Argument names whose value is a list of paths.
PATHS_ARGUMENTS = frozenset({"paths", "file_paths"})
#: Argument names whose value is a shell command (a string or argv).
COMMAND_ARGUMENTS = frozenset({"command", "cmd"})
#: The most paths one job takes (JobSpec's limit); tool-call paths come first.
MAX_PATHS = SubmitLimits().max_paths
MAX_PATH_CHARS = SubmitLimits().max_path_chars
#: An agent request that sets no token limit (the Responses API) gets at most this.
AGENT_DEFAULT_MAX_TOKENS = 8192
#: A conservative count of characters per token for the ceiling (code
#: tokenizes denser than the router's four).
_CEILING_CHARS_PER_TOKEN = 3

#: A file named in an apply_patch ("*** Update File: src/app.py").
_PATCH_FILE = re.compile(r"^\*\*\* (?:Add|Update|Delete) File: (.+)$", re.MULTILINE)
#: A word that looks like a path: has a slash or starts with a dot or a tilde.
_PATH_WORD = re.compile(r"^(?:~|\.{1,2})?[\w.@+-]*(?:/[\w.@+-]*)+$|^\.[\w.@+-]+$")
#: Agents that announce themselves in User-Agent, by prefix.
_AGENT_PREFIXES = (("claude-cli/", "claude-code"), ("claude-code/", "claude-code"), ("codex", "codex"))

AGENT_HEADER = "X-Hearth-Agent"


def conversation_paths(messages: Sequence[ChatMessage]) -> tuple[str, ...]:
    """The file paths a conversation's tool calls and tool results name,
    deduplicated, in order (call arguments first), at most :data:`MAX_PATHS`."""
    from_calls: list[str] = []
    from_results: list[str] = []
    for message in messages:
        for call in message.tool_calls:
            from_calls.extend(paths_in_arguments(call.arguments))
        if message.role == "tool":
            from_results.extend(paths_in_result(message.content))
    unique = dict.fromkeys(p for p in from_calls + from_results if 0 < len(p) <= MAX_PATH_CHARS)
    return tuple(unique)[:MAX_PATHS]


def paths_in_arguments(arguments: str) -> list[str]:
    """Paths in a tool call's arguments (JSON text; anything else has none)."""
    try:
        value = json.loads(arguments) if arguments else None
    except (ValueError, RecursionError):
        return []
    if not isinstance(value, dict):
        return []
    found: list[str] = []
    for key, item in value.items():
        name = str(key).lower()
        if name in PATH_ARGUMENTS and isinstance(item, str):
            found.append(item.strip())
        elif name in PATHS_ARGUMENTS and isinstance(item, list):
            found.extend(p.strip() for p in item if isinstance(p, str))
        elif name in COMMAND_ARGUMENTS:
            found.extend(_command_paths(item))
        elif name == "input" and isinstance(item, str):
            found.extend(m.strip() for m in _PATCH_FILE.findall(item))
    return [p for p in found if p]


def paths_in_result(text: str) -> list[str]:
    """Lines of a tool result that are each one path (a file list)."""
    found = []
    for line in text.splitlines():
        word = line.strip()
        if word and len(word) <= MAX_PATH_CHARS and _PATH_WORD.match(word):
            found.append(word)
    found.extend(m.strip() for m in _PATCH_FILE.findall(text))
    return found


def _command_paths(command: Any) -> list[str]:
    words: Iterable[Any]
    if isinstance(command, str):
        words = command.split()
    elif isinstance(command, list):
        words = [w for part in command if isinstance(part, str) for w in part.split()]
    else:
        return []
    return [w.strip("'\"") for w in words if isinstance(w, str) and _PATH_WORD.match(w.strip("'\""))]


def model_and_labels(asked: str, models: Sequence[ModelConfig]) -> tuple[str, dict[str, str]]:
    """The model a job asks for: a name in the registry as it is; any other
    (an agent names its vendor's models, claude-sonnet-4-5, gpt-5-codex) is
    left to the router, which picks by role and policy, and kept as the label
    ``requested_model``."""
    asked = asked.strip()
    if not asked or any(m.name == asked for m in models):
        return asked, {}
    return "", {"requested_model": asked}


def agent_of(headers: Mapping[str, str]) -> str:
    """The agent behind a request: ``X-Hearth-Agent``, else known agents by
    their User-Agent (claude-code, codex), else ""."""
    named = headers.get(AGENT_HEADER, "").strip()
    if named:
        return named
    user_agent = headers.get("user-agent", "").strip().lower()
    for prefix, agent in _AGENT_PREFIXES:
        if user_agent.startswith(prefix):
            return agent
    return ""


def prompt_chars(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> int:
    """The characters the router counts for a conversation (its estimate is
    a quarter of this)."""
    return len(render_plain(messages)) + sum(len(json.dumps(t.to_json())) for t in tools)


def count_prompt_tokens(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> int:
    """The router's estimate of a conversation's prompt tokens."""
    return estimate_prompt_tokens(prompt_chars(messages, tools))


def token_ceiling(
    asked: int | None,
    messages: Sequence[ChatMessage],
    tools: Sequence[Tool],
    models: Sequence[ModelConfig],
) -> int | None:
    """The max_tokens of an agent's job.

    Agents ask for a ceiling, not an amount (Claude Code sends 32000 whatever
    the model): a limit that cannot fit the largest context in the registry
    next to the prompt is lowered to what fits, so the job can be routed at
    all; the answer then ends with the ``max_tokens``/``incomplete`` reason
    as if the agent had asked for less. Unset: at most
    :data:`AGENT_DEFAULT_MAX_TOKENS`. A prompt that leaves no room keeps the
    asked limit, and routing refuses it (CONTEXT_TOO_LONG).
    """
    largest = max((m.context_length for m in models), default=0)
    room = largest - -(-prompt_chars(messages, tools) // _CEILING_CHARS_PER_TOKEN)
    wanted = AGENT_DEFAULT_MAX_TOKENS if asked is None else asked
    if room <= 0 or wanted <= 0:
        return asked
    return min(wanted, room)

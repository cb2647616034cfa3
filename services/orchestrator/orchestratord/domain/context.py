"""Memory context: how recalled memories are put in front of a prompt."""

from __future__ import annotations

from dataclasses import dataclass

CONTEXT_HEADER = "Context from memory:\n\n"
CONTEXT_SEPARATOR = "\n\n"
PROMPT_SEPARATOR = "\n\n---\n\n"


@dataclass(frozen=True, slots=True)
class RecalledMemory:
    memory_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ContextualPrompt:
    text: str
    #: The memories that made it into the prompt, in order.
    memory_ids: tuple[str, ...]


def build_prompt_with_context(
    prompt: str, memories: list[RecalledMemory], max_chars: int
) -> ContextualPrompt:
    """The memories in the order memoryd returned them (nearest first), then
    the prompt. Context is capped at ``max_chars`` characters: memories are
    taken whole while they fit, the first that does not is cut to what is
    left, and the rest are dropped. The same inputs always give the same text.
    """
    parts: list[str] = []
    ids: list[str] = []
    used = 0
    for memory in memories:
        text = memory.text.strip()
        if not text:
            continue
        room = max_chars - used - (len(CONTEXT_SEPARATOR) if parts else 0)
        if room <= 0:
            break
        if len(text) > room:
            text = text[:room]
        parts.append(text)
        ids.append(memory.memory_id)
        used += len(text) + (len(CONTEXT_SEPARATOR) if len(parts) > 1 else 0)
    if not parts:
        return ContextualPrompt(prompt, ())
    return ContextualPrompt(
        CONTEXT_HEADER + CONTEXT_SEPARATOR.join(parts) + PROMPT_SEPARATOR + prompt, tuple(ids)
    )

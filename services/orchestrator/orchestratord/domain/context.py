"""Memory context: how recalled memories are put in front of a prompt."""

from __future__ import annotations

from dataclasses import dataclass

from hearth.chat import ChatMessage

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
    """The context block (see :func:`build_context`), then the prompt. The
    same inputs always give the same text."""
    context = build_context(memories, max_chars)
    if not context.memory_ids:
        return ContextualPrompt(prompt, ())
    return ContextualPrompt(context.text + PROMPT_SEPARATOR + prompt, context.memory_ids)


@dataclass(frozen=True, slots=True)
class ContextualConversation:
    messages: tuple[ChatMessage, ...]
    #: The memories that made it into the conversation, in order.
    memory_ids: tuple[str, ...]


def build_conversation_with_context(
    messages: tuple[ChatMessage, ...], memories: list[RecalledMemory], max_chars: int
) -> ContextualConversation:
    """The conversation with the context block as a system message just
    before its last message, so earlier turns (and a model's prefix cache
    of them) stay as they were."""
    context = build_context(memories, max_chars)
    if not context.memory_ids:
        return ContextualConversation(messages, ())
    block = ChatMessage("system", context.text)
    return ContextualConversation((*messages[:-1], block, messages[-1]), context.memory_ids)


def build_context(memories: list[RecalledMemory], max_chars: int) -> ContextualPrompt:
    """The context block: a header, then the memories in the order memoryd
    returned them (nearest first). Capped at ``max_chars`` characters:
    memories are taken whole while they fit, the first that does not is cut
    to what is left, and the rest are dropped. Empty when no memory is used.
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
        return ContextualPrompt("", ())
    return ContextualPrompt(CONTEXT_HEADER + CONTEXT_SEPARATOR.join(parts), tuple(ids))

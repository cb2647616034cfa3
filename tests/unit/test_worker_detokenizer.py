"""The incremental detokenizer: stable text deltas, whole characters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from workerd.domain.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer

pytestmark = pytest.mark.unit

MULTI_BYTE_TEXT = "héllo wörld, 日本語 and 🔥 fire — ok"


def decode_bytes(ids: Sequence[int]) -> str:
    """A byte-level 'tokenizer': each id is one UTF-8 byte."""
    return bytes(ids).decode("utf-8", errors="replace")


def stream(detokenizer: IncrementalDetokenizer, ids: Sequence[int]) -> list[tuple[str, int]]:
    deltas = [detokenizer.push(i) for i in ids]
    deltas.append(detokenizer.flush())
    return [d for d in deltas if d[1]]


def test_multi_byte_characters_arrive_whole() -> None:
    ids = list(MULTI_BYTE_TEXT.encode())

    deltas = stream(IncrementalDetokenizer(decode_bytes), ids)

    assert "".join(text for text, _ in deltas) == MULTI_BYTE_TEXT
    assert all(REPLACEMENT_CHAR not in text for text, _ in deltas)
    assert sum(count for _, count in deltas) == len(ids)
    assert ("🔥", 4) in deltas  # four bytes, one delta


def test_prompt_context_is_never_emitted() -> None:
    prompt = list(b"prompt: ")
    answer = list("réponse".encode())

    deltas = stream(IncrementalDetokenizer(decode_bytes, prompt), answer)

    assert "".join(text for text, _ in deltas) == "réponse"


def test_flush_returns_an_incomplete_character_as_replacement() -> None:
    detokenizer = IncrementalDetokenizer(decode_bytes)
    first_two_bytes_of_fire = list("🔥".encode())[:2]

    pushed = [detokenizer.push(i) for i in first_two_bytes_of_fire]

    assert pushed == [("", 0), ("", 0)]
    assert detokenizer.pending_tokens == 2
    assert detokenizer.flush() == (REPLACEMENT_CHAR, 2)


def test_with_the_tiny_models_byte_level_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    ids = tokenizer(MULTI_BYTE_TEXT, add_special_tokens=False)["input_ids"]
    single = [tokenizer.decode([i]) for i in ids]
    assert any(REPLACEMENT_CHAR in s for s in single)  # token by token would break characters

    detokenizer = IncrementalDetokenizer(lambda xs: str(tokenizer.decode(list(xs), skip_special_tokens=True)))
    deltas = stream(detokenizer, ids)

    assert "".join(text for text, _ in deltas) == MULTI_BYTE_TEXT
    assert all(REPLACEMENT_CHAR not in text for text, _ in deltas)
    assert sum(count for _, count in deltas) == len(ids)

"""Incremental detokenization: token ids in, stable text deltas out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: What a decoder returns where the bytes so far end inside a character.
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token breaks multi-byte characters (a byte-level BPE
    splits "日" into three tokens) and loses the spacing some tokenizers apply
    between tokens. So each push decodes a window of the growing id list, from
    a few tokens before the last emitted text, and emits only the new suffix;
    a suffix that ends in U+FFFD is held back until later tokens complete the
    character. The window keeps each push cheap on long generations.

    The concatenation of every :meth:`push` and the final :meth:`flush` is the
    text of the pushed ids (``decode(ids)`` where decoding is prefix-stable, as
    for byte-level BPE and SentencePiece tokenizers).

    Args:
        decode: ids -> text, e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``.
        context_ids: ids already present before the first push (the prompt's
            tail); they anchor the window but are never emitted.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        # Only the tail matters: it gives the first generated token the same
        # neighbours it has in the full text.
        self._ids: list[int] = list(context_ids[-6:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._pending_tokens = 0

    @property
    def pending_tokens(self) -> int:
        """Tokens pushed whose text has not been emitted yet."""
        return self._pending_tokens

    def push(self, token_id: int) -> tuple[str, int]:
        """Add one token; return (new stable text, tokens it stands for).
        The text is empty (and the count 0) while a character is incomplete."""
        self._ids.append(token_id)
        self._pending_tokens += 1
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return "", 0
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        count, self._pending_tokens = self._pending_tokens, 0
        return delta, count

    def flush(self) -> tuple[str, int]:
        """At the end of the sequence: whatever is held back, even an
        incomplete character (as U+FFFD), and the tokens it stands for."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        delta = full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""
        self._prefix_offset = self._read_offset = len(self._ids)
        count, self._pending_tokens = self._pending_tokens, 0
        return delta, count

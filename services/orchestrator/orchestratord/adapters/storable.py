"""Text that PostgreSQL can store, whatever a model or a caller wrote.

PostgreSQL refuses the NUL character in ``text`` and ``jsonb`` (the escape
``\\u0000`` included) and asyncpg cannot encode a lone surrogate. Either in
one event of a batch fails the whole batch, every time it is retried, so a
single NUL emitted by a model would stall the event journal. Every value the
orchestrator writes goes through here instead: NUL and lone surrogates become
U+FFFD (the replacement character), the rest is kept as it is.

Two hooks carry it: :class:`StorableText`, the column type of every text
column a model or a caller can fill, and :func:`dumps_storable`, the JSON
serializer of the orchestrator's engine (every jsonb value).
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

REPLACEMENT = "\ufffd"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# ``\u0000`` as json.dumps writes it: after an even number of backslashes
# (an odd one would make it the text "\u0000", which is storable).
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD."""
    if "\x00" in text or not text.isascii():
        return _UNSTORABLE.sub(REPLACEMENT, text)
    return text


def dumps_storable(value: Any) -> str:
    """JSON for a jsonb column, with every string made storable.

    ``ensure_ascii=False`` keeps non-ASCII text as it is (shorter, and a lone
    surrogate stays a character that :func:`storable` can find); JSON escapes
    NUL as ``\\u0000``, which is replaced where it is an escape."""
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in encoded:
        encoded = _ESCAPED_NUL.sub(lambda m: m.group(1) + "\\ufffd", encoded)
    if not encoded.isascii():
        encoded = _UNSTORABLE.sub(REPLACEMENT, encoded)
    return encoded


class StorableText(TypeDecorator[str]):
    """``text`` whose bound values are made storable on the way in."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else storable(value)

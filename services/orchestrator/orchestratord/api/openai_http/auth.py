"""API keys of the HTTP API: ``Authorization: Bearer <key>``.

Keys are compared in constant time and never logged: only their number is.
With no key configured every request is let in, which is meant for a server
bound to loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from orchestratord.api.openai_http.errors import OpenAIError


class ApiKeysError(Exception):
    """The keys file cannot be read; orchestratord exits with this message."""


class ApiKeys:
    """The accepted keys. Empty: authentication is off.

    Keys are kept as SHA-256 digests, so every comparison is between two
    32-byte values (the length of a key is not leaked through timing either),
    and every key is compared on every check.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = tuple(_digest(key) for key in dict.fromkeys(keys) if key)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> None:
        """Let a request in or raise a 401 in OpenAI's shape (``invalid_api_key``)."""
        if not self._digests:
            return
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
        offered = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(offered, digest)
        if not matched:
            raise _unauthorized("Incorrect API key provided.")


def load_api_keys(keys: Iterable[str], keys_file: Path | None) -> ApiKeys:
    """The keys from the settings plus those in ``keys_file`` (one per line;
    blank lines and lines starting with ``#`` are skipped).

    Raises:
        ApiKeysError: the file cannot be read.
    """
    collected = [key.strip() for key in keys if key.strip()]
    if keys_file is not None:
        try:
            text = keys_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ApiKeysError(f"cannot read http_api_keys_file {keys_file}: {err}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                collected.append(line)
    return ApiKeys(collected)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(
        401,
        message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer", "x-should-retry": "false"},
    )

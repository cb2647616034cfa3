"""Secret redaction for logs, span attributes and events."""

from __future__ import annotations

import re

_PATTERNS: tuple[re.Pattern[str], ...] = (
    # PEM private keys, whole block.
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    # Provider keys and tokens with well-known prefixes.
    re.compile(r"\b(?:sk|pk|rk)-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),
    # Bearer tokens in headers.
    re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._\-~+/]{12,}=*"),
    # Passwords in URLs: scheme://user:password@host
    re.compile(r"(?<=://)([^:/\s@]+):([^@\s/]+)(?=@)"),
    # key=value / key: value for secret-looking keys.
    re.compile(
        r"(?i)\b((?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[=:]\s*)(['\"]?)[^\s'\",;]{6,}\2"
    ),
)

REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace every secret-looking run in text with [REDACTED]."""
    if not text:
        return text
    for pattern in _PATTERNS:
        if pattern.groups == 2 and "://" in pattern.pattern:
            text = pattern.sub(lambda m: f"{m.group(1)}:{REDACTED}", text)
        elif pattern.groups == 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text

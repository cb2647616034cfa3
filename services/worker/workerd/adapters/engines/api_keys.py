"""Reading an upstream API's key from where the models config says it is."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


class ApiKeyError(ValueError):
    """The configured API key cannot be read. The message names the
    environment variable or the file, never the value."""


def load_api_key(env_var: str, file: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``file`` or the environment variable ``env_var``.

    The file wins when both are set (a mounted secret is the deliberate
    choice; an environment variable may be inherited by accident). Leading and
    trailing whitespace (the newline of ``echo key > file``) is dropped.

    Returns None when neither is set: the upstream needs no key.

    Raises:
        ApiKeyError: the file is missing or unreadable, the variable is not
            set, or the value is empty.
    """
    if file:
        path = Path(file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ApiKeyError(f"the API key file {path} does not exist") from None
        except (OSError, UnicodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise ApiKeyError(f"the API key file {path} cannot be read: {reason}") from None
        if not value:
            raise ApiKeyError(f"the API key file {path} is empty")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the API key file %s can be read by other users; chmod 600 it", path)
        return value
    if env_var:
        env = os.environ if environ is None else environ
        raw = env.get(env_var)
        if raw is None:
            raise ApiKeyError(f"the environment variable {env_var} (the API key) is not set")
        value = raw.strip()
        if not value:
            raise ApiKeyError(f"the environment variable {env_var} (the API key) is empty")
        return value
    return None

"""ListWorkers page tokens: opaque to clients, the worker id to continue after."""

from __future__ import annotations

import base64
import binascii

from hearth.errors import InvalidArgument

_PREFIX = b"workers-after:"


def encode_page_token(after_worker_id: str) -> str:
    return base64.urlsafe_b64encode(_PREFIX + after_worker_id.encode()).decode("ascii")


def decode_page_token(token: str) -> str:
    """The worker id a token continues after; "" for no token.

    Raises:
        InvalidArgument: the token is not one ListWorkers gave out.
    """
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        if not raw.startswith(_PREFIX):
            raise ValueError("wrong prefix")
        after = raw[len(_PREFIX) :].decode()
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token from a previous ListWorkers response") from None
    if not after:
        raise InvalidArgument("page_token", "is not a token from a previous ListWorkers response")
    return after

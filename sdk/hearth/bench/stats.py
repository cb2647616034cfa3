"""Small statistics for benchmark reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stack_client(stack: Any) -> Any:
    """An AsyncClient (an async context manager) pointed at a running Stack."""
    from hearth.client import AsyncClient

    return AsyncClient(
        orchestrator=stack.addresses["orchestratord"],
        pool=stack.addresses["pool-managerd"],
        memory=stack.addresses["memoryd"],
        router=stack.addresses["routerd"],
    )

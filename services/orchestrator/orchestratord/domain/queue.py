"""The job queue: two priority bands, FIFO within a band, bounded in total."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from orchestratord.domain.jobs import Priority

T = TypeVar("T")

#: Bands in the order they are served.
BANDS = (Priority.INTERACTIVE, Priority.BATCH)


class QueueFull(Exception):
    """No room for another job (and no place reserved for it)."""


class JobQueue(Generic[T]):
    """A bounded two-band priority queue keyed by job id.

    - ``pop`` takes the oldest interactive item, else the oldest batch item.
    - ``remove`` takes a cancelled job out in O(1).
    - The bound counts queued items plus places reserved with :meth:`reserve`.
      Submission reserves a place before its first await and turns it into an
      item with ``push(..., reserved=True)`` once the job is persisted, so
      concurrent submissions can never push the queue past its capacity.

    Not thread-safe; used from one event loop.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._bands: dict[Priority, OrderedDict[str, T]] = {band: OrderedDict() for band in BANDS}
        self._reserved = 0

    def __len__(self) -> int:
        return sum(len(items) for items in self._bands.values())

    def __bool__(self) -> bool:
        return any(self._bands.values())

    def __contains__(self, key: object) -> bool:
        return any(key in items for items in self._bands.values())

    def depth(self, band: Priority) -> int:
        return len(self._bands[band])

    @property
    def reserved(self) -> int:
        return self._reserved

    def reserve(self) -> bool:
        """Claim a place for a job being admitted; False when full."""
        if len(self) + self._reserved >= self.capacity:
            return False
        self._reserved += 1
        return True

    def unreserve(self) -> None:
        """Give back a place claimed with :meth:`reserve` that was not used."""
        if self._reserved <= 0:
            raise RuntimeError("unreserve without reserve")
        self._reserved -= 1

    def push(self, key: str, band: Priority, item: T, *, reserved: bool = False, force: bool = False) -> int:
        """Add an item at the back of its band; returns its position there
        (0 is next). ``reserved`` consumes a place from :meth:`reserve`;
        ``force`` ignores the bound (jobs recovered at start were admitted
        before and keep their place). Raises QueueFull otherwise."""
        if key in self:
            raise ValueError(f"{key} is already queued")
        if reserved:
            self.unreserve()
        elif not force and len(self) + self._reserved >= self.capacity:
            raise QueueFull(f"the queue holds {self.capacity} jobs")
        items = self._bands[band]
        items[key] = item
        return len(items) - 1

    def pop(self) -> T | None:
        """The next item (interactive first, FIFO within a band), or None."""
        for band in BANDS:
            items = self._bands[band]
            if items:
                return items.popitem(last=False)[1]
        return None

    def remove(self, key: str) -> T | None:
        """Take an item out wherever it is; None when it is not queued."""
        for items in self._bands.values():
            item = items.pop(key, None)
            if item is not None:
                return item
        return None

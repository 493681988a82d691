"""Batches put on the devices ahead of the step that reads them.

``device_put`` returns before its copy ends, as a jitted step returns before it has run, so
holding ``size`` batches already sent lets the next copy overlap the step now computing.
"""
from __future__ import annotations

import collections
from typing import Callable, Iterator


class DevicePrefetch:
    """Iterates ``put(batch)`` over ``it``'s batches, ``size`` of them sent ahead.

    ``get_state()`` is the loader's position before the oldest batch not yet handed out: a
    checkpoint saved between steps resumes at the first batch the run has not trained on,
    so a batch that was sent ahead but not used is read again, not skipped. ``it`` must be
    the loader's own iterator (``get_state`` is read before each batch it yields);
    ``track_state=False`` for iterators whose position nobody saves (eval).
    """

    def __init__(self, it: Iterator, put: Callable, size: int = 2, track_state: bool = True):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._it, self._put, self._size, self._track = it, put, size, track_state
        self._ahead: collections.deque = collections.deque()  # (state before it, batch)
        self._done = False

    def __iter__(self):
        return self

    def _fill(self):
        while not self._done and len(self._ahead) < self._size:
            state = self._it.get_state() if self._track else None
            try:
                batch = next(self._it)
            except StopIteration:
                self._done = True
                return
            self._ahead.append((state, self._put(batch)))

    def __next__(self):
        self._fill()
        if not self._ahead:
            raise StopIteration
        _, batch = self._ahead.popleft()
        self._fill()  # the next batch's copy starts before this one's step
        return batch

    def get_state(self):
        if not self._track:
            raise ValueError("DevicePrefetch(track_state=False) does not know its position")
        return self._ahead[0][0] if self._ahead else self._it.get_state()

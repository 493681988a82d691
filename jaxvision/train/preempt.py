"""Stop requests (SIGTERM / SIGINT / SIGHUP) that every process of a run agrees on.

One process may get the signal (a scheduler preempting one host, a closed terminal): the others
must stop at the same step, or the collective save would hang.  Processes agree at log points
with one tiny all-gather of the flag; a single process needs no collective and stops at the next
step.
"""
from __future__ import annotations

import signal

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignal:
    def __init__(self, every: int = 1):
        self.requested = False
        self.every = max(int(every), 1)
        self.previous = {}

    def __enter__(self):
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def now(self, step: int) -> bool:
        """Stop after ``step``?  The same answer on every process."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))

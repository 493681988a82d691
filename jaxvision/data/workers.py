"""grain worker processes that exit when the training process dies.

After a SIGKILL of the trainer, grain's workers (and the multiprocessing resource tracker that
waits on them) stay alive with parent 1.  ``ExitWithParent`` is the first operation of a train
loader with workers: an identity map that, the first time it runs in a worker, starts a daemon
thread watching the parent pid and leaves the process when it changes.  (A watched pid, not
prctl's PDEATHSIG: that fires when the *thread* that forked exits, which in grain is not the
trainer's lifetime.)
"""
from __future__ import annotations

import os
import threading
import time

import grain


def _watch(parent: int, period: float):
    while True:
        time.sleep(period)
        if os.getppid() != parent:
            os._exit(0)  # nothing to flush: a worker holds only prefetched batches


class ExitWithParent(grain.transforms.Map):
    def __init__(self, period: float = 1.0):
        self.owner = os.getpid()  # the trainer, where the loader is built
        self.period = period
        self._started_in = None

    def map(self, element):
        pid = os.getpid()
        if pid != self.owner and self._started_in != pid:
            self._started_in = pid
            threading.Thread(target=_watch, args=(os.getppid(), self.period),
                             daemon=True).start()
        return element

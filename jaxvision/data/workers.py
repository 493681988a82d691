"""grain worker processes tied to the trainer that started them.

After a SIGKILL of the trainer, grain's workers (and the multiprocessing resource tracker that
waits on them) stay alive with parent 1.  ``RunWorker`` is the first operation of a train
loader with workers: an identity map that, the first time it runs in a worker, starts a daemon
thread watching the parent pid and leaves the process when it changes.  (A watched pid, not
prctl's PDEATHSIG: that fires when the *thread* that forked exits, which in grain is not the
trainer's lifetime.)

Workers hand batches over in POSIX shared memory segments, which the trainer unlinks once it
has read them.  Those in flight when the whole process group is killed (as schedulers and
containers stop a job) would stay in ``/dev/shm`` until reboot, the resource tracker being
killed with the rest.  So a worker names its segments after its trainer
(``jaxvision_<pid namespace>_<trainer pid>_<random>``), and a new start unlinks those of
trainers no longer alive (``remove_dead_runs_segments``).
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from multiprocessing import shared_memory

import grain
from grain.multiprocessing import SharedMemoryArray

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory, listable


def _watch(parent: int, period: float):
    while True:
        time.sleep(period)
        if os.getppid() != parent:
            os._exit(0)  # nothing to flush: a worker holds only prefetched batches


def _pid_namespace() -> str:
    # pids are only comparable inside one namespace: containers may share /dev/shm (--ipc=host)
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def segment_prefix(trainer: int) -> str:
    return f"jaxvision_{_pid_namespace()}_{trainer}_"


def _name_segments_after(trainer: int):
    """Makes this process's new shared memory segments carry ``trainer``'s pid in their name.

    Python's ``SharedMemory(create=True)`` draws its names from ``_make_filename``; grain creates
    its segments through it and has no hook of its own for the name.
    """
    if not os.path.isdir(SHM_DIR) or not hasattr(shared_memory, "_make_filename"):
        return  # no listable /dev/shm (macOS): nothing could find the segments by name anyway
    prefix = "/" + segment_prefix(trainer)
    shared_memory._make_filename = lambda: prefix + secrets.token_hex(4)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:  # a killed trainer not yet reaped is gone too
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_runs_segments() -> tuple[int, int, list[int]]:
    """Unlinks the shared memory segments of this host's trainers that died without doing it;
    (segments, bytes, their trainers' pids)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0, 0, []
    prefix = "jaxvision_" + _pid_namespace() + "_"
    count, size, dead = 0, 0, {}
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("_", 1)[0]
        if not pid.isdigit():
            continue
        pid = int(pid)
        if pid not in dead:
            dead[pid] = not pid_alive(pid)
        if not dead[pid]:
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            nbytes = os.path.getsize(path)
            os.unlink(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
        count, size = count + 1, size + nbytes
    return count, size, sorted(p for p, d in dead.items() if d)


class Received:
    """A train loader's iterator whose batches leave no name in shared memory once received.

    grain's batches from workers are arrays mapped on segments that are unlinked when the array
    is freed, which for the batches still referenced at exit (prefetched to the device, where a
    CPU array may alias them) comes after the resource tracker has counted them as leaked.  A
    segment's name is not needed once it is mapped: unlinking it on receipt frees the memory
    when the array goes, as before, and leaves nothing behind whenever the trainer ends.
    ``close`` stops the workers; the batches they had prefetched are unlinked.
    """

    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        for leaf in batch.values():  # a batch is a flat dict of arrays (the data contract)
            if isinstance(leaf, SharedMemoryArray) and getattr(leaf, "_unlink_on_del", False):
                leaf.shm.unlink()
                leaf._unlink_on_del = False  # freed by the mapping's close alone from now on
        return batch

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)

    def close(self):
        # grain's DataLoaderIterator (0.2) has no close; the dataset iterator under it does
        inner = getattr(self._it, "_iterator", self._it)
        if hasattr(inner, "close"):
            inner.close()


class RunWorker(grain.transforms.Map):
    def __init__(self, period: float = 1.0):
        self.owner = os.getpid()  # the trainer, where the loader is built
        self.period = period
        self._started_in = None

    def map(self, element):
        pid = os.getpid()
        if pid != self.owner and self._started_in != pid:
            self._started_in = pid
            _name_segments_after(self.owner)
            threading.Thread(target=_watch, args=(os.getppid(), self.period),
                             daemon=True).start()
        return element

"""One trainer per workdir: ``WORKDIR/train.lock``, held by process 0 of a run.

Two trainers on one workdir overwrite each other's checkpoints and log every step twice, or
both crash at their first save.  The lock is an ``fcntl.flock`` on the file, so the kernel lets
go of it when the holder dies however it dies (SIGKILL, OOM killer): a crashed run leaves no
lock to clean up.  The file also holds a record of the holder (pid, host, start time) for the
refusal to name.  Where the filesystem has no flock (some network or FUSE mounts) the record
alone is the lock, and a record whose process is gone from this host is stale and taken over.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time

import jax
import numpy as np

from jaxvision.data.workers import pid_alive
from jaxvision.train.checkpoint import WorkdirError, write_error

NAME = "train.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLocked(WorkdirError):
    pass


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC")}


def _read(path: str, wait: float = 2.0) -> dict:
    """The holder's record; a holder that has just taken the lock may not have written it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.05)


def _refuse(workdir: str, holder: dict, hint: str = ""):
    who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
           f"{holder.get('started')}" if holder else "a process that wrote no record yet")
    return WorkdirLocked(f"{workdir}: in use by another trainer ({who}); wait for it to end or "
                         f"use another --workdir{hint}")


def _write(fd: int, record: dict):
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _flock(workdir: str, path: str):
    """The open, locked lock file's descriptor, or None where the filesystem has no flock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(workdir, _read(path)) from None
        except OSError as e:
            os.close(fd)
            if e.errno in NO_FLOCK:
                return None
            raise
        # the holder before us may have removed the file between our open and our flock: then
        # we hold a lock on a name nobody else sees; take it again on the file now there
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _record_only(workdir: str, path: str):
    """The lock without flock: create the record exclusively; a dead holder's is stale."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            return fd
        except FileExistsError:
            holder = _read(path)
            if holder.get("host") != socket.gethostname() or pid_alive(int(holder.get("pid", -1))):
                raise _refuse(workdir, holder, f" (if that run is gone, remove {path})") from None
            os.unlink(path)  # stale: its process is gone from this host


@contextlib.contextmanager
def hold(workdir: str):
    """Holds the workdir for the duration of a run (process 0 takes it for every process)."""
    path = os.path.join(workdir, NAME)
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _flock(workdir, path)
            if fd is None:
                fd = _record_only(workdir, path)
            _write(fd, _record())
        except WorkdirLocked as e:
            error = e
        except OSError as e:
            error = write_error(e, path, "cannot take the workdir lock")
    if jax.process_count() > 1:  # every process stops if process 0 could not take it
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = WorkdirLocked(f"{workdir}: process 0 could not take the workdir lock")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # before the unlock: no one can lock a name we are removing
            os.close(fd)

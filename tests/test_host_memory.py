"""keep_freed_memory: a large buffer freed and allocated again comes back without page faults."""
import json
import os
import subprocess
import sys

import pytest

# the module alone, by path: the package's import (models, flax) would take seconds
PROBE = """
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
took = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(3):  # 64 MiB, above glibc's largest mmap threshold, as XLA allocates (no madvise)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(json.dumps({"took": took, "faults": faults}))
"""
MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxvision",
                      "host_memory.py")


def probe(mode, env=None):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, MODULE], capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_freed_memory_is_reused_without_page_faults():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    default, kept = probe("default"), probe("keep")
    assert kept["took"] is True
    # glibc by default: every allocation of the buffer faults its pages in again
    assert min(default["faults"][1:]) > pages // 2, default
    # kept: the second and third allocations reuse the first's pages
    assert max(kept["faults"][1:]) < pages // 50, kept


def test_opt_out_changes_nothing():
    r = probe("keep", {"JAXVISION_KEEP_FREED_MEMORY": "0"})
    assert r["took"] is False
    assert min(r["faults"][1:]) > (64 << 20) // os.sysconf("SC_PAGE_SIZE") // 2, r


CLI_PROBE = """
import ctypes, resource
from jaxvision.cli import main
try:
    main(["train", "--help"])
except SystemExit:
    pass
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(faults[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_the_train_command_keeps_freed_memory():
    out = subprocess.run([sys.executable, "-c", CLI_PROBE], capture_output=True, text=True,
                         check=True)
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert int(out.stdout.split()[-1]) < pages // 50, out.stdout

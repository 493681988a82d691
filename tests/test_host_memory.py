"""keep_freed_memory: a large buffer freed and allocated again comes back without page faults."""
import json
import os
import subprocess
import sys

import pytest

# mallopt is glibc's: on another platform keep_freed_memory changes nothing by design
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc's mallopt: Linux")

PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")

# the module alone, by path: the package's import (models, flax) would take seconds
BY_PATH = """
import importlib.util
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])
host_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_memory)
took = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
"""
BY_TRAIN_COMMAND = """
from jaxvision.cli import main
try:
    main(["train", "--help"])
except SystemExit:
    pass
took = None
"""
# three allocations of 64 MiB, above glibc's largest mmap threshold, through malloc as XLA
# allocates (numpy's large arrays ask for huge pages and fault little either way)
MEASURE = """
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(json.dumps({"took": took, "faults": faults}))
"""
MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxvision",
                      "host_memory.py")


def probe(setup, *args, env=None):
    code = "import ctypes, json, resource, sys\n" + setup + MEASURE
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    default, kept = probe(BY_PATH, "default", MODULE), probe(BY_PATH, "keep", MODULE)
    assert kept["took"] is True
    # glibc by default: every allocation of the buffer faults its pages in again
    assert min(default["faults"][1:]) > PAGES // 2, default
    # kept: the second and third allocations reuse the first's pages
    assert max(kept["faults"][1:]) < PAGES // 50, kept


def test_opt_out_changes_nothing():
    r = probe(BY_PATH, "keep", MODULE, env={"JAXVISION_KEEP_FREED_MEMORY": "0"})
    assert r["took"] is False
    assert min(r["faults"][1:]) > PAGES // 2, r


def test_the_train_command_keeps_freed_memory():
    r = probe(BY_TRAIN_COMMAND)
    assert max(r["faults"][1:]) < PAGES // 50, r

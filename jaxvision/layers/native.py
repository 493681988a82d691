"""C++ handlers of XLA:CPU custom calls, compiled with the system's compiler on first use.

Each library is kept in ``$XDG_CACHE_HOME/jaxvision/<name>/<key>`` (``~/.cache``), the key a hash
of its source, the headers beside it (``pool_chunks.h``), jaxlib's version, the compiler and the
flags, so a change to any of them compiles it again and nothing else does.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Callable, Mapping

import jax


def cache_dir(name: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxvision", name)


def build(name: str, source: str, flags=(), libs=()) -> str:
    """The path of ``source`` compiled into ``libjaxvision_<name>.so`` against XLA's FFI
    headers, compiling it unless it was compiled with the same inputs before. ``flags`` go
    before the source, ``libs`` (link arguments) after it. OSError (with the reason) if it
    cannot be built."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise OSError("no C++ compiler found (set CXX or install g++)")
    here = os.path.dirname(os.path.abspath(source))
    # the source and the headers beside it, which it may include
    texts = []
    for path in [source, *sorted(glob.glob(os.path.join(here, "*.h")))]:
        with open(path, "rb") as f:
            texts.append(f.read())
    cmd = [cxx, "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(), "-I", here,
           *flags, source, *libs]
    key = hashlib.sha256(b"\0".join(
        [*texts, importlib.metadata.version("jaxlib").encode(), *(a.encode() for a in cmd)]
    )).hexdigest()[:16]
    out_dir = os.path.join(cache_dir(name), key)
    path = os.path.join(out_dir, f"libjaxvision_{name}.so")
    if os.path.exists(path):
        return path
    os.makedirs(out_dir, exist_ok=True)
    # another process may build the same file at once: each writes its own and renames it
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True)
        if done.returncode:
            raise OSError(f"compiling {source} failed ({' '.join(cmd)}):\n{done.stderr[:4000]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load(library: Callable[[], str], targets: Mapping[str, str], env: str, off_linux: str,
         fallback: str, warn: Callable[[OSError], bool]) -> str | None:
    """Registers with XLA:CPU each custom-call target of ``targets`` (name -> the handler's
    symbol) of the library whose path ``library()`` returns (building it); None, or the reason
    why not: ``env`` set to 0, not Linux (``off_linux``), or the OSError of ``library()``, warned
    as "jaxvision: ``fallback``: error" where ``warn(error)``. Callers cache it per process."""
    if os.environ.get(env, "1") == "0":
        return f"{env}=0"
    if not sys.platform.startswith("linux"):
        return off_linux
    try:
        lib = ctypes.cdll.LoadLibrary(library())
    except OSError as e:
        if warn(e):
            warnings.warn(f"jaxvision: {fallback}: {e}", RuntimeWarning, stacklevel=4)
        return str(e)
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    return None


def failed_to_compile(error: OSError) -> bool:
    """``build``'s own failure (the compiler's error), as opposed to a missing compiler."""
    return str(error).startswith("compiling")

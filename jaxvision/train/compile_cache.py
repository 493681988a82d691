"""jax's persistent compilation cache, so that a second run of a config skips XLA compilation.

Imports only jax: the bench uses it on a bare accelerator box too.
"""
from __future__ import annotations

import os

import jax


def default_dir() -> str:
    """``$XDG_CACHE_HOME/jaxvision/xla`` (``~/.cache/jaxvision/xla``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxvision", "xla")


def enable(path: str) -> str | None:
    """Cache every compiled executable in ``path`` ("" leaves the cache off). Call before the
    first compilation of the process. Returns the directory used, or None."""
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # jax caches only compilations over 1 s by default: a train step is well over that, but the
    # eval step, init and the small jits of a run add up to seconds of a warm start too
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path

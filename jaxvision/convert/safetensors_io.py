"""safetensors files in and out, through ``safetensors.numpy`` (no torch), in torchvision's key
names: a file written here loads into the torchvision model with ``load_state_dict(strict=True)``,
and one from timm or the Hugging Face hub reads as a torch state_dict would.

A safetensors file is a little-endian u64 header length, a JSON header, then raw tensor bytes:
it holds no code, so reading one needs no restrictions beyond a clear error for a broken file.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping

import numpy as np

from jaxvision.convert.merge import ConversionError

SUFFIX = ".safetensors"


def is_safetensors(path) -> bool:
    """By name, or by content: a header length followed by the JSON header's ``{``."""
    path = os.fspath(path)
    if path.endswith(SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (
        os.path.getsize(path))


def load(path) -> dict[str, np.ndarray]:
    """The file's tensors as numpy arrays (bfloat16 as ``ml_dtypes.bfloat16``)."""
    import safetensors.numpy
    from safetensors import SafetensorError

    path = os.fspath(path)
    try:
        try:
            return safetensors.numpy.load_file(path)
        except TypeError as e:  # safetensors.numpy has no bfloat16; jax's arrays do
            if "bfloat16" not in str(e):
                raise
            import safetensors.flax

            return {k: np.asarray(v) for k, v in safetensors.flax.load_file(path).items()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"{path}: not a readable safetensors file ({first})") from None


def metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def save(path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, object]) -> str:
    """Write ``tensors`` to ``path`` (refusing to overwrite), under a temporary name renamed at
    the end. ``meta`` values that are not strings are stored as JSON."""
    import safetensors.numpy

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists; refusing to overwrite")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    os.close(fd)
    try:
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                    tmp, metadata={"format": "pt", **header})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path

"""torchvision state_dict -> Flax variables.

One generic rule, possible because jaxvision's parameter paths mirror torch's names: split the
key on ``.``, join a numeric part to the part before it with ``_`` (``layer1.0.conv1`` ->
``layer1_0/conv1``), then place the tensor by its leaf name:

    weight        -> params kernel (transposed: OIHW -> HWIO, (out, in) -> (in, out)),
                     else params scale, else batch_stats scale (frozen BN), else params weight
    bias          -> params bias, else batch_stats bias
    running_mean  -> batch_stats mean;  running_var -> batch_stats var
    anything else -> params/<same name>, untouched (ViT's class_token, in_proj_weight, ...)

``num_batches_tracked`` carries no weights and is reported as ignored.
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvision.convert import pth, safetensors_io
from jaxvision.convert.merge import ConversionError, Path, Report, flatten
from jaxvision.registry import get_spec

_CANDIDATES = {
    "weight": (("params", "kernel"), ("params", "scale"), ("batch_stats", "scale"),
               ("params", "weight")),
    "bias": (("params", "bias"), ("batch_stats", "bias")),
    "running_mean": (("batch_stats", "mean"),),
    "running_var": (("batch_stats", "var"),),
}
_IGNORED = ("num_batches_tracked",)


def module_path(key: str) -> tuple[tuple[str, ...], str]:
    parts = key.split(".")
    modules: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and modules:
            modules[-1] = f"{modules[-1]}_{part}"
        else:
            modules.append(part)
    return tuple(modules), parts[-1]


def _to_kernel(w: np.ndarray) -> np.ndarray:
    if w.ndim == 4:  # conv OIHW -> HWIO
        return w.transpose(2, 3, 1, 0)
    if w.ndim == 3:  # conv1d OIK -> KIO
        return w.transpose(2, 1, 0)
    if w.ndim == 2:  # linear (out, in) -> (in, out)
        return w.T
    return w


_KERNEL_TO_TORCH = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}  # HWIO -> OIHW, KIO -> OIK, (in, out)


def torch_shape(path: Path, shape: tuple) -> tuple:
    """A Flax leaf's shape in torch's layout, for messages a torch user can read."""
    if path[-1] != "kernel":
        return shape
    order = _KERNEL_TO_TORCH.get(len(shape), range(len(shape)))
    return tuple(shape[i] for i in order)


# The rule's inverse (Flax path -> torch key). Joining ``.N`` with ``_`` loses one fact: which
# ``_N`` endings were torchvision's own. Only these are (every torchvision model's keys round-trip:
# tests/test_safetensors.py): Inception's branch3x3_1..., ViT's encoder_layer_0 and ln_1.
_OWN_NUMBERED = re.compile(r"(branch\d+x\d+\w*|encoder_layer|ln)_\d+")
_LEAF_NAME = {place: leaf for leaf, places in _CANDIDATES.items() for place in places}


def torch_module(part: str) -> str:
    if _OWN_NUMBERED.fullmatch(part):
        return part
    found = re.fullmatch(r"(.+?)((?:_\d+)+)", part)
    return part if found is None else found.group(1) + found.group(2).replace("_", ".")


def torch_key(path: Path) -> str:
    """The torch state_dict key of a Flax variable path, e.g. ('params', 'layer1_0', 'conv1',
    'kernel') -> 'layer1.0.conv1.weight'."""
    collection, *mods, leaf = path
    leaf = _LEAF_NAME.get((collection, leaf), leaf)
    return ".".join([*(torch_module(m) for m in mods), leaf])


def to_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
    """torchvision's state_dict of a model's variables (numpy arrays in torch's layouts), with
    the ``num_batches_tracked`` counter (0: not tracked here) every trained BatchNorm has."""
    flat = {p: v for p, v in flatten(variables).items() if p[0] in ("params", "batch_stats")}
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        value = np.asarray(value)
        if path[-1] == "kernel":
            value = np.ascontiguousarray(value.transpose(_KERNEL_TO_TORCH.get(value.ndim, None)))
        out[torch_key(path)] = value
        if path[0] == "batch_stats" and path[-1] == "mean" and (*path[:-1], "scale") not in flat:
            out[torch_key(path)[: -len("running_mean")] + "num_batches_tracked"] = np.zeros(
                (), np.int64)  # a FrozenBatchNorm2d (statistics and affine in batch_stats) has none
    return out


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy().copy()  # torch may update the tensor in place later
    return np.array(value)


def model_state_dict(name: str, variables: Mapping, model) -> dict[str, np.ndarray]:
    """torchvision's state_dict of model ``name``'s ``variables``, with the buffers torchvision
    stores and jaxvision computes added back from ``model`` (the family's ``export_state_dict``),
    so that torchvision's model loads it with strict=True."""
    state_dict = to_state_dict(variables)
    export = get_spec(name).export_state_dict
    return state_dict if export is None else export(state_dict, model)


def map_state_dict(state_dict: Mapping[str, Any], target: Mapping, report: Report):
    """Flax path for every torch key that has a place in ``target``; the rest are reported."""
    leaves = set(flatten(target))
    source: dict[Path, np.ndarray] = {}
    names: dict[Path, str] = {}
    for key, value in state_dict.items():
        mods, leaf = module_path(key)
        if leaf in _IGNORED:
            report.ignored.append(key)
            continue
        candidates = _CANDIDATES.get(leaf, (("params", leaf),))
        for collection, name in candidates:
            path = (collection, *mods, name)
            if path in leaves:
                array = to_numpy(value)
                source[path] = _to_kernel(array) if name == "kernel" else array
                names[path] = key
                break
        else:
            report.unexpected.append(key)
    return source, names


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    """Accept a bare state_dict or the usual training-checkpoint wrappers around one."""
    for wrapper in ("state_dict", "model", "model_state_dict", "model_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
        raise ConversionError(f"{path}: expected a torch state_dict (a mapping of parameter names "
                              f"to tensors), found {type(obj).__name__}")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


READERS = ("auto", "torch", "numpy")


def pth_reader(reader: str | None = None) -> str:
    """``torch`` or ``numpy``: the argument, else $JAXVISION_PTH_READER, else torch when it is
    installed (both give the same arrays bit for bit; the numpy reader needs no torch)."""
    reader = reader or os.environ.get("JAXVISION_PTH_READER") or "auto"
    if reader not in READERS:
        raise ValueError(f"pth reader {reader!r} (JAXVISION_PTH_READER): expected one of "
                         f"{', '.join(READERS)}")
    if reader == "auto":
        try:
            reader = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
        except (ImportError, ValueError):  # torch hidden or half-removed
            reader = "numpy"
    return reader


def _torch_load(path: str):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        glob = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))
        if glob:  # a pickled object (a whole model): never repeat torch's weights_only=False
            raise pth.refused(path, glob.group(1)) from None
        raise pth.unreadable(path, e) from e


def load_state_dict(path: str | os.PathLike, reader: str | None = None) -> Mapping[str, Any]:
    """Read a ``.safetensors`` file, or a ``.pth`` file so that a file from the internet can hold
    only tensors and plain containers, never code that runs here: with torch's ``weights_only``
    loader or, without torch, jaxvision's own restricted unpickler (``reader``: ``pth_reader``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConversionError(f"{path}: is a directory, expected a torch .pth or .safetensors file")
    if safetensors_io.is_safetensors(path):
        return _unwrap(safetensors_io.load(path), path)
    obj = _torch_load(path) if pth_reader(reader) == "torch" else pth.load(path)
    return _unwrap(obj, path)


def as_state_dict(source: Any) -> Mapping[str, Any]:
    """A state_dict from a path, a torch module or a mapping."""
    if isinstance(source, (str, os.PathLike)):
        return load_state_dict(source)
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return source.state_dict()
    return _unwrap(source, "state_dict")

"""Converted variables on disk: an Orbax checkpoint plus a small JSON naming the model.

A directory is written under a temporary name and renamed into place at the end, so a failure
at any point leaves nothing at the destination.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvision.convert.merge import ConversionError

META = "jaxvision.json"
ITEM = "variables"


def is_store(path) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), META))


def check_destination(out_dir) -> str:
    """Refuse a destination that holds anything, before any weights are read."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"{out_dir}: already exists and is not empty; refusing to overwrite")
    return out_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(out_dir: str) -> list[str]:
    """Temporary directories left by a killed conversion to the same destination (their
    writer's pid, in the name, is gone): removed, and returned for the message."""
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    prefix = f".{base}.tmp-"
    removed = []
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-")[0]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue  # another conversion to the same place is running
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


@contextlib.contextmanager
def atomic_dir(out_dir):
    """A temporary directory beside ``out_dir`` (which must be absent or empty) to fill; renamed
    to ``out_dir`` when the block ends, removed if it raises."""
    out_dir = check_destination(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    clean_stale_temps(out_dir)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-{os.getpid()}-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_meta(directory, meta: Mapping[str, Any]) -> None:
    with open(os.path.join(directory, META), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def save(out_dir, model_name: str, variables: Mapping, model_kwargs: Mapping[str, Any],
         extra: Mapping[str, Any] | None = None) -> str:
    with atomic_dir(out_dir) as tmp:
        tree = jax.tree.map(np.asarray, dict(variables))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, ITEM), tree)
        write_meta(tmp, {"model": model_name, "model_kwargs": dict(model_kwargs), **(extra or {})})
    return os.path.abspath(os.fspath(out_dir))


def read_meta(path, model_name=None) -> dict:
    """The directory's metadata; refused, naming both, if ``model_name`` is given and the
    directory holds another model's weights."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    try:
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not a jaxvision weights directory (no readable {META}: "
                              f"{e})") from e
    if model_name is not None and meta.get("model") != model_name:
        raise ConversionError(f"{path}: holds weights for {meta.get('model')!r}, "
                              f"not {model_name!r}")
    return meta


def load(path, model_name=None) -> tuple[dict, dict]:
    """(metadata, variables as numpy arrays); ``model_name``: as ``read_meta``'s."""
    meta = read_meta(path, model_name)
    item = os.path.join(os.path.abspath(os.fspath(path)), ITEM)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(item)
    except Exception as e:
        raise ConversionError(f"{item}: could not restore the Orbax checkpoint ({e})") from e
    return meta, jax.tree.map(np.asarray, variables)

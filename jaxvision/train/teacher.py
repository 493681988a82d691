"""The teacher of ``task = "distillation"`` (``teacher.name``, ``teacher.pretrained``): its
model and frozen variables, from a torchvision ``.pth``, a ``jaxvision convert`` directory or
a jaxvision train workdir.

The variables reach the jitted train step as an argument: they are not compiled in as
constants, not in the optimizer, not in the checkpoints. A resumed run reloads them from the
same path; their digest, kept in the checkpoint's metadata, refuses a resume whose teacher
weights changed (the run would not be the one it continues).
"""
from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxvision as jv
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxvision.convert import store
from jaxvision.convert.merge import ConversionError


def digest(variables) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _from_workdir(name, path, log):
    from jaxvision.train.runs import load_run

    _, meta, model, variables, _ = load_run(path, log)
    if meta["model"] != name:
        raise ValueError(f"teacher.pretrained: {path} is a run of {meta['model']!r}, "
                         f"teacher.name is {name!r}")
    return model, variables


def _from_pth(name, path, num_classes, dtype):
    from jaxvision.convert import torchvision as tv

    model = jv.create_model(name, num_classes=num_classes, dtype=dtype)
    try:
        return model, jv.load_pretrained(name, tv.load_state_dict(path), True, model=model)
    except ConversionError as e:
        raise ValueError(f"teacher.pretrained: {path} does not fit {name} with "
                         f"{num_classes} classes (the student's): {e}") from None


def load_teacher(config, num_classes: int, dtype=jnp.float32, log=print):
    """``(model, variables)`` of the config's teacher, or ``(None, None)`` for a task other
    than distillation. Its class count must be the student's ``num_classes``."""
    from jaxvision.tasks import task_name

    if task_name(config) != "distillation":
        return None, None
    name, path, d = config.teacher.name, config.teacher.pretrained, config.distill
    if os.path.isfile(os.path.join(path, "config.json")):
        model, variables = _from_workdir(name, path, log)
    elif store.is_store(path):
        try:
            store.read_meta(path, name)  # before the weights are read
        except ConversionError as e:
            raise ValueError(f"teacher.pretrained: {e} (teacher.name)") from None
        model, variables = jv.create_model(name, pretrained=path, dtype=dtype)
    elif os.path.isfile(path):
        model, variables = _from_pth(name, path, num_classes, dtype)
    else:
        raise ValueError(f"teacher.pretrained: {path} is neither a .pth file, a "
                         "'jaxvision convert' directory nor a jaxvision train workdir")
    size = config.data.image_size
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, 3)), train=False),
                         variables)
    classes = out.shape[-1]
    if classes != num_classes:
        raise ValueError(f"teacher: {name} ({path}) predicts {classes} classes, "
                         f"the student {num_classes}; distillation needs the same classes")
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    log(f"distilling from {name} ({path}) at temperature {d.temperature}, alpha {d.alpha}")
    return model, variables


def bind(train_step, mesh, variables):
    """``step(state, batch)`` of a jitted ``step(state, batch, teacher_variables)``: the
    variables placed once, replicated over ``mesh``, then passed at every call."""
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    return lambda state, batch: train_step(state, batch, variables)

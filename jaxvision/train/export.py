"""``jaxvision export``: a run's best eval weights (or a converted weights directory) written for
use elsewhere: a jaxvision weights directory; a ``.safetensors`` file in torchvision's key
names that ``torchvision.models.X().load_state_dict(safetensors.torch.load_file(F))`` loads
strictly; or a StableHLO program (``jax.export``) that runs with jax alone."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxvision.convert import safetensors_io, store
from jaxvision.convert.torchvision import model_state_dict

FORMATS = ("dir", "safetensors", "stablehlo")
PROGRAM, WEIGHTS = "model.stablehlo", "variables.npz"
# what runs an exported directory with jax alone (no jaxvision, no flax); written beside it
LOADER = '''"""Run this directory's model with jax alone: python run.py IMAGES.npy
(N, H, W, 3, float32, normalised with jaxvision.json's preprocessing mean/std) -> outputs.npz
(logits, or a dense model's maps by name); or import run and call run.run(images)."""
import os, sys
import jax
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "model.stablehlo"), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
variables = {}
with np.load(os.path.join(here, "variables.npz")) as flat:
    for key in flat.files:  # "params/conv1/kernel" -> nested dicts, as exported
        *parents, leaf = key.split("/")
        node = variables
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = flat[key]


def run(images):
    return exported.call(variables, images)


if __name__ == "__main__":
    out = run(np.load(sys.argv[1]))
    np.savez("outputs.npz", **(out if isinstance(out, dict) else {"logits": out}))
'''



@dataclasses.dataclass
class Exportable:
    name: str
    model: Any
    variables: dict
    model_kwargs: dict
    meta: dict  # source, preprocessing, categories
    step: int | None = None  # the checkpoint's, from a workdir


def from_workdir(workdir: str) -> Exportable:
    """The best checkpoint's eval weights (EMA if used), with what the run's eval transform used,
    without reading the data (which may be gone by now)."""
    from jaxvision.data.loader import preprocessing as run_preprocessing
    from jaxvision.tasks import task_name
    from jaxvision.train.restore import load_run

    config, meta, model, variables, step = load_run(workdir)
    d = config.data
    mean, std, resize = run_preprocessing(d, config.model.name, task_name(config))
    preprocessing = {"resize_size": int(resize), "crop_size": int(d.image_size),
                     "interpolation": d.interpolation,
                     "mean": [float(m) for m in mean], "std": [float(s) for s in std],
                     "from": f"the config of the run in {workdir}"}
    return Exportable(config.model.name, model, variables,
                      {"num_classes": meta["num_classes"], **config.model.kwargs.to_dict()},
                      {"source": f"{workdir} step {step}", "preprocessing": preprocessing,
                       "categories": meta["class_names"]}, step)


def from_weights_dir(path: str) -> Exportable:
    import jaxvision as jv

    saved = store.read_meta(path)
    model, variables = jv.create_model(saved["model"], pretrained=path)
    extra = {k: v for k, v in saved.items() if k not in ("model", "model_kwargs")}
    return Exportable(saved["model"], model, variables, dict(saved.get("model_kwargs", {})), extra)


def write(item: Exportable, fmt: str, out: str, platforms=None) -> str:
    if fmt == "dir":
        return store.save(out, item.name, item.variables, item.model_kwargs, extra=item.meta)
    if fmt == "safetensors":
        meta = {"jaxvision_model": item.name, "model_kwargs": item.model_kwargs, **item.meta}
        state_dict = model_state_dict(item.name, item.variables, item.model)
        return safetensors_io.save(out, state_dict, meta)
    if fmt == "stablehlo":
        return write_stablehlo(item, out, platforms)
    raise ValueError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")


def write_stablehlo(item: Exportable, out: str, platforms=None) -> str:
    """The eval-mode forward serialised with ``jax.export`` for a symbolic batch size, the
    variables beside it (``variables.npz``), the preprocessing in ``jaxvision.json`` and a
    loader (``run.py``) that needs only jax. Traced with XLA's own convolutions: the CPU
    rewrites are chosen for one machine, an exported program runs on others."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import traverse_util

    from jaxvision.layers import lowering

    size = getattr(item.model, "image_size", None) or item.meta["preprocessing"]["crop_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(
        {c: item.variables[c] for c in ("params", "batch_stats") if c in item.variables}).items()}
    variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    (batch,) = jax.export.symbolic_shape("batch")
    x = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
    forward = jax.jit(lambda v, images: item.model.apply(v, images, train=False))
    with lowering.using("xla"):
        exported = jax.export.export(forward, platforms=platforms)(
            jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables), x)
    with store.atomic_dir(out) as tmp:
        with open(os.path.join(tmp, PROGRAM), "wb") as f:
            f.write(exported.serialize())
        np.savez(os.path.join(tmp, WEIGHTS), **flat)
        with open(os.path.join(tmp, "run.py"), "w") as f:
            f.write(LOADER)
        store.write_meta(tmp, {
            "model": item.name, "model_kwargs": item.model_kwargs, **item.meta,
            "format": "stablehlo", "platforms": list(exported.platforms),
            "input": {"shape": ["batch", h, w, 3], "dtype": "float32", "layout": "NHWC",
                      "normalised": "with preprocessing mean/std"}})
    return os.path.abspath(out)


def check_destination(fmt: str, out: str) -> None:
    """Refuse an occupied destination before minutes of loading."""
    if fmt in ("dir", "stablehlo"):
        store.check_destination(out)
    elif os.path.exists(out):
        raise FileExistsError(f"{out}: already exists; refusing to overwrite")

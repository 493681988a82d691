"""``jaxvision export``: a run's best eval weights (or a converted weights directory) written for
use elsewhere: a jaxvision weights directory; a ``.safetensors`` file in torchvision's key
names that ``torchvision.models.X().load_state_dict(safetensors.torch.load_file(F))`` loads
strictly; a StableHLO program (``jax.export``) that runs with jax alone; or an ONNX model
(train/onnx_lowering.py) that runs with onnxruntime alone."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxvision.convert import safetensors_io, store
from jaxvision.convert.torchvision import model_state_dict

FORMATS = ("dir", "safetensors", "stablehlo", "onnx")
PROGRAM, WEIGHTS, ONNX_FILE = "model.stablehlo", "variables.npz", "model.onnx"
# families whose forward ends in data-dependent postprocessing (NMS, top-k) ONNX is not given
DETECTOR_FAMILIES = ("fpn_detector", "ssd", "yolo")
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
ONNX_LOADER = '''"""Run this directory's model with onnxruntime alone: python run.py IMAGES.npy
(N, H, W, 3, float32, normalised with jaxvision.json's preprocessing mean/std) -> outputs.npz
(logits, or a dense model's maps by name); or import run and call run.run(images)."""
import os, sys
import numpy as np
import onnxruntime

here = os.path.dirname(os.path.abspath(__file__))
session = onnxruntime.InferenceSession(os.path.join(here, "model.onnx"),
                                       providers=["CPUExecutionProvider"])


def run(images):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": np.asarray(images, np.float32)})))


if __name__ == "__main__":
    np.savez("outputs.npz", **run(np.load(sys.argv[1])))
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
    from jaxvision.tasks import predict_data, task_name
    from jaxvision.train.runs import load_run

    config, meta, model, variables, step = load_run(workdir)
    data = predict_data(config.data, config.model.name, task_name(config), meta["class_names"])
    preprocessing = {**data.preprocessing, "from": f"the config of the run in {workdir}"}
    return Exportable(config.model.name, model, variables,
                      {"num_classes": meta["num_classes"], **config.model.kwargs.to_dict()},
                      {"source": f"trained with jaxvision: {workdir} step {step}",
                       "preprocessing": preprocessing,
                       "categories": meta["class_names"]}, step)


def from_weights_dir(path: str) -> Exportable:
    import jaxvision as jv

    saved = store.read_meta(path)
    model, variables = jv.create_model(saved["model"], pretrained=path)
    extra = {k: v for k, v in saved.items() if k not in ("model", "model_kwargs")}
    return Exportable(saved["model"], model, variables, dict(saved.get("model_kwargs", {})), extra)


def with_card(item: Exportable) -> Exportable:
    """``item`` with a model card (convert/card.py) in its metadata: the converted directory's
    own, or one naming the run, with the parameter count of the weights written."""
    from jaxvision.convert import card

    n = card.num_params(item.variables)
    made = item.meta.get("card") or card.weights_card(
        item.name, str(item.meta.get("source", "unknown")), item.meta.get("preprocessing", {}), n)
    return dataclasses.replace(item, meta={**item.meta, "card": {**made, "num_params": n}})


def write(item: Exportable, fmt: str, out: str, platforms=None) -> str:
    item = with_card(item)
    if fmt == "dir":
        return store.save(out, item.name, item.variables, item.model_kwargs, extra=item.meta)
    if fmt == "safetensors":
        meta = {"jaxvision_model": item.name, "model_kwargs": item.model_kwargs, **item.meta}
        state_dict = model_state_dict(item.name, item.variables, item.model)
        return safetensors_io.save(out, state_dict, meta)
    if fmt == "stablehlo":
        return write_stablehlo(item, out, platforms)
    if fmt == "onnx":
        return write_onnx(item, out)
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

    h, w = _input_size(item)
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


def _input_size(item: Exportable) -> tuple[int, int]:
    size = getattr(item.model, "image_size", None) or item.meta["preprocessing"]["crop_size"]
    return (size, size) if isinstance(size, int) else tuple(size)


def write_onnx(item: Exportable, out: str) -> str:
    """The eval-mode forward as ONNX (opset 18, symbolic batch, weights inside), with
    ``jaxvision.json`` and an onnxruntime-only ``run.py`` beside it. Detectors are refused:
    their forward ends in NMS and top-k over data-dependent counts."""
    import jax
    import onnx

    from jaxvision.layers import lowering
    from jaxvision.registry import get_spec
    from jaxvision.train import onnx_lowering

    family = get_spec(item.name).family
    if family in DETECTOR_FAMILIES:
        raise ValueError(f"{item.name}: ONNX export covers classifiers and segmenters; a "
                         f"{family} detector's forward ends in NMS and top-k over data-dependent "
                         "counts, which this exporter does not express (use --format stablehlo)")
    h, w = _input_size(item)
    x = jax.ShapeDtypeStruct((1, h, w, 3), "float32")
    with lowering.using("xla"):
        sample = jax.eval_shape(lambda v, i: item.model.apply(v, i, train=False),
                                item.variables, x)
        names = ([jax.tree_util.keystr(k, simple=True, separator="/")
                  for k, _ in jax.tree_util.tree_flatten_with_path(sample)[0]]
                 if isinstance(sample, dict) else ["logits"])
        proto = onnx_lowering.to_onnx(
            lambda images: item.model.apply(item.variables, images, train=False),
            (onnx_lowering.BATCH, h, w, 3), names, doc=f"jaxvision {item.name}")
    with store.atomic_dir(out) as tmp:
        onnx.save_model(proto, os.path.join(tmp, ONNX_FILE),
                        save_as_external_data=proto.ByteSize() > 1_800_000_000,
                        location=ONNX_FILE + ".data")
        with open(os.path.join(tmp, "run.py"), "w") as f:
            f.write(ONNX_LOADER)
        store.write_meta(tmp, {
            "model": item.name, "model_kwargs": item.model_kwargs, **item.meta,
            "format": "onnx", "opset": onnx_lowering.OPSET, "outputs": names,
            "input": {"name": "images", "shape": ["batch", h, w, 3], "dtype": "float32",
                      "layout": "NHWC", "normalised": "with preprocessing mean/std"}})
    return os.path.abspath(out)


def check_destination(fmt: str, out: str) -> None:
    """Refuse an occupied destination before minutes of loading."""
    if fmt in ("dir", "stablehlo", "onnx"):
        store.check_destination(out)
    elif os.path.exists(out):
        raise FileExistsError(f"{out}: already exists; refusing to overwrite")

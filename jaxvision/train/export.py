"""``jaxvision export``: a run's best eval weights (or a converted weights directory) written for
use elsewhere: a jaxvision weights directory, or a ``.safetensors`` file in torchvision's key
names that ``torchvision.models.X().load_state_dict(safetensors.torch.load_file(F))`` loads
strictly."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxvision.api import torch_state_dict
from jaxvision.convert import safetensors_io, store

FORMATS = ("dir", "safetensors")


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


def write(item: Exportable, fmt: str, out: str) -> str:
    if fmt == "dir":
        return store.save(out, item.name, item.variables, item.model_kwargs, extra=item.meta)
    if fmt == "safetensors":
        meta = {"jaxvision_model": item.name, "model_kwargs": item.model_kwargs, **item.meta}
        state_dict = torch_state_dict(item.name, item.variables, item.model)
        return safetensors_io.save(out, state_dict, meta)
    raise ValueError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")


def check_destination(fmt: str, out: str) -> None:
    """Refuse an occupied destination before minutes of loading."""
    if fmt == "dir":
        store.check_destination(out)
    elif os.path.exists(out):
        raise FileExistsError(f"{out}: already exists; refusing to overwrite")

"""What a weights directory's weights expect: preprocessing and category names.

torchvision's weights differ per release (resnet50 IMAGENET1K_V2 is resized to 232, not 256), so
a converted directory records the preprocessing of the exact weights it holds: from torchvision's
weights enum when the file is one of torchvision's (matched by its download name, or named with
``--weights``), from timm's ``pretrained_cfg`` for ``timm:`` weights, else the registry spec.
"""
from __future__ import annotations

import os
from importlib import resources

from jaxvision.convert import timm_hub
from jaxvision.convert.merge import ConversionError


def spec_preprocessing(spec) -> dict:
    return {**spec.preprocessing, "from": f"the jaxvision registry spec of {spec.name}"}


def torchvision_weights(spec, src, weights_name: str | None = None):
    """torchvision's weights enum member for ``src`` (by file name) or ``weights_name``."""
    if not spec.torch_name:
        return None
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        return None
    members = list(get_model_weights(spec.torch_name))
    if weights_name:
        found = [w for w in members if w.name == weights_name]
        if not found:
            raise ConversionError(f"--weights {weights_name}: torchvision's {spec.torch_name} has "
                                  f"{', '.join(w.name for w in members)}")
        return found[0]
    base = os.path.basename(os.fspath(src))
    return next((w for w in members if os.path.basename(w.url) == base), None)


def weights_preprocessing(weights) -> dict:
    t = weights.transforms()
    return {"resize_size": int(t.resize_size[0]), "crop_size": int(t.crop_size[0]),
            "interpolation": t.interpolation.value, "mean": [float(m) for m in t.mean],
            "std": [float(s) for s in t.std], "from": f"torchvision {weights}"}


def categories(name_or_file: str) -> list[str]:
    """``imagenet`` (shipped with the package) or a text file, one name per line."""
    if name_or_file == "imagenet":
        text = resources.files("jaxvision.data").joinpath("imagenet_categories.txt").read_text()
    elif os.path.isfile(name_or_file):
        with open(name_or_file) as f:
            text = f.read()
    else:
        raise FileNotFoundError(f"--categories {name_or_file}: not 'imagenet' and no such file")
    return [line.strip() for line in text.splitlines() if line.strip()]


def describe(spec, src, weights_name=None, categories_arg=None, num_classes=None) -> dict:
    """The ``preprocessing`` and ``categories`` entries of a converted directory's metadata."""
    if timm_hub.is_timm(src):
        weights, out = None, {"preprocessing": timm_hub.preprocessing(src, timm_hub.fetch(src)[1])}
    else:
        weights = torchvision_weights(spec, src, weights_name)
        out = {"preprocessing": weights_preprocessing(weights) if weights
               else spec_preprocessing(spec)}
    names = categories(categories_arg) if categories_arg else (
        list(weights.meta["categories"]) if weights and weights.meta.get("categories") else None)
    if names is not None:
        if num_classes is not None and len(names) != num_classes:
            raise ConversionError(f"--categories: {len(names)} names for a model with "
                                  f"{num_classes} classes")
        out["categories"] = names
    return out


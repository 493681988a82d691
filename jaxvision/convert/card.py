"""Model cards: where a model's weights come from, what they expect, how big they are, how well
they score where that is published, and under which licence their source offers them. Shown by
``jaxvision info NAME`` (torchvision's published weights) and ``jaxvision info DIR`` (the card a
converted or exported directory records), and written into every export."""
from __future__ import annotations

import functools
import json
import os

from jaxvision.convert.preprocess import spec_preprocessing
from jaxvision.registry import get_spec

# torchvision's code is BSD-3-Clause; its model docs add that pre-trained weights "may have their
# own licenses or terms and conditions derived from the dataset used for training"
TORCHVISION_LICENSE = ("BSD-3-Clause (torchvision); torchvision notes the weights may carry "
                       "terms derived from their training data")
UNKNOWN = "unknown: not published with these weights"


def model_card(name: str) -> dict:
    """The card of ``name``'s published torchvision weights (None where torchvision has none)."""
    spec = get_spec(name)
    tv = spec.torchvision_weights
    weights = None
    if tv is not None:
        weights = {"provenance": f"torchvision {tv.weights} (torchvision {_tv_version()})",
                   "recipe": tv.recipe,
                   "accuracy": {"dataset": "ImageNet-1K", "acc@1": tv.acc1, "acc@5": tv.acc5},
                   "gflops": tv.gflops, "license": TORCHVISION_LICENSE}
    elif spec.torch_name:
        weights = {"provenance": f"torchvision's {spec.torch_name} weights (convert them with "
                                 "'jaxvision convert')", "accuracy": None,
                   "license": TORCHVISION_LICENSE}
    return {"model": name, "family": spec.family, "num_params": spec.num_params,
            "num_params_at": "the default configuration (1000 classes)",
            "preprocessing": spec_preprocessing(spec),
            "weights": weights or {"provenance": "none published: train or convert your own",
                                   "accuracy": None, "license": None}}


@functools.lru_cache(maxsize=None)
def _tv_version() -> str:
    """The torchvision release whose published metadata tv_weights.json holds."""
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "tv_weights.json")) as f:
        return json.load(f)["torchvision"]


def weights_card(name: str, source: str, preprocessing: dict, num_params: int,
                 tv_weights=None, accuracy: dict | None = None) -> dict:
    """The card a directory records for weights read from ``source``: torchvision's weights
    enum member ``tv_weights`` when the file is one of torchvision's, a ``timm:`` name, or a
    file or run of the user's."""
    if tv_weights is not None:
        metrics = tv_weights.meta.get("_metrics", {})
        dataset, scores = next(iter(metrics.items()), (None, {}))
        weights = {"provenance": f"torchvision {tv_weights}", "recipe": tv_weights.meta.get(
            "recipe"), "accuracy": {"dataset": dataset, **scores} if scores else None,
                   "license": TORCHVISION_LICENSE}
    elif source.startswith("timm:"):
        tagged = source[len("timm:"):]
        weights = {"provenance": f"timm {tagged} from the Hugging Face hub (timm/{tagged})",
                   "accuracy": None, "license": preprocessing.get("license") or (
                       "unknown: timm's pretrained_cfg names none")}
    else:
        weights = {"provenance": source, "accuracy": accuracy,
                   "license": "unknown: set by whoever made these weights"}
    return {"model": name, "family": get_spec(name).family,
            "num_params": None if num_params is None else int(num_params),
            "preprocessing": preprocessing, "weights": weights}


def directory_card(path) -> dict:
    """The card a converted or exported directory records; for one written before cards, what
    its metadata says (the parameter count only where the model has its default classes)."""
    from jaxvision.convert import store

    meta = store.read_meta(path)
    card = meta.get("card")
    if card is None:
        spec = get_spec(meta["model"])
        classes = meta.get("model_kwargs", {}).get("num_classes")
        card = weights_card(meta["model"], str(meta.get("source", "unknown")),
                            meta.get("preprocessing") or spec_preprocessing(spec),
                            spec.num_params if classes in (None, 1000) else None)
    return {**card, "directory": os.path.abspath(os.fspath(path)),
            "format": meta.get("format", "dir")}


def num_params(variables) -> int:
    import jax
    import numpy as np

    return int(sum(np.size(x) for x in jax.tree.leaves(variables.get("params", {}))))

"""Model registry: one :class:`ModelSpec` per public model name."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import json
import os
from typing import Any, Callable, Mapping, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_preprocessing(resize_size, crop_size, interpolation: str, mean, std) -> dict:
    """The one spelling of a classifier's eval transform (torchvision's ``weights.transforms()``:
    resize the shorter side, centre crop, normalise) that weights directories, exports and the
    run tools record and ``tasks.classification.top_classes`` reads."""
    return {"resize_size": int(resize_size), "crop_size": int(crop_size),
            "interpolation": interpolation, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone can return with ``features_only=True``."""

    name: str
    channels: int
    reduction: int  # input size / feature size (for the default, non-dilated model)


@dataclasses.dataclass(frozen=True)
class TorchvisionWeights:
    """torchvision's DEFAULT ImageNet-1K weights of a classification model, as their ``meta``
    publishes them (tv_weights.json, written from the installed torchvision by
    scripts/gen_tv_weights.py).  torchvision publishes the recipe's URL, not its
    hyper-parameters (epochs, learning rate, batch size, augmentation): follow ``recipe``."""

    weights: str  # the enum member, e.g. "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"
    recipe: str  # meta["recipe"]
    acc1: float  # meta["_metrics"]["ImageNet-1K"]["acc@1"], at the weights' own preset
    acc5: float
    gflops: float  # meta["_ops"]
    file_size_mb: float  # meta["_file_size"]
    docs: str  # meta["_docs"], whitespace collapsed


@functools.lru_cache(maxsize=None)
def _default_weights() -> dict:
    path = os.path.join(os.path.dirname(__file__), "tv_weights.json")
    with open(path) as f:
        return json.load(f)["default_weights"]


def torchvision_weights(torch_name: Optional[str]) -> Optional[TorchvisionWeights]:
    """The published meta of ``torch_name``'s DEFAULT classification weights, or None."""
    row = _default_weights().get(torch_name) if torch_name else None
    return TorchvisionWeights(**row) if row else None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    family: str
    torch_name: Optional[str]  # torchvision.models builder name, None where torchvision has none
    num_params: int  # parameter count at the default configuration (1000 classes)
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    features: tuple[FeatureInfo, ...] = ()
    default_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # (state_dict, model) -> state_dict: per-family fix-ups before the generic key mapping
    adapt_state_dict: Optional[Callable[[dict, Any], dict]] = None
    # (state_dict, model) -> state_dict: adds back, on export, the buffers torchvision stores
    # that adapt_state_dict dropped because jaxvision computes them
    export_state_dict: Optional[Callable[[dict, Any], dict]] = None
    notes: str = ""

    @property
    def preprocessing(self) -> dict:
        """The eval transform of this model's default weights (:func:`eval_preprocessing`)."""
        return eval_preprocessing(self.resize_size, self.crop_size, self.interpolation,
                                  self.mean, self.std)

    @property
    def has_torchvision_weights(self) -> bool:
        return self.torch_name is not None

    @property
    def torchvision_weights(self) -> Optional[TorchvisionWeights]:
        """torchvision's DEFAULT weights: recipe URL, published accuracy, GFLOPS (the
        classification models; None for the others)."""
        return torchvision_weights(self.torch_name)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "torchvision_name": self.torch_name,
            "num_params": self.num_params,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "features": [dataclasses.asdict(f) for f in self.features],
            "torchvision_weights": (dataclasses.asdict(self.torchvision_weights)
                                    if self.torchvision_weights else None),
            "notes": self.notes,
        }


_NO_MODEL = ModelSpec("", None, "", None, 0)
_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, **spec_fields) -> Callable:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **spec_fields)
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see jaxvision.list_models())") from None


def spec_or_default(name: str | None) -> ModelSpec:
    """``name``'s spec; without a name, ModelSpec's defaults (ImageNet mean/std, resize 256,
    crop 224): the one fallback of every preprocessing rule."""
    return get_spec(name) if name else _NO_MODEL


def model_info(name: str) -> ModelSpec:
    return get_spec(name)

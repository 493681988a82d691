"""Model registry: one :class:`ModelSpec` per public model name."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Mapping, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone can return with ``features_only=True``."""

    name: str
    channels: int
    reduction: int  # input size / feature size (for the default, non-dilated model)


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
    notes: str = ""

    @property
    def has_torchvision_weights(self) -> bool:
        return self.torch_name is not None

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
            "notes": self.notes,
        }


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


def model_info(name: str) -> ModelSpec:
    return get_spec(name)

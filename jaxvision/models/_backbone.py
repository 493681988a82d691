"""Any registered classification model as the backbone of a dense model.

A dense model (detector, segmenter) holds its backbone as the model ``create_model(NAME,
features_only=True, out_indices=..., **kwargs)`` returns, built through the registry (a dense
model never imports a family), so its sub-tree is laid out exactly as the classification model's
own and torchvision's classification weights fill it (:class:`BackboneRef` says where and how).
Which maps a head reads is chosen from that instance's ``feature_info`` (channels and reductions
of this variant, dilation included), never from a table.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from jaxvision.registry import FeatureInfo, get_spec

# the kwargs create_model passes itself, which backbone_kwargs may not repeat
_RESERVED = ("features_only", "out_indices", "num_classes", "dtype", "name")


@dataclasses.dataclass(frozen=True)
class BackboneRef:
    """Where a dense model's backbone sits in its variables (``path``, "/"-joined) and the
    classification model it is: ``create_model(name, features_only=True, **kwargs)``.  What
    ``pretrained_backbone`` reads to place classification weights."""

    path: str
    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def model_kwargs(self) -> dict:
        return {"features_only": True, **dict(self.kwargs)}


def _frozen(kwargs: Mapping) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))


def build_backbone(name: str, kwargs: Optional[Mapping] = None, dtype: Any = None,
                   out_indices: Optional[Sequence[int]] = None):
    """``(module, ref_kwargs)``: registered model ``name`` built ``features_only`` with
    ``kwargs`` (its spec's defaults under them); a dense model is refused as a backbone."""
    spec = get_spec(name)
    if spec.family in DENSE_FAMILIES:
        raise ValueError(f"backbone={name!r} is a {spec.family} model, not a classification "
                         f"backbone (see jaxvision.list_models())")
    kwargs = dict(kwargs or {})
    clash = sorted(set(kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"backbone_kwargs may not set {clash}: the composition sets them "
                         f"(out_indices= and dtype= are arguments of create_model)")
    full = {**spec.default_kwargs, **kwargs}
    probe = spec.builder(features_only=True, **({"dtype": dtype} if dtype is not None else {}),
                         **full)
    if not getattr(probe, "feature_info", ()):
        raise ValueError(f"backbone={name!r} declares no feature_info: it cannot return "
                         f"feature maps")
    return probe, kwargs


def fixed_image_size(backbone) -> Optional[tuple[int, int]]:
    """(H, W) for a backbone that takes one input size only (``fixed_input_size`` on its class:
    ViT's position embedding, MaxViT's relative-position tables), else None.  A dense model on
    it takes images of that size only (the backbone's own error names it otherwise) and is
    initialised at it (``image_size``, read by ``jaxvision.build.dummy_input``); the size is
    chosen when the backbone is built (``backbone_kwargs``: ViT's ``image_size``, MaxViT's
    ``input_size``)."""
    if not getattr(type(backbone), "fixed_input_size", None):
        return None
    size = backbone.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class OnBackbone:
    """What a dense model holding a classification model as its ``backbone`` field (at
    ``backbone/``) derives from it: the stages ``frozen_stages`` counts (the backbone's own,
    with ``head_paths`` as what a linear probe trains) and the one input size of a fixed-size
    backbone (``image_size``, None: any size).  A mixin of such ``nn.Module`` classes."""

    head_paths = r"head/"

    @property
    def image_size(self) -> Optional[tuple[int, int]]:
        return fixed_image_size(self.backbone)

    @property
    def stage_layout(self):
        return self.backbone.stage_layout.under("backbone/", self.head_paths)


def select(probe, out_indices: Sequence[int], dtype: Any = None):
    """The probe rebuilt returning the maps at ``out_indices`` only."""
    return probe.clone(parent=None, out_indices=tuple(out_indices),
                       **({"dtype": dtype} if dtype is not None else {}))


def ref(path: str, name: str, kwargs: Mapping, out_indices: Sequence[int]) -> BackboneRef:
    return BackboneRef(path, name, _frozen({**kwargs, "out_indices": tuple(out_indices)}))


def last_of_reduction(info: Sequence[FeatureInfo], reduction: int) -> Optional[int]:
    """Index of the last map with ``reduction`` (the deepest one of that stride), or None."""
    hits = [i for i, f in enumerate(info) if f.reduction == reduction]
    return hits[-1] if hits else None


def pyramid_indices(info: Sequence[FeatureInfo], name: str, levels: int = 3,
                    min_reduction: int = 8) -> tuple[int, ...]:
    """The deepest map of each of the last ``levels`` strides >= ``min_reduction`` (C3..C5 of a
    ResNet: layer2..layer4); fewer where the backbone stops earlier (SqueezeNet: strides 8, 16)."""
    reductions = sorted({f.reduction for f in info if f.reduction >= min_reduction})
    if not reductions:
        raise ValueError(f"backbone={name!r} has no feature map of stride >= {min_reduction} "
                         f"(its maps: {[(f.name, f.reduction) for f in info]})")
    return tuple(last_of_reduction(info, r) for r in reductions[-levels:])


def output_stride_kwargs(probe, name: str, output_stride: Optional[int]) -> dict:
    """The backbone kwargs that give ``output_stride``, from the family's own dilation switch
    (``dilation_kwargs``); refused where the family has none."""
    if output_stride is None:
        return {}
    native = max(f.reduction for f in probe.feature_info)
    if output_stride == native:
        return {}
    dilation = getattr(probe, "dilation_kwargs", None)
    if dilation is None:
        raise ValueError(f"output_stride={output_stride}: backbone={name!r} cannot dilate (its "
                         f"family has no dilated stages); its output stride is {native}")
    return dilation(output_stride)


# registry families of dense models: never a backbone
DENSE_FAMILIES = ("segmentation", "fpn_detector", "ssd", "yolo", "efficientdet", "faster_rcnn",
                  "mask_rcnn", "keypoint_rcnn")

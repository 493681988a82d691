"""One-stage detectors (RetinaNet, FCOS): a backbone + FPN + head.  The torchvision presets
``retinanet_resnet50_fpn`` (v1, v2) and ``fcos_resnet50_fpn`` are laid out like torchvision's;
``create_model("retinanet", backbone=NAME)`` composes the same module on any backbone
(``jaxvision/models/compose.py``).

In the presets' layout the backbone is ``backbone.body`` (ResNet to layer4, C3..C5 returned) + ``backbone.fpn``
(P3..P5 and LastLevelP6P7), so torchvision's state_dict converts key for key.  BatchNorm is
FrozenBatchNorm (``norm="frozen"``) as in torchvision's models built for weights; v1's published
weights were trained with eps 0 (torchvision's ``overwrite_eps``), which ``norm_eps`` sets.
v2 keeps trainable BatchNorm in the backbone and GroupNorm in the head, as torchvision does.

``model.apply(v, x)`` takes the normalised, padded batch (``jaxvision.models.detection.
transform``) and returns padded detections in its pixels; ``image_sizes`` (N, 2) clip each
image's boxes to its unpadded size.  ``method="head_outputs"`` gives the raw outputs and
anchors; ``method="loss"`` torchvision's loss dict for padded targets.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.fcos import FCOSHead, fcos_loss, fcos_postprocess
from jaxvision.heads.retinanet import RetinaNetHead, retinanet_loss, retinanet_postprocess
from jaxvision.layers import check_nhwc
from jaxvision.models._backbone import (BackboneRef, build_backbone, fixed_image_size,
                                        pyramid_indices, ref, select)
from jaxvision.models._features import select as select_names
from jaxvision.models._stages import StageLayout
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.necks.fpn import FPN
from jaxvision.registry import register_model

KINDS = ("retinanet", "retinanet_v2", "fcos")
_POSTPROCESS = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")
_DEFAULTS = {  # torchvision's, for a field left None
    "retinanet": dict(score_thresh=0.05, nms_thresh=0.5, detections_per_img=300,
                      topk_candidates=1000),
    "retinanet_v2": dict(score_thresh=0.05, nms_thresh=0.5, detections_per_img=300,
                         topk_candidates=1000),
    "fcos": dict(score_thresh=0.2, nms_thresh=0.6, detections_per_img=100, topk_candidates=1000)}


def anchors(kind: str, strides: Sequence[int]) -> ops.AnchorGenerator:
    """torchvision's anchors for pyramid levels at ``strides``: RetinaNet 3 scales x 3 ratios
    of 4x the stride, FCOS one square of the stride (equal to the constants above at 8..128)."""
    if kind == "fcos":
        return ops.AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    return ops.AnchorGenerator(
        tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides),
        ((0.5, 1.0, 2.0),) * len(strides))


def pyramid(backbone: nn.Module, x, train: bool) -> dict:
    """The backbone's maps, finest first, in its ``feature_info`` order (a dict that went
    through a jax transformation comes back with its keys sorted: features_11 < features_4)."""
    maps = backbone(x, train)
    return {k: maps[k] for k in select_names(backbone.feature_info, backbone.out_indices)}


def resnet_stage_layout(heads: str) -> StageLayout:
    """The stages of ``backbone/body`` (a ResNet) and the detector's ``heads`` regex."""
    b = "backbone/body/"
    return StageLayout(b + r"(conv1|bn1)/", tuple(f"{b}layer{i}_" for i in range(1, 5)), heads)


def frozen_stages(trainable_backbone_layers: Optional[int]) -> int:
    """``freeze.frozen_stages`` for ``trainable_backbone_layers`` (torchvision trains the last
    k of conv1, layer1..layer4; 3 by default): 3 -> stem and layer1 frozen."""
    k = 3 if trainable_backbone_layers is None else trainable_backbone_layers
    if not 0 <= k <= 5:
        raise ValueError(f"trainable_backbone_layers must be in [0, 5], got {k}")
    return 4 - k


class BackboneWithFPN(nn.Module):
    """torchvision's ``backbone.body`` + ``backbone.fpn``: the presets' layout."""

    body: nn.Module
    fpn: nn.Module

    def __call__(self, x, train: bool = False):
        return self.fpn(pyramid(self.body, x, train), train)


class FPNDetector(nn.Module):
    """A one-stage detector: ``backbone`` (features_only) -> ``neck`` -> RetinaNet/FCOS head.

    ``neck=None``: ``backbone`` returns the pyramid itself (a :class:`BackboneWithFPN`, the
    torchvision presets' ``backbone.body``/``backbone.fpn`` layout).  ``strides``: the pyramid
    levels' strides, which set the anchors.  ``body``: where the classification backbone sits
    and what it is (``pretrained_backbone``, stage layout)."""

    backbone: nn.Module
    body: BackboneRef
    neck: Optional[nn.Module] = None
    strides: Sequence[int] = (8, 16, 32, 64, 128)
    kind: str = "retinanet"
    num_classes: int = 91
    score_thresh: Optional[float] = None
    nms_thresh: Optional[float] = None
    detections_per_img: Optional[int] = None
    topk_candidates: Optional[int] = None
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    center_sampling_radius: float = 1.5
    min_size: int = 800  # torchvision's transform settings (see ``preprocessing``)
    max_size: int = 1333
    image_mean: Sequence[float] = (0.485, 0.456, 0.406)
    image_std: Sequence[float] = (0.229, 0.224, 0.225)
    # the last k backbone stages (and the stem as the k = num_stages + 1st) train; None: all
    # (the presets default to torchvision's 3)
    trainable_backbone_layers: Optional[int] = None
    head_convs: int = 4
    dtype: Any = jnp.float32

    @property
    def backbone_module(self) -> nn.Module:
        return self.backbone.body if self.neck is None else self.backbone

    @property
    def image_size(self):
        """The one input size of a fixed-size backbone (ViT), else None: any size."""
        return fixed_image_size(self.backbone_module)

    @property
    def stage_layout(self) -> StageLayout:
        # a linear probe trains what is not the backbone: the head (and a composed neck)
        head = r"head/" if self.neck is None else r"(neck|head)/"
        return self.backbone_module.stage_layout.under(self.body.path + "/", head)

    @property
    def frozen_stages(self) -> int:
        """``freeze.frozen_stages`` for ``trainable_backbone_layers`` (torchvision trains the
        last k of conv1, layer1..layer4): 3 -> stem and layer1 frozen."""
        if self.trainable_backbone_layers is None:
            return -1
        k, n = self.trainable_backbone_layers, self.backbone_module.stage_layout.num_stages
        if not 0 <= k <= n + 1:
            raise ValueError(f"trainable_backbone_layers must be in [0, {n + 1}], got {k}")
        return n - k

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), self.min_size,
                             self.max_size)

    def _setting(self, field: str):
        value = getattr(self, field)
        return _DEFAULTS[self.kind][field] if value is None else value

    def setup(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.kind == "fcos":
            self.head = FCOSHead(1, self.num_classes, self.head_convs, dtype=self.dtype)
        else:
            self.head = RetinaNetHead(9, self.num_classes, group_norm=self.kind == "retinanet_v2",
                                      num_convs=self.head_convs, dtype=self.dtype)

    def head_outputs(self, x, train: bool = False):
        check_nhwc(x, self.kind, channels=3)
        if self.neck is None:
            feats = self.backbone(x.astype(self.dtype), train)
        else:
            feats = self.neck(pyramid(self.backbone, x.astype(self.dtype), train), train)
        feats = list(feats.values())
        if len(feats) != len(self.strides):
            raise ValueError(f"{self.kind}: the neck returned {len(feats)} maps for "
                             f"{len(self.strides)} anchor levels {tuple(self.strides)}")
        out = self.head(feats)
        out["anchors"] = anchors(self.kind, self.strides)(x.shape[1:3],
                                                          [f.shape[1:3] for f in feats])
        return out

    def __call__(self, x, train: bool = False, image_sizes=None):
        out = self.head_outputs(x, train)
        sizes = jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None \
            else image_sizes
        post = fcos_postprocess if self.kind == "fcos" else retinanet_postprocess
        return post(out, out["anchors"], sizes, *map(self._setting, _POSTPROCESS))

    def loss(self, x, boxes, labels, valid, train: bool = True):
        out = self.head_outputs(x, train)
        if self.kind == "fcos":
            return fcos_loss(out, out["anchors"], boxes, labels, valid,
                             self.center_sampling_radius)
        return retinanet_loss(out, jnp.concatenate(out["anchors"]), boxes, labels, valid,
                              "giou" if self.kind == "retinanet_v2" else "l1",
                              self.fg_iou_thresh, self.bg_iou_thresh)


def preset(kind: str, backbone: str = "resnet50", norm: Optional[str] = None,
           norm_eps: Optional[float] = None, fpn_channels: int = 256,
           trainable_backbone_layers: Optional[int] = 3, dtype: Any = jnp.float32, **kwargs):
    """torchvision's layout: ``backbone.body`` (C3..C5 of ``backbone``, FrozenBatchNorm unless
    ``norm``; v2 trainable BatchNorm) + ``backbone.fpn`` (P3..P5 and P6/P7: v2 from C5, else
    from P5), the head on top; any registered backbone with the same three strides fits."""
    body_kwargs = {"norm": norm or ("batch" if kind == "retinanet_v2" else "frozen")}
    if norm_eps is not None:
        body_kwargs["norm_eps"] = norm_eps
    probe, body_kwargs = build_backbone(backbone, body_kwargs, dtype)
    idx = pyramid_indices(probe.feature_info, backbone)
    c5 = probe.feature_info[idx[-1]].channels
    fpn = FPN(fpn_channels, "p6p7", c5 if kind == "retinanet_v2" else fpn_channels, dtype=dtype)
    strides = [probe.feature_info[i].reduction for i in idx]
    return FPNDetector(BackboneWithFPN(select(probe, idx, dtype), fpn),
                       ref("backbone/body", backbone, body_kwargs, idx),
                       strides=tuple(strides) + (strides[-1] * 2, strides[-1] * 4), kind=kind,
                       trainable_backbone_layers=trainable_backbone_layers, dtype=dtype,
                       **kwargs)


def _register(name, kind, num_params, norm_eps=None):
    def build(num_classes: Optional[int] = None, features_only: bool = False,
              out_indices: Optional[Sequence[int]] = None, **kwargs):
        if features_only:
            raise ValueError(f"{name} is a detector; build 'resnet50' for features_only")
        kwargs.setdefault("norm_eps", norm_eps)
        return preset(kind, num_classes=91 if num_classes is None else num_classes, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}`` (91 COCO classes by default)."
    register_model(name, family="fpn_detector", torch_name=name, num_params=num_params,
                   input_size=(512, 512), resize_size=800, crop_size=1333,
                   notes="resize_size/crop_size are torchvision's min_size/max_size")(build)


_register("retinanet_resnet50_fpn", "retinanet", 34_014_999, norm_eps=0.0)
_register("retinanet_resnet50_fpn_v2", "retinanet_v2", 38_198_935)
_register("fcos_resnet50_fpn", "fcos", 32_269_600)

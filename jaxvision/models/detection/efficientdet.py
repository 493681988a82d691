"""EfficientDet-D0 (Tan et al. 2020) as the ``effdet`` package builds ``efficientdet_d0``:
an EfficientNet-B0 backbone (``backbone``, jaxvision's torchvision-layout EfficientNet, its last
map at strides 8, 16 and 32), a BiFPN (``fpn``: 64 channels, 3 cells, P6/P7 made from the last
map) and effdet's class and box nets (``class_net``, ``box_net``: 3 separable convs shared across
levels, a BatchNorm per level). The neck and heads mirror effdet's state_dict names.

Anchors, loss and post-processing are jaxvision's RetinaNet machinery (torchvision's anchors:
3 scales x 3 ratios per level, 32..512 px at strides 8..128, which are EfficientDet's
``anchor_scale=4`` sizes; focal loss + L1 on box deltas), not effdet's TF-style anchor
encoding and Huber loss.  Two differences from effdet's ``efficientdet_d0`` in parameters: the
stride-32 map is torchvision's ``features.8`` (the 1x1 conv to 1280 channels + BN) where timm's
``features_only`` stops at 320 channels, and the BiFPN's 1x1 resampling convs on that map are
therefore 1280 -> 64.

``model.apply(v, x, image_sizes=...)`` gives padded detections (as ``FPNDetector``);
``method="head_outputs"`` the raw outputs and anchors; ``method="loss"`` the loss dict.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.efficientdet import EfficientDetHead
from jaxvision.heads.retinanet import retinanet_loss, retinanet_postprocess
from jaxvision.layers import check_nhwc
from jaxvision.models._stages import StageLayout
from jaxvision.models.detection.fpn_detectors import anchors
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.models.efficientnet import EfficientNet
from jaxvision.necks.bifpn import BiFPN
from jaxvision.registry import register_model

# BiFPN's levels P3-P7: RetinaNet's anchors at strides 8..128
_ANCHORS = anchors("retinanet", (8, 16, 32, 64, 128))

STRIDES = (8, 16, 32)  # the backbone maps the BiFPN reads; it adds 64 and 128


class EfficientDet(nn.Module):
    num_classes: int = 91
    arch: str = "b0"  # the EfficientNet under it
    backbone_kwargs: Optional[Mapping[str, Any]] = None  # more of its fields (a smaller one)
    fpn_channels: int = 64
    fpn_repeats: int = 3
    head_repeats: int = 3
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000
    # effdet's matcher: IoU >= 0.5 foreground, below background, each box's best anchor kept
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    min_size: int = 512
    max_size: int = 512
    image_mean: Sequence[float] = (0.485, 0.456, 0.406)
    image_std: Sequence[float] = (0.229, 0.224, 0.225)
    dtype: Any = jnp.float32
    torch_backbone_prefix = "backbone."  # where a torchvision efficientnet state_dict goes

    def _backbone(self, **parent) -> EfficientNet:
        kwargs = dict(self.backbone_kwargs or {})
        # parent=None: built to be read, not to become a submodule of whichever module runs
        info = EfficientNet(arch=self.arch, parent=None, **kwargs).feature_info
        picks = [i for i, f in enumerate(info) if f.reduction in STRIDES]
        if len(picks) != len(STRIDES):
            raise ValueError(f"efficientdet: the backbone's maps have strides "
                             f"{[f.reduction for f in info]}; the BiFPN needs {STRIDES}")
        return EfficientNet(arch=self.arch, features_only=True, out_indices=tuple(picks),
                            dtype=self.dtype, **kwargs, **parent)

    @property
    def stage_layout(self) -> StageLayout:
        own = self._backbone(parent=None).stage_layout
        return StageLayout("backbone/" + own.stem,
                           tuple("backbone/" + s for s in own.stages), r"(fpn|class_net|box_net)/")

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), self.min_size,
                             self.max_size)

    def setup(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.backbone = self._backbone()
        self.fpn = BiFPN(self.fpn_channels, self.fpn_repeats, num_levels=5, dtype=self.dtype)
        self.class_net = EfficientDetHead(self.num_classes, 9, self.head_repeats,
                                          prior_probability=0.01, dtype=self.dtype)
        self.box_net = EfficientDetHead(4, 9, self.head_repeats, dtype=self.dtype)

    def head_outputs(self, x, train: bool = False):
        check_nhwc(x, "efficientdet", channels=3)
        levels = list(self.fpn(self.backbone(x.astype(self.dtype), train), train).values())
        return {"cls_logits": self.class_net(levels, train),
                "bbox_regression": self.box_net(levels, train),
                "anchors": _ANCHORS(x.shape[1:3], [f.shape[1:3] for f in levels])}

    def __call__(self, x, train: bool = False, image_sizes=None):
        out = self.head_outputs(x, train)
        sizes = jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None \
            else image_sizes
        return retinanet_postprocess(out, out["anchors"], sizes, self.score_thresh,
                                     self.nms_thresh, self.detections_per_img,
                                     self.topk_candidates)

    def loss(self, x, boxes, labels, valid, train: bool = True):
        out = self.head_outputs(x, train)
        return retinanet_loss(out, jnp.concatenate(out["anchors"]), boxes, labels, valid, "l1",
                              self.fg_iou_thresh, self.bg_iou_thresh)


def efficientdet_d0(num_classes: Optional[int] = None, features_only: bool = False,
                    out_indices: Optional[Sequence[int]] = None, **kwargs) -> EfficientDet:
    """EfficientDet-D0 (effdet's ``efficientdet_d0`` layout; 91 classes by default, label 0
    the background as torchvision's detectors)."""
    if features_only or out_indices is not None:
        raise ValueError("efficientdet_d0 is a detector; build 'efficientnet_b0' for "
                         "features_only")
    return EfficientDet(num_classes=91 if num_classes is None else num_classes, **kwargs)


register_model("efficientdet_d0", family="efficientdet", torch_name=None, num_params=4_474_828,
               input_size=(512, 512), resize_size=512, crop_size=512,
               notes="effdet's efficientdet_d0 on jaxvision's efficientnet_b0; resize_size/"
                     "crop_size are the detector's min_size/max_size")(efficientdet_d0)

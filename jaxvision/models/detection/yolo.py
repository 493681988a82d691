"""YOLOv4's detector (Bochkovskiy et al. 2020): CSPDarknet-53 + SPP + PAN + the YOLOv3 head.

``backbone``: CSPDarknet-53 (Mish, timm's layout) returning C3, C4, C5 (strides 8, 16, 32).
``spp``: on C5, darknet's 1x1 / 3x3 / 1x1 convs, the 5/9/13 max-pool pyramid, then 1x1 / 3x3
convs (leaky ReLU); the PAN's first 1x1 (``neck/top2``) closes YOLOv4's three post-SPP convs.
``neck``: the PAN (widths 128, 256, 512).  ``head``: per scale a 3x3 conv at twice the width and
the 1x1 predictor (see :mod:`jaxvision.heads.yolo` for anchors, decoding, loss, post-processing).
At 80 classes: 64,363,101 parameters (backbone 26,617,184, SPP block 11,541,504, PAN 19,549,952,
head 6,654,461), the count of darknet's ``yolov4.cfg`` (its weights file is exactly this plus
the BatchNorm running statistics), which the paper rounds to ~64M.

Labels are class indices in ``[0, num_classes)`` (no background class).  Input: RGB in [0, 1]
without mean/std normalisation, as darknet feeds it; ``min_size = max_size = 608`` makes
``jaxvision.tasks.detection.predict`` scale the long side to 608 and pad to a multiple of 32
(darknet letterboxes; the padding here is at the bottom/right).  Any size divisible by 32 works,
non-square included.

``width_mult`` / ``depth_mult`` scale every width and the number of residual blocks per stage
(YOLOv5-style); ``width_mult=0.125, depth_mult=0.33, anchor_scale=64 / 608`` is a small model that
trains on 64-pixel images on a laptop CPU.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.yolo import YOLOHead, anchor_table, yolo_loss, yolo_postprocess
from jaxvision.layers import check_nhwc, leaky
from jaxvision.layers.blocks import conv_norm_act
from jaxvision.models._backbone import BackboneRef, OnBackbone
from jaxvision.models._stages import StageLayout
from jaxvision.models.darknet import CHANNELS, DEPTHS, Darknet, darknet_stage_layout
from jaxvision.models.detection.fpn_detectors import pyramid
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.necks.pan import PAN
from jaxvision.necks.spp import SPP
from jaxvision.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

PAN_CHANNELS = (128, 256, 512)


class SPPBlock(nn.Module):
    """C5 -> 1x1 (c), 3x3 (2c), 1x1 (c), SPP (4c), 1x1 (c), 3x3 (2c); c = half C5's width."""

    width: int
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = self.width
        for i, (k, f) in enumerate(((1, c), (3, 2 * c), (1, c))):
            x = conv_norm_act(x, train, f, k, f"pre{i}", norm=self.norm, act=leaky,
                              dtype=self.dtype)
        x = SPP()(x)
        for i, (k, f) in enumerate(((1, c), (3, 2 * c))):
            x = conv_norm_act(x, train, f, k, f"post{i}", norm=self.norm, act=leaky,
                              dtype=self.dtype)
        return x


class YOLO(nn.Module):
    num_classes: int = 80
    width_mult: float = 1.0
    depth_mult: float = 1.0
    anchor_scale: float = 1.0  # multiplies the pixel anchors (see jaxvision.heads.yolo)
    score_thresh: float = 0.05
    nms_thresh: float = 0.45
    detections_per_img: int = 100
    topk_candidates: int = 1000
    ignore_thresh: float = 0.5
    min_size: int = 608  # see ``preprocessing``
    max_size: int = 608
    image_mean: Sequence[float] = (0.0, 0.0, 0.0)  # darknet feeds [0, 1] RGB as it is
    image_std: Sequence[float] = (1.0, 1.0, 1.0)
    frozen_stages: int = -1  # -1 trains all; k freezes the stem and backbone stages 1..k
    norm: str = "batch"
    dtype: Any = jnp.float32

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), self.min_size,
                             self.max_size)

    @property
    def stage_layout(self) -> StageLayout:
        return darknet_stage_layout("backbone/")

    def _width(self, c: int) -> int:
        return max(8, int(round(c * self.width_mult / 8)) * 8)

    def setup(self):
        if self.num_classes < 1:
            raise ValueError(f"YOLO: num_classes must be >= 1, got {self.num_classes}")
        if not (self.width_mult > 0 and self.depth_mult > 0):
            raise ValueError(f"YOLO: width_mult and depth_mult must be > 0, got "
                             f"{self.width_mult}, {self.depth_mult}")
        self.anchors = anchor_table(self.anchor_scale)
        self.backbone = Darknet(
            cross_stage=True, act="mish", norm=self.norm, dtype=self.dtype, features_only=True,
            out_indices=(3, 4, 5), channels=tuple(self._width(c) for c in CHANNELS),
            depths=tuple(max(1, round(d * self.depth_mult)) for d in DEPTHS))
        widths = tuple(self._width(c) for c in PAN_CHANNELS)
        self.spp = SPPBlock(widths[-1], self.norm, self.dtype)
        self.neck = PAN(widths, self.norm, self.dtype)
        self.head = YOLOHead(self.num_classes, 3, self.norm, self.dtype)

    def features(self, x, train: bool = False) -> list:
        """C3, C4, C5 (strides 8, 16, 32)."""
        return list(self.backbone(x, train).values())

    def head_outputs(self, x, train: bool = False) -> dict:
        """``{"preds": [(N, H/s, W/s, 3, 5 + C) raw for s = 8, 16, 32], "anchors": (3, 3, 2)}``."""
        check_nhwc(x, "YOLO", channels=3)
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"YOLO: image height and width must be multiples of 32 (the "
                             f"coarsest stride), got {x.shape[1:3]}")
        c3, c4, c5 = self.features(x.astype(self.dtype), train)
        if self.spp is not None:
            c5 = self.spp(c5, train)
        maps = self.neck({"c3": c3, "c4": c4, "c5": c5}, train)
        return {"preds": self.head(list(maps.values()), train), "anchors": self.anchors}

    def __call__(self, x, train: bool = False, image_sizes=None):
        out = self.head_outputs(x, train)
        sizes = jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None \
            else image_sizes
        return yolo_postprocess(out["preds"], self.anchors, sizes, self.score_thresh,
                                self.nms_thresh, self.detections_per_img, self.topk_candidates)

    def loss(self, x, boxes, labels, valid, train: bool = True):
        out = self.head_outputs(x, train)
        return yolo_loss(out["preds"], self.anchors, boxes, labels, valid, self.num_classes,
                         self.ignore_thresh)


@register_model("yolo_cspdarknet53", family="yolo", torch_name=None, num_params=64_363_101,
                input_size=(608, 608), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                resize_size=608, crop_size=608,
                notes="YOLOv4 (CSPDarknet-53 + SPP + PAN + YOLOv3 head); no torchvision twin; "
                      "input RGB in [0, 1], long side resized to 608")
def yolo_cspdarknet53(num_classes: Optional[int] = None, features_only: bool = False,
                      out_indices: Optional[Sequence[int]] = None, **kwargs):
    """YOLOv4's detector (80 COCO classes by default)."""
    if features_only:
        raise ValueError("yolo_cspdarknet53 is a detector; build 'cspdarknet53' for "
                         "features_only")
    return YOLO(num_classes=80 if num_classes is None else num_classes, **kwargs)


class ComposedYOLO(OnBackbone, YOLO):
    """``create_model("yolo", backbone=NAME)``: the backbone's C3, C4, C5 (strides 8, 16, 32,
    which the head's anchors and decoding assume; ``backbone/``, the classification model's own
    tree), YOLOv4's SPP block on C5 (``spp/``, ``use_spp=False``: none) and PAN (``neck/``,
    widths ``neck_channels``), the YOLOv3 head (``head/``).  Input normalised with ImageNet's
    mean/std, as the backbone's classification weights expect."""

    backbone: Optional[nn.Module] = None
    body: Optional[BackboneRef] = None
    neck_channels: Sequence[int] = PAN_CHANNELS
    use_spp: bool = True
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    head_paths = r"(spp|neck|head)/"

    def setup(self):
        if self.num_classes < 1:
            raise ValueError(f"yolo: num_classes must be >= 1, got {self.num_classes}")
        self.anchors = anchor_table(self.anchor_scale)
        widths = tuple(self._width(c) for c in self.neck_channels)
        self.spp = SPPBlock(widths[-1], self.norm, self.dtype) if self.use_spp else None
        self.neck = PAN(widths, self.norm, self.dtype)
        self.head = YOLOHead(self.num_classes, 3, self.norm, self.dtype)

    def features(self, x, train: bool = False) -> list:
        return list(pyramid(self.backbone, x, train).values())

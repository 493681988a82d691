"""SSD300 with a VGG-16 backbone, laid out like torchvision's ``ssd300_vgg16``.

The backbone is VGG-16's ``features`` up to conv4_3 (its third max-pool in ceil mode), an
L2-normalised and learnably rescaled conv4_3 map, then conv5 + a dilated fc6 / 1x1 fc7 and four
extra blocks: six maps of 38, 19, 10, 5, 3 and 1 cells at 300 px.  Parameter paths follow the
state_dict (``backbone.features.21.weight``, ``backbone.extra.0.7.1.weight``,
``head.classification_head.module_list.0.weight``), so torchvision's weights load as they are.

``model.apply(v, images)`` takes the preprocessed batch (resized to 300x300, normalised with the
spec's mean/std) and returns padded detections; ``method="head_outputs"`` the raw head
outputs; ``method="loss"`` torchvision's loss dict for padded targets.  :class:`SSD` is that
glue for every SSD: a subclass overrides ``parts`` (feature extractor, head, default boxes), as
``ssdlite.SSDLite`` does.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.ssd import SSDHead, ssd_loss, ssd_postprocess
from jaxvision.layers import (Conv2d, check_nhwc, conv_norm_act, kaiming_normal_fan_out,
                              max_pool2d)
from jaxvision.layers.params import param
from jaxvision.models._backbone import BackboneRef, OnBackbone
from jaxvision.models._stages import StageLayout, block_range
from jaxvision.models.detection.fpn_detectors import pyramid
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.models.vgg import CFGS
from jaxvision.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

_xavier = nn.initializers.xavier_uniform()
# (1x1 channels, 3x3 channels, stride, padding) of conv8_2 .. conv11_2
_EXTRAS = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))


def _conv(c, k, name, dtype, kernel_init=kaiming_normal_fan_out, **kw):
    return Conv2d(c, k, bias=True, dtype=dtype, name=name, kernel_init=kernel_init, **kw)


class SSDFeatureExtractorVGG(nn.Module):
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm
        idx, pools = 0, 0
        outputs = []
        cfg = CFGS["D"]
        for v in cfg:
            if v == "M":
                pools += 1
                if pools == 4:
                    break  # conv4_3 is the first output
                x = max_pool2d(x, 2, 2, ceil_mode=pools == 3)
                idx += 1
                continue
            x = nn.relu(_conv(v, 3, f"features_{idx}", self.dtype, padding=1)(x))
            idx += 2
        scale = param(self, "scale_weight", nn.initializers.constant(20.0), (512,))
        norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), -1, keepdims=True))
        outputs.append(scale * (x / jnp.maximum(norm, 1e-12)).astype(jnp.float32))
        # extra.0: maxpool4, conv5_1..3 (torch indices 1, 3, 5), maxpool5 3x3/1, fc6, fc7
        x = max_pool2d(x, 2, 2)
        for i in (1, 3, 5):
            x = nn.relu(_conv(512, 3, f"extra_0_{i}", self.dtype, padding=1)(x))
        x = max_pool2d(x, 3, 1, 1)
        x = nn.relu(_conv(1024, 3, "extra_0_7_1", self.dtype, _xavier, padding=6,
                          dilation=6)(x))
        x = nn.relu(_conv(1024, 1, "extra_0_7_3", self.dtype, _xavier)(x))
        outputs.append(x)
        for i, (c1, c3, stride, pad) in enumerate(_EXTRAS, 1):
            x = nn.relu(_conv(c1, 1, f"extra_{i}_0", self.dtype, _xavier)(x))
            x = nn.relu(_conv(c3, 3, f"extra_{i}_2", self.dtype, _xavier, stride=stride,
                              padding=pad)(x))
            outputs.append(x)
        return outputs


# a module-level constant: Flax would wrap a callable class attribute as a method
DEFAULT_BOXES = ops.DefaultBoxGenerator(
    [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])


class SSD(nn.Module):
    num_classes: int = 91
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 200
    topk_candidates: int = 400
    iou_thresh: float = 0.5
    positive_fraction: float = 0.25
    # torchvision's SSD(size, image_mean, image_std): its transform resizes every image to
    # ``size``, read as (width, height) as torchvision's GeneralizedRCNNTransform reads it
    size: Sequence[int] = (300, 300)
    image_mean: Sequence[float] = (0.48235, 0.45882, 0.40784)
    image_std: Sequence[float] = (1.0 / 255.0,) * 3
    dtype: Any = jnp.float32

    @property
    def preprocessing(self) -> Preprocessing:
        w, h = self.size
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), min(self.size),
                             max(self.size), (h, w), 1)

    @property
    def stage_layout(self) -> StageLayout:
        # torchvision's trainable_backbone_layers counts VGG stages from conv1_1 to conv4_3
        starts = (0, 5, 10, 17, 23)
        return StageLayout(r"(?!)", tuple(block_range("backbone/features_", a, b, "/")
                                           for a, b in zip(starts, starts[1:])), r"head/")

    def parts(self):
        """(feature extractor, head, default boxes); SSDLite overrides this."""
        return (SSDFeatureExtractorVGG(self.dtype),
                SSDHead(DEFAULT_BOXES.num_anchors_per_location(), self.num_classes, self.dtype),
                DEFAULT_BOXES)

    def features(self, x, train: bool = False) -> list:
        """The maps the head reads, finest first."""
        return self.backbone(x, train)

    def setup(self):
        if self.num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 2 (class 0 is the "
                             f"background), got {self.num_classes}")
        self.backbone, self.head, self.default_boxes = self.parts()

    def head_outputs(self, x, train: bool = False):
        check_nhwc(x, type(self).__name__, channels=3)
        feats = self.features(x.astype(self.dtype), train)
        out = self.head(feats, train)
        out["anchors"] = jnp.concatenate(self.default_boxes(
            x.shape[1:3], [f.shape[1:3] for f in feats]))
        return out

    def __call__(self, x, train: bool = False, image_sizes=None):
        out = self.head_outputs(x, train)
        sizes = jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None \
            else image_sizes
        return ssd_postprocess(out, out["anchors"], sizes, self.score_thresh, self.nms_thresh,
                               self.detections_per_img, self.topk_candidates)

    def loss(self, x, boxes, labels, valid, train: bool = True):
        """With BatchNorm (SSDLite) and ``train=True`` apply with ``mutable=["batch_stats"]``."""
        out = self.head_outputs(x, train)
        return ssd_loss(out, out["anchors"], boxes, labels, valid, self.iou_thresh,
                        (1.0 - self.positive_fraction) / self.positive_fraction)


@register_model("ssd300_vgg16", family="ssd", torch_name="ssd300_vgg16", num_params=35_641_826,
                input_size=(300, 300), mean=(0.48235, 0.45882, 0.40784),
                std=(1.0 / 255.0,) * 3, resize_size=300, crop_size=300,
                notes="detections in the 300x300 input's pixels; jaxvision.tasks.detection."
                      "predict maps them back to each image")
def ssd300_vgg16(num_classes: Optional[int] = None, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, **kwargs):
    """torchvision's ``ssd300_vgg16`` (91 COCO classes by default)."""
    if features_only:
        raise ValueError("ssd300_vgg16 is a detector; build 'vgg16' for features_only")
    return SSD(num_classes=91 if num_classes is None else num_classes, **kwargs)


# ----------------------------------------------------------------- SSD on any backbone

class SSDExtras(nn.Module):
    """SSD's extra layers generalised to any backbone: per entry of ``channels`` a block of a
    1x1 conv to half the width and a 3x3 stride-2 conv (each conv + ``norm`` + ReLU, as
    SSD300's ``extra`` blocks with BatchNorm), each adding a map at twice the stride.
    Children ``block{i}_0`` / ``block{i}_1`` (conv ``_0``, norm ``_1``)."""

    channels: Sequence[int] = (512, 256, 256)
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False) -> list:
        out = []
        for i, c in enumerate(self.channels):
            x = conv_norm_act(x, train, c // 2, 1, f"block{i}_0", norm=self.norm,
                              dtype=self.dtype)
            x = conv_norm_act(x, train, c, 3, f"block{i}_1", norm=self.norm, stride=2,
                              dtype=self.dtype)
            out.append(x)
        return out


class ComposedSSD(OnBackbone, SSD):
    """``create_model("ssd", backbone=NAME)``: the backbone's maps (``backbone/``, the
    classification model's own tree) + :class:`SSDExtras` on its deepest map (``extra/``) +
    torchvision's ``SSDHead`` (``head/``) over all of them, with SSDLite's default boxes
    (aspect ratios 2 and 3 at every level, scales 0.2..0.95: any number of levels)."""

    backbone: Optional[nn.Module] = None
    body: Optional[BackboneRef] = None
    extra_channels: Sequence[int] = (512, 256, 256)
    norm: str = "batch"
    size: Sequence[int] = (320, 320)
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    head_paths = r"(extra|head)/"

    def setup(self):
        if self.num_classes < 2:
            raise ValueError(f"ssd: num_classes must be >= 2 (class 0 is the background), got "
                             f"{self.num_classes}")
        levels = len(self.backbone.out_indices) + len(self.extra_channels)
        self.default_boxes = ops.DefaultBoxGenerator([[2, 3]] * levels, min_ratio=0.2,
                                                     max_ratio=0.95)
        self.extra = SSDExtras(tuple(self.extra_channels), self.norm, self.dtype)
        self.head = SSDHead(self.default_boxes.num_anchors_per_location(), self.num_classes,
                            self.dtype)

    def features(self, x, train: bool = False) -> list:
        maps = list(pyramid(self.backbone, x, train).values())
        return maps + self.extra(maps[-1], train)

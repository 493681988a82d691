"""SSDLite320 with a MobileNetV3-Large backbone, laid out like torchvision's
``ssdlite320_mobilenet_v3_large``.

The backbone is cut in two inside its last strided (C4) block, as the MobileNetV3 paper's
section 6.3 does: ``features.0`` runs to that block's 1x1 expansion (672 channels, stride 16),
``features.1`` from its depthwise conv to the final 1x1 conv (stride 32); four extra blocks
(1x1, depthwise 3x3 stride 2, 1x1, each BN + ReLU6) add maps of 512, 256, 256 and 128 channels:
20, 10, 5, 3, 2 and 1 cells at 320 px.  Every BatchNorm has eps 1e-3 and momentum 0.03.

``reduced_tail=True`` (the default) halves the last stage as torchvision does when no ImageNet
backbone is loaded, which is how its COCO weights were trained (3,440,060 parameters); set it
False to start from ``mobilenet_v3_large`` ImageNet weights.  Inputs are 320x320, normalised to
[-1, 1] (mean = std = 0.5); the glue (head outputs, detections, loss) is :class:`SSD`'s.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.ssd import LITE_INIT, LITE_NORM, SSDHead
from jaxvision.layers import conv_norm_act, hardswish, kaiming_normal_fan_out, norm_factory
from jaxvision.models._stages import StageLayout
from jaxvision.models.detection.ssd import SSD
from jaxvision.models.mobilenet import InvertedResidualV3, MobileNetV3, inverted_residual_v3
from jaxvision.registry import register_model

# torchvision builds the extractor with width_mult 1.0 whatever the backbone's, so these stay
_EXTRAS = (512, 256, 256, 128)
DEFAULT_BOXES = ops.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)


def _backbone_plan(width_mult: float, reduced_tail: bool, dilated: bool):
    """V3-Large's block configs and torchvision's ``stage_indices`` over the 17 ``features``
    layers (the stem, every nominally strided block, the last conv)."""
    cnfs, _ = MobileNetV3(arch="large", width_mult=width_mult, reduced_tail=reduced_tail,
                          dilated=dilated)._plan()
    stages = [0] + [i for i, c in enumerate(cnfs, 1) if c[6] > 1] + [len(cnfs) + 1]
    return cnfs, stages


def _layer_paths(i: int, c4: int) -> str:
    """Regex for the parameters of torchvision's backbone layer ``i`` inside the extractor."""
    if i < c4:
        return f"backbone/features_0_{i}[_/]"
    if i == c4:  # its expansion ends features.0, the rest starts features.1
        return f"backbone/(features_0_{i}_|features_1_0_)"
    return f"backbone/features_1_{i - c4}[_/]"


class SSDLiteFeatureExtractorMobileNet(nn.Module):
    width_mult: float = 1.0
    reduced_tail: bool = True
    dilated: bool = False
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        cnfs, stages = _backbone_plan(self.width_mult, self.reduced_tail, self.dilated)
        c4 = stages[-2]
        # torchvision re-initialises the backbone with N(0, 0.03) when it loads no ImageNet
        # weights, the same case in which it reduces the tail
        init = LITE_INIT if self.reduced_tail else kaiming_normal_fan_out

        def cna(x, c, k, name, act, stride=1, groups=1):
            return conv_norm_act(x, train, c, k, name, norm=self.norm, act=act, stride=stride,
                                 groups=groups, norm_kwargs=LITE_NORM, kernel_init=init,
                                 dtype=self.dtype)

        def block(cnf, name):
            return InvertedResidualV3(cnf, self.norm, self.dtype, LITE_NORM["momentum"], init,
                                      name=name)

        x = cna(x, cnfs[0][0], 3, "features_0_0", hardswish, 2)
        for i in range(1, c4):
            x = block(cnfs[i - 1], f"features_0_{i}")(x, train)
        cnf = cnfs[c4 - 1]
        x = cna(x, cnf[2], 1, f"features_0_{c4}", hardswish if cnf[5] == "HS" else nn.relu)
        outputs = [x]
        x = inverted_residual_v3(x, train, cnf, norm_factory(self.norm, self.dtype, **LITE_NORM),
                                 lambda j: f"features_1_0_{j}", self.dtype, init, expanded=True)
        for i in range(c4 + 1, len(cnfs) + 1):
            x = block(cnfs[i - 1], f"features_1_{i - c4}")(x, train)
        x = cna(x, 6 * cnfs[-1][3], 1, f"features_1_{len(cnfs) + 1 - c4}", hardswish)
        outputs.append(x)
        init = LITE_INIT  # the extra blocks are always re-initialised
        for i, c in enumerate(_EXTRAS):
            x = cna(x, c // 2, 1, f"extra_{i}_0", jax.nn.relu6)
            x = cna(x, c // 2, 3, f"extra_{i}_1", jax.nn.relu6, 2, c // 2)
            x = cna(x, c, 1, f"extra_{i}_2", jax.nn.relu6)
            outputs.append(x)
        return outputs


class SSDLite(SSD):
    # torchvision's ssdlite320 defaults, and the keywords its builder takes
    score_thresh: float = 0.001
    nms_thresh: float = 0.55
    detections_per_img: int = 300
    topk_candidates: int = 300
    size: Sequence[int] = (320, 320)
    image_mean: Sequence[float] = (0.5, 0.5, 0.5)
    image_std: Sequence[float] = (0.5, 0.5, 0.5)
    width_mult: float = 1.0
    reduced_tail: bool = True
    dilated: bool = False
    norm: str = "batch"  # torchvision's norm_layer, for the backbone, extras and head
    trainable_backbone_layers: Optional[int] = None  # torchvision's: 6 (all)

    @property
    def stage_layout(self) -> StageLayout:
        # torchvision's trainable_backbone_layers k trains the backbone from stage_indices[6-k]:
        # the stem is layers 0..stage_indices[1]-1, stage s runs to stage_indices[s+1]
        _, idx = _backbone_plan(self.width_mult, self.reduced_tail, self.dilated)
        bounds = idx + [idx[-1] + 1]
        return StageLayout(
            "(" + "|".join(_layer_paths(i, idx[-2]) for i in range(bounds[1])) + ")",
            tuple("(" + "|".join(_layer_paths(i, idx[-2]) for i in range(a, b)) + ")"
                  for a, b in zip(bounds[1:], bounds[2:])), r"head/")

    @property
    def frozen_stages(self) -> int:
        """``freeze.frozen_stages`` for ``trainable_backbone_layers`` (0..6): 6 -> -1 (none),
        5 -> 0 (the stem), 0 -> 5 (the whole MobileNet; the extra blocks always train)."""
        k = 6 if self.trainable_backbone_layers is None else self.trainable_backbone_layers
        if not 0 <= k <= 6:
            raise ValueError(f"trainable_backbone_layers must be in [0, 6], got {k}")
        return 5 - k

    def parts(self):
        return (SSDLiteFeatureExtractorMobileNet(self.width_mult, self.reduced_tail,
                                                 self.dilated, self.norm, self.dtype),
                SSDHead(DEFAULT_BOXES.num_anchors_per_location(), self.num_classes, self.dtype,
                        lite_norm=self.norm),
                DEFAULT_BOXES)


@register_model("ssdlite320_mobilenet_v3_large", family="ssd",
                torch_name="ssdlite320_mobilenet_v3_large", num_params=3_440_060,
                input_size=(320, 320), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                resize_size=320, crop_size=320,
                notes="detections in the 320x320 input's pixels; jaxvision.tasks.detection."
                      "predict maps them back to each image. reduced_tail=False matches a "
                      "torchvision model built on ImageNet mobilenet_v3_large weights")
def ssdlite320_mobilenet_v3_large(num_classes: Optional[int] = None,
                                  features_only: bool = False,
                                  out_indices: Optional[Sequence[int]] = None, **kwargs):
    """torchvision's ``ssdlite320_mobilenet_v3_large`` (91 COCO classes by default)."""
    if features_only:
        raise ValueError("ssdlite320_mobilenet_v3_large is a detector; build "
                         "'mobilenet_v3_large' for features_only")
    return SSDLite(num_classes=91 if num_classes is None else num_classes, **kwargs)

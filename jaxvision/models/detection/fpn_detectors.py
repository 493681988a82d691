"""One-stage detectors on a ResNet-50 + FPN backbone, laid out like torchvision's
``retinanet_resnet50_fpn`` (v1, v2) and ``fcos_resnet50_fpn``.

The backbone is ``backbone.body`` (ResNet to layer4, C3..C5 returned) + ``backbone.fpn``
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
from jaxvision.models._stages import StageLayout
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.models.resnet import ResNet
from jaxvision.necks.fpn import FPN
from jaxvision.registry import register_model

KINDS = ("retinanet", "retinanet_v2", "fcos")
# torchvision's anchors: RetinaNet 3 scales x 3 ratios per level, FCOS one square of the stride
RETINANET_ANCHORS = ops.AnchorGenerator(
    tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512)),
    ((0.5, 1.0, 2.0),) * 5)
FCOS_ANCHORS = ops.AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
_DEFAULTS = {  # torchvision's score_thresh, nms_thresh, detections_per_img, topk_candidates
    "retinanet": (0.05, 0.5, 300, 1000), "retinanet_v2": (0.05, 0.5, 300, 1000),
    "fcos": (0.2, 0.6, 100, 1000)}


# (block, layers) of the ResNets a detector can stand on; torchvision's are ResNet-50
BACKBONES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
             "resnet50": ("bottleneck", (3, 4, 6, 3))}


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
    """torchvision's ``_resnet_fpn_extractor``: ``body`` (a ResNet returning ``returned``
    layers) + ``fpn`` with ``extra_blocks`` ("p6p7": RetinaNet/FCOS, "pool": Faster R-CNN) and
    ``fpn_norm`` (v2 Faster R-CNN's BatchNorm in the FPN).  Returns the FPN's dict of maps."""
    norm: str = "frozen"
    norm_eps: Optional[float] = None
    p6_from_c5: bool = False  # LastLevelP6P7(2048, 256) of v2 reads C5, (256, 256) reads P5
    backbone: str = "resnet50"
    fpn_channels: int = 256
    dtype: Any = None
    returned: Sequence[int] = (2, 3, 4)
    extra_blocks: str = "p6p7"
    fpn_norm: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        block, layers = BACKBONES[self.backbone]
        body = ResNet(block=block, layers=layers, norm=self.norm, norm_eps=self.norm_eps,
                      dtype=self.dtype, features_only=True, out_indices=tuple(self.returned),
                      name="body")
        feats = body(x, train)
        c5 = feats["layer4"].shape[-1]
        fpn = FPN(self.fpn_channels, self.extra_blocks,
                  c5 if self.p6_from_c5 else self.fpn_channels, norm=self.fpn_norm,
                  dtype=self.dtype, name="fpn")
        return fpn({f"layer{i}": feats[f"layer{i}"] for i in self.returned}, train)


class FPNDetector(nn.Module):
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
    trainable_backbone_layers: Optional[int] = None  # torchvision's: 3 with weights
    norm: Optional[str] = None  # default: "batch" for retinanet_v2, else "frozen"
    norm_eps: Optional[float] = None
    # smaller than torchvision's (a CPU-sized detector, e.g. the detection quickstart): the
    # ResNet under the FPN, the FPN's width and the number of convs in each head tower
    backbone: str = "resnet50"
    fpn_channels: int = 256
    head_convs: int = 4
    dtype: Any = jnp.float32
    # where a torchvision ResNet state_dict goes (model.pretrained_backbone)
    torch_backbone_prefix = "backbone.body."

    @property
    def stage_layout(self) -> StageLayout:
        return resnet_stage_layout(r"head/")

    @property
    def frozen_stages(self) -> int:
        return frozen_stages(self.trainable_backbone_layers)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), self.min_size,
                             self.max_size)

    def _setting(self, i, value):
        return _DEFAULTS[self.kind][i] if value is None else value

    def setup(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got "
                             f"{self.backbone!r}")
        norm = self.norm or ("batch" if self.kind == "retinanet_v2" else "frozen")
        self.features = BackboneWithFPN(norm, self.norm_eps, self.kind == "retinanet_v2",
                                        self.backbone, self.fpn_channels, self.dtype,
                                        name="backbone")
        if self.kind == "fcos":
            self.head = FCOSHead(1, self.num_classes, self.head_convs, dtype=self.dtype)
        else:
            self.head = RetinaNetHead(9, self.num_classes, group_norm=self.kind == "retinanet_v2",
                                      num_convs=self.head_convs, dtype=self.dtype)

    def head_outputs(self, x, train: bool = False):
        check_nhwc(x, self.kind, channels=3)
        feats = list(self.features(x.astype(self.dtype), train).values())
        out = self.head(feats)
        gen = FCOS_ANCHORS if self.kind == "fcos" else RETINANET_ANCHORS
        out["anchors"] = gen(x.shape[1:3], [f.shape[1:3] for f in feats])
        return out

    def __call__(self, x, train: bool = False, image_sizes=None):
        out = self.head_outputs(x, train)
        sizes = jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None \
            else image_sizes
        post = fcos_postprocess if self.kind == "fcos" else retinanet_postprocess
        return post(out, out["anchors"], sizes, *(self._setting(i, v) for i, v in enumerate(
            (self.score_thresh, self.nms_thresh, self.detections_per_img, self.topk_candidates))))

    def loss(self, x, boxes, labels, valid, train: bool = True):
        out = self.head_outputs(x, train)
        if self.kind == "fcos":
            return fcos_loss(out, out["anchors"], boxes, labels, valid,
                             self.center_sampling_radius)
        return retinanet_loss(out, jnp.concatenate(out["anchors"]), boxes, labels, valid,
                              "giou" if self.kind == "retinanet_v2" else "l1",
                              self.fg_iou_thresh, self.bg_iou_thresh)


def _register(name, kind, num_params, norm_eps=None):
    def build(num_classes: Optional[int] = None, features_only: bool = False,
              out_indices: Optional[Sequence[int]] = None, **kwargs):
        if features_only:
            raise ValueError(f"{name} is a detector; build 'resnet50' for features_only")
        kwargs.setdefault("norm_eps", norm_eps)
        return FPNDetector(kind=kind, num_classes=91 if num_classes is None else num_classes,
                           **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}`` (91 COCO classes by default)."
    register_model(name, family="fpn_detector", torch_name=name, num_params=num_params,
                   input_size=(512, 512), resize_size=800, crop_size=1333,
                   notes="resize_size/crop_size are torchvision's min_size/max_size")(build)


_register("retinanet_resnet50_fpn", "retinanet", 34_014_999, norm_eps=0.0)
_register("retinanet_resnet50_fpn_v2", "retinanet_v2", 38_198_935)
_register("fcos_resnet50_fpn", "fcos", 32_269_600)

"""torchvision's Faster R-CNN (``models/detection/faster_rcnn.py``) with static shapes: backbone
+ FPN, region proposal network, RoI heads, in one jittable function of padded arrays.

Layouts, so that torchvision's state_dicts convert key for key:

* ``fasterrcnn_resnet50_fpn``: ``backbone.body`` a ResNet-50 (FrozenBatchNorm as built for
  weights) returning layer1..layer4, ``backbone.fpn`` with LastLevelMaxPool (``pool``);
  ``rpn.head`` one 3x3 conv; ``roi_heads.box_head`` TwoMLPHead (fc6, fc7).
* ``fasterrcnn_resnet50_fpn_v2``: BatchNorm in the body and the FPN, a two-conv RPN head and
  the four-conv one-FC box head (``roi_heads.box_head.<i>``), BatchNorm as torchvision builds
  it (``norm_layer=nn.BatchNorm2d``).
* ``fasterrcnn_mobilenet_v3_large(_320)_fpn``: ``backbone.body.<i>`` MobileNetV3-Large's
  ``features`` (here ``backbone/body/features_<i>``: ``adapt_state_dict`` renames), its C4
  block start (features.13) and last conv (features.16) into the FPN, BatchNorm eps 1e-5 (the
  detector passes its own norm_layer), anchors of all five sizes at each level.

``model.apply(v, x, image_sizes=...)`` -> padded detections (``boxes``, ``scores``, ``labels``,
``count``) as the one-stage detectors, the RPN's proposals sown as ``intermediates/proposals``
(``method="proposals"`` computes them alone); ``method="loss"`` torchvision's loss dict, the two
samplers drawing from the ``'dropout'`` rng (the train step's), everything in one jit: no host
round trip between the RPN and the RoI heads.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.heads.roi_heads import (RoIBoxHeads, fastrcnn_loss, postprocess_detections,
                                       select_training_samples)
from jaxvision.heads.rpn import (FPN_ANCHORS, MOBILENET_ANCHORS, RPNHead, rpn_loss,
                                 rpn_proposals, rpn_targets)
from jaxvision.layers import check_nhwc
from jaxvision.models._stages import StageLayout
from jaxvision.models._backbone import build_backbone, select
from jaxvision.models.detection.fpn_detectors import (BackboneWithFPN, frozen_stages,
                                                     resnet_stage_layout)
from jaxvision.models.detection.transform import Preprocessing
from jaxvision.models.mobilenet import MobileNetV3
from jaxvision.necks.fpn import FPN
from jaxvision.ops.samplers import sample_labels
from jaxvision.registry import get_spec, list_models, register_model

VARIANTS = ("v1", "v2", "mobilenet")


class MobileNetWithFPN(nn.Module):
    """torchvision's ``_mobilenet_extractor(fpn=True)`` of MobileNetV3-Large: the last two
    stages' first maps (features.13, features.16) into an FPN with LastLevelMaxPool."""
    norm: str = "frozen"
    fpn_channels: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        body = MobileNetV3(arch="large", norm=self.norm, dtype=self.dtype, features_only=True,
                           out_indices=(4, 5), feature_taps="starts", norm_eps=1e-5,
                           norm_momentum=0.1, name="body")
        return FPN(self.fpn_channels, "pool", dtype=self.dtype, name="fpn")(body(x, train), train)


class RegionProposalNetwork(nn.Module):
    """The ``rpn`` module: torchvision keeps its head as ``rpn.head``."""
    num_anchors: int
    conv_depth: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, maps):
        return RPNHead(self.num_anchors, self.conv_depth, self.dtype, name="head")(maps)


class FasterRCNN(nn.Module):
    variant: str = "v1"
    num_classes: int = 91
    # torchvision's GeneralizedRCNNTransform
    min_size: int = 800
    max_size: int = 1333
    image_mean: Sequence[float] = (0.485, 0.456, 0.406)
    image_std: Sequence[float] = (0.229, 0.224, 0.225)
    # torchvision's FasterRCNN keywords
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: Optional[Sequence[float]] = None
    trainable_backbone_layers: Optional[int] = None
    # the static bound of postprocess_detections (see there): candidates entering NMS
    box_candidates_per_img: int = 1000
    norm: Optional[str] = None  # default: "batch" for v2, else "frozen" (as built for weights)
    norm_eps: Optional[float] = None
    # smaller than torchvision's (a CPU-sized detector): the ResNet under the FPN (v1, v2), the
    # FPN's width and the box head's representation size
    backbone: str = "resnet50"
    fpn_channels: int = 256
    representation_size: int = 1024
    dtype: Any = jnp.float32
    torch_backbone_prefix = "backbone.body."

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.image_mean), tuple(self.image_std), self.min_size,
                             self.max_size)

    @property
    def stage_layout(self) -> StageLayout:
        if self.variant == "mobilenet":
            raise ValueError("stage_layout: the MobileNet Faster R-CNN has no ResNet stages")
        return resnet_stage_layout(r"(rpn|roi_heads)/")

    @property
    def frozen_stages(self) -> int:
        """``freeze.frozen_stages`` for ``trainable_backbone_layers`` (ResNet variants)."""
        if self.variant == "mobilenet":
            raise ValueError("frozen_stages: the MobileNet Faster R-CNN has no ResNet stages")
        return frozen_stages(self.trainable_backbone_layers)

    @property
    def anchor_generator(self):
        return MOBILENET_ANCHORS if self.variant == "mobilenet" else FPN_ANCHORS

    @property
    def fpn_levels(self) -> tuple:
        """The FPN maps RoIs are pooled from (torchvision's featmap_names)."""
        return (("features_13", "features_16") if self.variant == "mobilenet" else
                tuple(f"layer{i}" for i in range(1, 5)))

    @property
    def box_roi_pool(self):
        return ops.MultiScaleRoIAlign(self.fpn_levels, 7, 2)

    @property
    def branch_roi_pool(self):
        """The 14 x 14 RoIs of a mask or keypoint branch."""
        return ops.MultiScaleRoIAlign(self.fpn_levels, 14, 2)

    @property
    def box_coder(self):
        return ops.BoxCoder(self.bbox_reg_weights or (10.0, 10.0, 5.0, 5.0))

    def setup(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got "
                             f"{self.num_classes}")
        v2 = self.variant == "v2"
        norm = self.norm or ("batch" if v2 else "frozen")
        if self.variant == "mobilenet":
            self.features = MobileNetWithFPN(norm, self.fpn_channels, self.dtype,
                                             name="backbone")
        else:
            # the body's maps are ResNet's layer1..layer4 and its stages resnet_stage_layout's
            resnets = sorted(n for n in list_models() if get_spec(n).family == "resnet")
            if self.backbone not in resnets:
                raise ValueError(f"backbone must be one of the ResNet family's models "
                                 f"({', '.join(resnets)}), got {self.backbone!r}")
            body_kwargs = {"norm": norm}
            if self.norm_eps is not None:
                body_kwargs["norm_eps"] = self.norm_eps
            probe, _ = build_backbone(self.backbone, body_kwargs, self.dtype)
            # built detached (parent=None): BackboneWithFPN adopts them as body and fpn
            fpn = FPN(self.fpn_channels, "pool", norm="batch" if v2 else None, dtype=self.dtype,
                      parent=None)
            self.features = BackboneWithFPN(select(probe, (1, 2, 3, 4), self.dtype), fpn,
                                            name="backbone")
        self.rpn = RegionProposalNetwork(self.anchor_generator.num_anchors_per_location()[0],
                                         2 if v2 else 1, self.dtype)
        self.roi_heads = self.make_roi_heads()

    def make_roi_heads(self):
        """The ``roi_heads`` module (a Mask or Keypoint R-CNN returns its branches' too)."""
        return RoIBoxHeads(self.num_classes, "conv_fc" if self.variant == "v2" else "mlp",
                           self.representation_size, norm="batch", dtype=self.dtype)

    def _proposals(self, x, train, image_sizes, training):
        check_nhwc(x, "faster_rcnn", channels=3)
        feats = self.features(x.astype(self.dtype), train)
        maps = list(feats.values())
        objectness, deltas = self.rpn(maps)
        anchors = self.anchor_generator(x.shape[1:3], [m.shape[1:3] for m in maps])
        sizes = self.image_sizes(x, image_sizes)
        top_n = ((self.rpn_pre_nms_top_n_train, self.rpn_post_nms_top_n_train) if training
                 else (self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test))
        proposals = rpn_proposals(objectness, deltas, anchors, sizes, *top_n,
                                  self.rpn_nms_thresh, self.rpn_score_thresh)
        self.sow("intermediates", "proposals", proposals)
        return feats, objectness, deltas, anchors, sizes, proposals

    @staticmethod
    def image_sizes(x, image_sizes=None):
        """Each image's (h, w) in the padded batch ``x``: ``image_sizes``, by default x's."""
        return (jnp.tile(jnp.array(x.shape[1:3]), (x.shape[0], 1)) if image_sizes is None
                else image_sizes)

    def proposals(self, x, train: bool = False, image_sizes=None):
        """The RPN's padded proposals (eval settings): ``boxes``, ``scores``, ``valid``."""
        return self._proposals(x, train, image_sizes, False)[-1]

    def box_outputs(self, feats, boxes, image_shape, train: bool = False):
        """Pooled RoIs (N, R, 7, 7, C) through the box head: (class logits, box deltas).  A
        mask or keypoint branch pools its own RoIs from the same ``feats``."""
        pooled = self.box_roi_pool(feats, boxes, image_shape)
        return self.roi_heads(pooled, train)

    def detect(self, x, train: bool = False, image_sizes=None):
        """(FPN maps, image sizes, padded detections): a mask or keypoint branch pools the
        detections' boxes from the same maps."""
        feats, _, _, _, sizes, proposals = self._proposals(x, train, image_sizes, False)
        logits, deltas = self.box_outputs(feats, proposals["boxes"], x.shape[1:3], train)
        return feats, sizes, postprocess_detections(
            logits, deltas, proposals["boxes"], proposals["valid"], sizes,
            self.box_score_thresh, self.box_nms_thresh, self.box_detections_per_img,
            self.box_candidates_per_img, self.box_coder)

    def __call__(self, x, train: bool = False, image_sizes=None):
        return self.detect(x, train, image_sizes)[-1]

    def loss(self, x, boxes, labels, valid, train: bool = True, image_sizes=None):
        """torchvision's training losses on padded targets (boxes in ``x``'s pixels, labels
        >= 1).  The RPN runs with its training top-n whatever ``train`` (which sets BatchNorm
        only); the samplers draw from the ``'dropout'`` rng."""
        return self.box_losses(x, boxes, labels, valid, train, image_sizes)[0]

    def box_losses(self, x, boxes, labels, valid, train: bool = True, image_sizes=None):
        """(the RPN's and box branch's loss dict, FPN maps, the RoI heads' sample of
        :func:`select_training_samples`): a mask or keypoint branch trains on the sample's
        positives."""
        feats, objectness, deltas, anchors, _, proposals = self._proposals(
            x, train, image_sizes, True)
        rpn_key, roi_key = jax.random.split(self.make_rng("dropout"))
        anchor_labels, targets = rpn_targets(jnp.concatenate(anchors), boxes, valid,
                                             self.rpn_fg_iou_thresh, self.rpn_bg_iou_thresh)
        positive, negative = sample_labels(rpn_key, anchor_labels,
                                           self.rpn_batch_size_per_image,
                                           self.rpn_positive_fraction)
        self.sow("intermediates", "rpn_sample", (positive, negative))
        losses = rpn_loss(objectness, deltas, anchor_labels, targets, positive, negative)
        sample = select_training_samples(roi_key, proposals["boxes"], proposals["valid"],
                                         boxes, labels, valid, self.box_fg_iou_thresh,
                                         self.box_bg_iou_thresh, self.box_batch_size_per_image,
                                         self.box_positive_fraction, self.box_coder)
        self.sow("intermediates", "roi_sample", sample)
        logits, box_deltas = self.box_outputs(feats, sample["boxes"], x.shape[1:3], train)
        losses.update(fastrcnn_loss(logits, box_deltas, sample["labels"],
                                    sample["regression_targets"], sample["valid"]))
        return losses, feats, sample


_MOBILENET_BODY = re.compile(r"^backbone\.body\.(\d+)\.")


def adapt_mobilenet_state_dict(state_dict: dict, model) -> dict:
    """torchvision's ``backbone.body.<i>.`` is MobileNetV3's ``features.<i>`` here."""
    return {_MOBILENET_BODY.sub(r"backbone.body.features.\1.", k): v
            for k, v in state_dict.items()}


def export_mobilenet_state_dict(state_dict: dict, model) -> dict:
    return {k.replace("backbone.body.features.", "backbone.body.", 1): v
            for k, v in state_dict.items()}


def _register(name, variant, num_params, defaults=None, norm_eps=None, cls=FasterRCNN,
              family="faster_rcnn", default_classes=91):
    def build(num_classes: Optional[int] = None, features_only: bool = False,
              out_indices: Optional[Sequence[int]] = None, **kwargs):
        if features_only:
            raise ValueError(f"{name} is a detector; build its backbone for features_only")
        for k, v in (defaults or {}).items():
            kwargs.setdefault(k, v)
        if norm_eps is not None:
            kwargs.setdefault("norm_eps", norm_eps)
        return cls(variant=variant,
                   num_classes=default_classes if num_classes is None else num_classes, **kwargs)

    build.__name__ = name
    build.__doc__ = (f"torchvision's ``{name}`` ({default_classes} classes, background "
                     f"included).")
    mobilenet = variant == "mobilenet"
    size = (defaults or {}).get("min_size", 800), (defaults or {}).get("max_size", 1333)
    register_model(name, family=family, torch_name=name, num_params=num_params,
                   input_size=(512, 512), resize_size=size[0], crop_size=size[1],
                   adapt_state_dict=adapt_mobilenet_state_dict if mobilenet else None,
                   export_state_dict=export_mobilenet_state_dict if mobilenet else None,
                   notes="resize_size/crop_size are torchvision's min_size/max_size")(build)


# v1's published weights were trained with FrozenBatchNorm eps 0 (torchvision's overwrite_eps)
_register("fasterrcnn_resnet50_fpn", "v1", 41_755_286, norm_eps=0.0)
_register("fasterrcnn_resnet50_fpn_v2", "v2", 43_712_278)
_register("fasterrcnn_mobilenet_v3_large_fpn", "mobilenet", 19_386_354,
          {"rpn_score_thresh": 0.05})
_register("fasterrcnn_mobilenet_v3_large_320_fpn", "mobilenet", 19_386_354,
          {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150,
           "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05})

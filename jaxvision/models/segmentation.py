"""Semantic segmentation: a dilated backbone + a head (+ an auxiliary FCN head), as torchvision's
``models/segmentation`` (FCN, DeepLabV3, LR-ASPP), plus DeepLabV3+ (Chen et al. 2018) and
FCN-32s/16s/8s on VGG-16 (Long et al. 2015, see ``segmentation_vgg.py``).

``model.apply(v, x, train=False)`` on NHWC ``x`` returns ``{"out": (N, H, W, num_classes)}``
(+ ``"aux"`` with ``aux_loss=True``), logits upsampled bilinearly (align_corners=False) to the
input size.  Parameter paths mirror torchvision's state_dict: ``backbone.layer1.0.conv1.weight``
is ``backbone/layer1_0/conv1/kernel``, ``classifier.0.convs.0.0.weight`` is
``classifier_0/convs_0_0/kernel``, ``aux_classifier.0.weight`` is ``aux_classifier_0/kernel``.
One exception: torchvision wraps MobileNetV3's ``features`` directly (``backbone.4.block...``);
here the backbone is the MobileNetV3 module (``backbone/features_4/block...``), and the spec's
``adapt_state_dict`` inserts ``features.`` when loading.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.segmentation import (DeepLabV2Head, DeepLabV3PlusHead, LRASPPHead,
                                          deeplab_head, fcn_head)
from jaxvision.layers import check_nhwc
from jaxvision.layers.interpolate import interpolate
from jaxvision.models._backbone import BackboneRef, OnBackbone, build_backbone, ref, select
from jaxvision.registry import register_model

HEADS = ("fcn", "deeplabv3", "deeplabv3plus", "lraspp", "deeplabv1", "deeplabv2")
HEAD_PATHS = r"(aux_)?classifier"  # what linear_probe trains: the heads


def check_input(x, num_classes, model: str = "segmenter"):
    if num_classes <= 0:
        raise ValueError(f"a segmenter needs num_classes >= 1, got {num_classes}")
    check_nhwc(x, model, channels=3)


class Segmenter(OnBackbone, nn.Module):
    """``backbone`` (``features_only``) -> head on ``high`` (+ ``low``) -> upsample; the aux FCN
    head reads ``aux``.  Heads: ``fcn``, ``deeplabv3``, ``deeplabv3plus``, ``lraspp``, and DeepLab
    v1 (LargeFOV) / v2 (summed ASPP branches), where ``head_channels`` is each branch's fc6/fc7
    width (0: one dilated conv per branch, v2 on ResNet)."""

    backbone: nn.Module
    head: str
    high: str
    low: Optional[str] = None  # low-level map of DeepLabV3+ / LR-ASPP
    aux: Optional[str] = None  # map the aux FCNHead reads
    num_classes: int = 21
    aux_loss: bool = False
    atrous_rates: Sequence[int] = (12, 24, 36)
    head_channels: int = 256  # ASPP / decoder width (LR-ASPP: inter_channels 128)
    head_norm: str = "batch"
    dtype: Any = jnp.float32
    # the classification model the backbone is (pretrained_backbone)
    body: Optional[BackboneRef] = None
    head_paths = HEAD_PATHS

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_input(x, self.num_classes, type(self).__name__)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.aux_loss and self.aux is None:
            raise ValueError(f"{self.head} on this backbone has no auxiliary head")
        feats = self.backbone(x, train)
        high, kw = feats[self.high], dict(norm=self.head_norm, dtype=self.dtype)
        if self.head == "fcn":
            out = fcn_head(high, train, self.num_classes, "classifier", **kw)
        elif self.head == "deeplabv3":
            out = deeplab_head(high, train, self.num_classes, "classifier",
                               atrous_rates=self.atrous_rates, channels=self.head_channels, **kw)
        elif self.head == "deeplabv3plus":
            out = DeepLabV3PlusHead(self.num_classes, tuple(self.atrous_rates),
                                    self.head_channels, decoder_channels=self.head_channels,
                                    name="classifier", **kw)(feats[self.low], high, train)
        elif self.head in ("deeplabv1", "deeplabv2"):
            out = DeepLabV2Head(self.num_classes, tuple(self.atrous_rates), self.head_channels,
                                dtype=self.dtype, name="classifier")(high, train)
        else:
            out = LRASPPHead(self.num_classes, self.head_channels, name="classifier",
                             **kw)(feats[self.low], high, train)
        size = x.shape[1:3]
        result = {"out": interpolate(out, size, "bilinear", align_corners=False)}
        if self.aux_loss:
            aux = fcn_head(feats[self.aux], train, self.num_classes, "aux_classifier", **kw)
            result["aux"] = interpolate(aux, size, "bilinear", align_corners=False)
        return result


def _backbone(name, kwargs, wanted, dtype):
    """``(module, ref)``: registered ``name`` returning the maps at ``wanted``."""
    probe, kwargs = build_backbone(name, kwargs, dtype)
    return select(probe, wanted, dtype), ref("backbone", name, kwargs, wanted)


def _resnet(name, dilation, wanted, norm, dtype):
    return _backbone(name, {"replace_stride_with_dilation": dilation, "norm": norm}, wanted,
                     dtype)


def _mobilenet_v3(wanted, norm, dtype):
    return _backbone("mobilenet_v3_large", {"dilated": True, "norm": norm,
                                            "feature_taps": "starts"}, wanted, dtype)


def mobilenet_backbone_keys(state_dict, model):
    """torchvision's ``backbone.N.`` (IntermediateLayerGetter over ``features``) ->
    ``backbone.features.N.``; an ``aux_classifier`` the model does not have is dropped, as
    torchvision's pretrained checkpoints carry it whatever ``aux_loss`` asks."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("aux_classifier.") and not getattr(model, "aux_loss", True):
            continue
        out[re.sub(r"^backbone\.(\d+)\.", r"backbone.features.\1.", k)] = v
    return out


def drop_unused_aux(state_dict, model):
    if getattr(model, "aux_loss", True):
        return state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}


def _no_features(name, features_only, out_indices):
    if features_only or out_indices is not None:
        raise ValueError(f"{name} is a segmenter: features_only/out_indices apply to its "
                         f"backbone; create the backbone model itself for feature maps")


_SPEC = dict(family="segmentation", input_size=(520, 520), resize_size=520, crop_size=520,
             notes="torchvision's segmentation weights were trained on COCO (VOC labels) with "
                   "the shorter side resized to 520")
_DILATED_OS8 = (False, True, True)


def _register_resnet(name, head, resnet, num_params):
    def build(num_classes: int = 21, aux_loss: bool = False, norm: str = "batch",
              dtype=jnp.float32, features_only=False, out_indices=None, **kwargs):
        _no_features(name, features_only, out_indices)
        backbone, body = _resnet(resnet, _DILATED_OS8, (3, 4) if aux_loss else (4,), norm,
                                 dtype)
        return Segmenter(backbone, head, "layer4", aux="layer3", num_classes=num_classes,
                         aux_loss=aux_loss, dtype=dtype, body=body, **kwargs)

    build.__name__ = name
    build.__doc__ = (f"torchvision's ``{name}``: ResNet with layer3/layer4 dilated (output "
                     f"stride 8), aux FCNHead on layer3 with ``aux_loss=True``.")
    register_model(name, torch_name=name, num_params=num_params,
                   adapt_state_dict=drop_unused_aux, **_SPEC)(build)


def _register_mobilenet(name, head, num_params):
    def build(num_classes: int = 21, aux_loss: bool = False, norm: str = "batch",
              dtype=jnp.float32, features_only=False, out_indices=None, **kwargs):
        _no_features(name, features_only, out_indices)
        # taps "starts": features_0, _2, _4 (stride 8, 40 ch), _7, _13, _16 (960 ch, stride 16)
        if head == "lraspp":
            if aux_loss:
                raise ValueError("lraspp_mobilenet_v3_large has no auxiliary head "
                                 "(as torchvision)")
            backbone, body = _mobilenet_v3((2, 5), norm, dtype)
            return Segmenter(backbone, head, "features_16", low="features_4",
                             num_classes=num_classes,
                             head_channels=kwargs.pop("inter_channels", 128), dtype=dtype,
                             body=body, **kwargs)
        backbone, body = _mobilenet_v3((2, 5) if aux_loss else (5,), norm, dtype)
        return Segmenter(backbone, head, "features_16", aux="features_4",
                         num_classes=num_classes, aux_loss=aux_loss, dtype=dtype, body=body,
                         **kwargs)

    build.__name__ = name
    build.__doc__ = (f"torchvision's ``{name}``: MobileNetV3-large with its last stage dilated "
                     f"(output stride 16), reading features[4] (stride 8) and features[16].")
    register_model(name, torch_name=name, num_params=num_params,
                   adapt_state_dict=mobilenet_backbone_keys, **_SPEC)(build)


_register_resnet("fcn_resnet50", "fcn", "resnet50", 32_957_013)
_register_resnet("fcn_resnet101", "fcn", "resnet101", 51_949_141)
_register_resnet("deeplabv3_resnet50", "deeplabv3", "resnet50", 39_638_869)
_register_resnet("deeplabv3_resnet101", "deeplabv3", "resnet101", 58_630_997)
_register_mobilenet("deeplabv3_mobilenet_v3_large", "deeplabv3", 11_025_477)
_register_mobilenet("lraspp_mobilenet_v3_large", "lraspp", 3_221_538)


# ----------------------------------------------------------------------------- DeepLabV3+

def _register_plus(name, make_backbone, high, low, rates, doc, num_params):
    def build(num_classes: int = 21, aux_loss: bool = False, norm: str = "batch",
              dtype=jnp.float32, features_only=False, out_indices=None,
              atrous_rates: Sequence[int] = rates, **kwargs):
        _no_features(name, features_only, out_indices)
        if aux_loss:
            raise ValueError(f"{name} has no auxiliary head")
        backbone, body = make_backbone(norm, dtype)
        return Segmenter(backbone, "deeplabv3plus", high, low=low, num_classes=num_classes,
                         atrous_rates=tuple(atrous_rates), dtype=dtype, body=body, **kwargs)

    build.__name__ = name
    build.__doc__ = doc
    register_model(name, torch_name=None, num_params=num_params,
                   **{**_SPEC, "notes": doc})(build)


_register_plus(
    "deeplabv3plus_resnet18",
    lambda norm, dtype: _resnet("resnet18", (False, False, False), (1, 4), norm, dtype),
    "layer4", "layer1", (6, 12, 18),
    "DeepLabV3+ on ResNet-18, small enough to train on a CPU.  ResNet-18's BasicBlock cannot "
    "dilate (as torchvision's), so the encoder is NOT dilated: ASPP reads layer4 at output "
    "stride 32 (rates 6/12/18 by default; on maps smaller than the rate the dilated taps fall "
    "in the zero padding and the branch acts as a 1x1 conv), and the decoder restores detail "
    "from layer1 (stride 4, 64 channels).  head_channels (default 256) sets the ASPP and "
    "decoder width.", 16_608_181)
_register_plus(
    "deeplabv3plus_resnet50",
    lambda norm, dtype: _resnet("resnet50", (False, False, True), (1, 4), norm, dtype),
    "layer4", "layer1", (6, 12, 18),
    "DeepLabV3+ (Chen et al. 2018) on ResNet-50 with layer4 dilated (output stride 16, ASPP "
    "rates 6/12/18, the paper's training setting), decoder on layer1 (stride 4, 256 channels).",
    40_352_181)
_register_plus(
    "deeplabv3plus_mobilenet_v2",
    lambda norm, dtype: _backbone("mobilenet_v2", {"norm": norm, "feature_taps": "starts"},
                                  (1, 5), dtype),
    "features_18", "features_2", (6, 12, 18),
    "DeepLabV3+ on MobileNetV2 (not dilated: ASPP on features[18], 1280 channels, stride 32; "
    "decoder on features[2], 24 channels, stride 4).", 13_355_253)

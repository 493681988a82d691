"""Composed dense models: ``create_model(HEAD, backbone=NAME, neck=NECK, num_classes=K)``.

A dense model is backbone -> neck -> head, each chosen by name, as mmdetection's
``model=dict(backbone=..., neck=..., bbox_head=...)`` but as one Flax module:

    det = jv.create_model("retinanet", backbone="convnext_tiny", num_classes=5)
    seg = jv.create_model("deeplabv3plus", backbone="efficientnet_b0", num_classes=5,
                          output_stride=None)
    det, v = jv.create_model("fcos", backbone="resnet50", pretrained_backbone="r50.pth")

**Backbone.** Any registered classification model, built as ``create_model(NAME,
features_only=True, out_indices=..., **backbone_kwargs)`` through the registry
(``models/_backbone.py``): its variables sit under ``backbone/`` laid out exactly as the
classification model's own, so torchvision's classification weights fill them
(``pretrained_backbone``) and its own ``stage_layout`` says what ``frozen_stages`` freezes.
Which maps a head reads is read from *that instance's* ``feature_info``: a detector takes the
deepest map of each of the last three strides >= 8 (C3..C5), a segmenter the last map (and the
last of stride 4 for DeepLabV3+'s decoder, of stride 8 for LR-ASPP, the one before the last
for the auxiliary FCN head); ``out_indices`` overrides.  A backbone that takes one input size
only (ViT's position embedding, MaxViT's relative-position tables: ``fixed_input_size`` on the
class) is built at that size (``backbone_kwargs``: ViT's ``image_size``, MaxViT's
``input_size``; 224 by default): the composed model's ``image_size`` says it, ``create_model``
initialises at it, and any other input size is refused by the backbone, naming its size (no
position-embedding interpolation at run time; ``jaxvision.tasks.detection.predict``'s resize
does not pad to a square, so feed such a detector square images of that size).
``output_stride`` (8/16) is asked of the backbone's own dilation switch (``dilation_kwargs``:
ResNet's ``replace_stride_with_dilation``, MobileNetV3's dilated last stage) and refused where a
family has none.  Where a backbone cannot serve a head, the error says why (YOLO needs maps at
strides 8, 16, 32; DeepLabV3+ a stride-4 map; LR-ASPP a stride-8 map).

**Neck** (``DETECTION_NECKS``, the default first).  RetinaNet / FCOS: ``fpn``
(torchvision's FeaturePyramidNetwork + LastLevelP6P7 from P5) at ``neck/``, or
``simple_pyramid`` (ViTDet's simple feature pyramid from the last map: strides /2, x1, x2 of
it + P6/P7; ``neck_kwargs``: ``out_channels``, ``scale_factors``, ``norm``), the default where
the backbone's maps have one stride only (ViT); the input channels are those of the maps the
backbone returns (Flax infers them) and the anchors follow the levels' real strides.  YOLO:
``spp+pan`` (YOLOv4's SPP block on C5 at ``spp/`` + PAN at ``neck/``, ``neck_kwargs``:
``channels``) or ``pan``.  SSD: none (its extra stride-2 blocks on the deepest map, ``extra/``,
belong to the detector, as ``backbone.extra`` in torchvision's SSD300).  Segmentation: none
(DeepLab's ASPP is in the head).

**Head.** ``retinanet``, ``fcos`` (``head/``, ``head_kwargs={"num_convs": n}``); ``ssd``
(torchvision's SSDHead over the backbone's C3..C5 and extra blocks up to six maps, SSDLite's
default boxes; ``head_kwargs={"extra_channels": (...)}``; labels count from 1, 0 is the
background); ``yolo`` (the YOLOv3 head of ``yolo_cspdarknet53``, its anchors at strides 8, 16,
32; labels from 0); ``fcn``, ``deeplabv3``, ``deeplabv3plus``, ``lraspp`` (torchvision's
``classifier/`` and ``aux_classifier/``, ``head_kwargs``: ``atrous_rates``,
``head_channels``); ``deeplabv1`` (LargeFOV: fc6 3x3 at rate 12, 1024 wide, fc7, fc8) and
``deeplabv2`` (ASPP of summed branches at rates 6, 12, 18, 24, each one dilated 3x3 conv to the
classes as v2 on ResNet; ``head_channels=1024``: each an fc6/fc7/fc8 branch, ASPP-L on VGG), at
``classifier/`` (``heads.segmentation.DeepLabV2Head``).  Detection input is normalised with
ImageNet's mean/std (the backbone's); SSD's transform resizes to ``size`` (320 unless the
backbone fixes it), YOLO's to ``min_size``/``max_size`` (608).

**Presets.** torchvision's names are this composition with torchvision's settings and its
layout (``retinanet_resnet50_fpn``: ``backbone/body`` + ``backbone/fpn`` + ``head``;
``deeplabv3_resnet50``: ``backbone`` + ``classifier``), in ``detection/fpn_detectors.py`` and
``segmentation.py``; their parameter trees are torchvision's state_dict, key for key.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp

from jaxvision.models._backbone import (build_backbone, fixed_image_size, last_of_reduction,
                                        output_stride_kwargs, pyramid_indices, ref, select)
from jaxvision.models._features import select as feature_names
from jaxvision.models.detection.fpn_detectors import FPNDetector
from jaxvision.models.detection.ssd import ComposedSSD
from jaxvision.models.detection.yolo import PAN_CHANNELS, ComposedYOLO
from jaxvision.models.segmentation import Segmenter
from jaxvision.necks.fpn import FPN
from jaxvision.necks.simple_pyramid import SimplePyramid
from jaxvision.registry import register_model

DETECTION_HEADS = ("retinanet", "fcos", "ssd", "yolo")
SEGMENTATION_HEADS = ("fcn", "deeplabv3", "deeplabv3plus", "lraspp", "deeplabv1", "deeplabv2")
# the necks each detection head takes, its default first (None: no neck)
DETECTION_NECKS = {"retinanet": ("fpn", "simple_pyramid"), "fcos": ("fpn", "simple_pyramid"),
                   "ssd": (None,), "yolo": ("spp+pan", "pan")}
_NECK_KWARGS = {"fpn": ("out_channels", "norm"),
                "simple_pyramid": ("out_channels", "norm", "scale_factors"),
                "spp+pan": ("channels",), "pan": ("channels",)}
_DEEPLAB = ("atrous_rates", "head_channels")
_HEAD_KWARGS = {"retinanet": ("num_convs",), "fcos": ("num_convs",), "ssd": ("extra_channels",),
                "yolo": (), "fcn": (), "deeplabv3": _DEEPLAB, "deeplabv3plus": _DEEPLAB,
                "lraspp": ("head_channels",), "deeplabv1": _DEEPLAB, "deeplabv2": _DEEPLAB}
# the head settings a segmentation head defaults to, over Segmenter's (DeepLabV3's)
_SEG_DEFAULTS = {"lraspp": {"head_channels": 128},
                 "deeplabv1": {"atrous_rates": (12,), "head_channels": 1024},
                 "deeplabv2": {"atrous_rates": (6, 12, 18, 24), "head_channels": 0}}
# SSD's extra blocks' widths, as many as make six maps with the backbone's (SSD300 has six)
_SSD_EXTRAS = (512, 256, 256, 256, 256)


def _checked(what: str, given: Optional[Mapping], allowed: Sequence[str]) -> dict:
    given = dict(given or {})
    bad = sorted(set(given) - set(allowed))
    if bad:
        raise ValueError(f"{what}: unknown {bad}; expected some of {list(allowed)}")
    return given


def _indices(probe, name: str, out_indices: Optional[Sequence[int]], default) -> tuple:
    if out_indices is None:
        return tuple(default())
    n = len(probe.feature_info)
    feature_names(probe.feature_info, out_indices)  # refuses an index out of range
    return tuple(i % n for i in out_indices)


def _neck(kind: str, neck: Optional[str], default: Optional[str]) -> Optional[str]:
    allowed = DETECTION_NECKS[kind]
    neck = default if neck is None else neck
    if neck not in allowed:
        raise ValueError(f"{kind}: neck must be one of {allowed}, got {neck!r}")
    return neck


def detector(kind: str, backbone: str, neck: Optional[str] = None, num_classes: int = 91,
             backbone_kwargs: Optional[Mapping] = None, neck_kwargs: Optional[Mapping] = None,
             head_kwargs: Optional[Mapping] = None,
             out_indices: Optional[Sequence[int]] = None, dtype: Any = jnp.float32,
             **kwargs) -> FPNDetector:
    """``kind`` (retinanet, fcos) on ``backbone``'s maps through ``neck``: ``fpn`` on C3..C5,
    or ``simple_pyramid`` on the last map, the default where the backbone has one stride only
    (ViT)."""
    head = _checked(f"{kind} head_kwargs", head_kwargs, _HEAD_KWARGS[kind])
    probe, bkw = build_backbone(backbone, backbone_kwargs, dtype)
    idx = _indices(probe, backbone, out_indices,
                   lambda: pyramid_indices(probe.feature_info, backbone))
    strides = [probe.feature_info[i].reduction for i in idx]
    neck = _neck(kind, neck, "simple_pyramid" if len(set(strides)) == 1 else "fpn")
    nk = _checked(f"{kind} neck_kwargs ({neck})", neck_kwargs, _NECK_KWARGS[neck])
    channels = nk.get("out_channels", 256)
    if neck == "simple_pyramid":
        idx = idx[-1:]
        made = SimplePyramid(channels, tuple(nk.get("scale_factors", (2.0, 1.0, 0.5))),
                             strides[-1], "p6p7", nk.get("norm", "layer"), dtype)
        strides = made.strides()
    else:
        made = FPN(channels, "p6p7", channels, norm=nk.get("norm"), dtype=dtype)
        strides = tuple(strides) + (strides[-1] * 2, strides[-1] * 4)
    return FPNDetector(select(probe, idx, dtype), ref("backbone", backbone, bkw, idx), neck=made,
                       strides=strides, kind=kind, num_classes=num_classes,
                       head_convs=head.get("num_convs", 4), dtype=dtype, **kwargs)


def ssd(kind: str, backbone: str, neck: Optional[str] = None, num_classes: int = 91,
        backbone_kwargs: Optional[Mapping] = None, neck_kwargs: Optional[Mapping] = None,
        head_kwargs: Optional[Mapping] = None, out_indices: Optional[Sequence[int]] = None,
        dtype: Any = jnp.float32, **kwargs) -> ComposedSSD:
    """SSD on ``backbone``'s C3..C5 (or fewer) + extra stride-2 blocks on the deepest map, up to
    six maps (``head_kwargs={"extra_channels": (...)}`` sets their number and widths)."""
    if neck is not None or neck_kwargs:
        raise ValueError(f"ssd: takes no neck (its extra layers are part of the detector: "
                         f"head_kwargs extra_channels); got neck={neck!r}")
    hk = _checked("ssd head_kwargs", head_kwargs, _HEAD_KWARGS["ssd"])
    probe, bkw = build_backbone(backbone, backbone_kwargs, dtype)
    idx = _indices(probe, backbone, out_indices,
                   lambda: pyramid_indices(probe.feature_info, backbone))
    extra = tuple(hk.get("extra_channels", _SSD_EXTRAS[:max(1, 6 - len(idx))]))
    fixed = fixed_image_size(probe)
    if fixed:  # SSD's transform resizes to ``size``, read as (width, height)
        kwargs.setdefault("size", fixed[::-1])
    return ComposedSSD(num_classes=num_classes, backbone=select(probe, idx, dtype),
                       body=ref("backbone", backbone, bkw, idx), extra_channels=extra,
                       dtype=dtype, **kwargs)


def yolo(kind: str, backbone: str, neck: Optional[str] = None, num_classes: int = 80,
         backbone_kwargs: Optional[Mapping] = None, neck_kwargs: Optional[Mapping] = None,
         head_kwargs: Optional[Mapping] = None, out_indices: Optional[Sequence[int]] = None,
         dtype: Any = jnp.float32, **kwargs) -> ComposedYOLO:
    """YOLOv4's SPP + PAN + YOLOv3 head on ``backbone``'s maps at strides 8, 16, 32."""
    neck = _neck(kind, neck, "spp+pan")
    nk = _checked(f"yolo neck_kwargs ({neck})", neck_kwargs, _NECK_KWARGS[neck])
    _checked("yolo head_kwargs", head_kwargs, _HEAD_KWARGS["yolo"])
    probe, bkw = build_backbone(backbone, backbone_kwargs, dtype)
    info = probe.feature_info
    idx = _indices(probe, backbone, out_indices, lambda: pyramid_indices(info, backbone))
    strides = tuple(info[i].reduction for i in idx)
    if strides != (8, 16, 32):
        raise ValueError(f"backbone={backbone!r} cannot serve yolo: its anchors and decoding "
                         f"are at strides (8, 16, 32); the maps read "
                         f"({[info[i].name for i in idx]}) are at strides {strides}")
    fixed = fixed_image_size(probe)
    if fixed:
        kwargs.setdefault("min_size", min(fixed))
        kwargs.setdefault("max_size", max(fixed))
    return ComposedYOLO(num_classes=num_classes, backbone=select(probe, idx, dtype),
                        body=ref("backbone", backbone, bkw, idx),
                        neck_channels=tuple(nk.get("channels", PAN_CHANNELS)),
                        use_spp=neck == "spp+pan", dtype=dtype, **kwargs)


def segmenter(head: str, backbone: str, neck: Optional[str] = None, num_classes: int = 21,
              backbone_kwargs: Optional[Mapping] = None, neck_kwargs: Optional[Mapping] = None,
              head_kwargs: Optional[Mapping] = None,
              out_indices: Optional[Sequence[int]] = None, output_stride: Optional[int] = None,
              aux_loss: bool = False, dtype: Any = jnp.float32, **kwargs) -> Segmenter:
    """``head`` on ``backbone``'s last map (and its low-level map); ``out_indices``: the maps
    read, low-level (DeepLabV3+, LR-ASPP) first, then the auxiliary head's (``aux_loss``), the
    main map last."""
    if neck is not None or neck_kwargs:
        raise ValueError(f"{head}: takes no neck (its context module is in the head); got "
                         f"neck={neck!r}")
    hk = _checked(f"{head} head_kwargs", head_kwargs, _HEAD_KWARGS[head])
    probe, bkw = build_backbone(backbone, backbone_kwargs, dtype)
    dilation = output_stride_kwargs(probe, backbone, output_stride)
    if dilation:
        probe, bkw = build_backbone(backbone, {**bkw, **dilation}, dtype)
    info = probe.feature_info
    low_stride = {"deeplabv3plus": 4, "lraspp": 8}.get(head)

    def default():
        low = [] if low_stride is None else [last_of_reduction(info, low_stride)]
        if low and low[0] is None:
            raise ValueError(f"{head}: backbone={backbone!r} has no stride-{low_stride} map for "
                             f"the decoder (its maps: {[(f.name, f.reduction) for f in info]})")
        return low + ([len(info) - 2] if aux_loss else []) + [len(info) - 1]

    idx = _indices(probe, backbone, out_indices, default)
    want = 1 + (low_stride is not None) + aux_loss
    if len(idx) != want:
        raise ValueError(f"{head}: out_indices names the maps read, low-level first, aux next, "
                         f"main last: {want} of them here, got {tuple(idx)}")
    names = [info[i].name for i in idx]
    extra = {**_SEG_DEFAULTS.get(head, {}), **hk}
    if "atrous_rates" in extra:
        extra["atrous_rates"] = tuple(extra["atrous_rates"])
    return Segmenter(select(probe, sorted(set(idx)), dtype), head, names[-1],
                     low=names[0] if low_stride else None,
                     aux=names[-2] if aux_loss else None, num_classes=num_classes,
                     aux_loss=aux_loss, dtype=dtype,
                     body=ref("backbone", backbone, bkw, sorted(set(idx))), **extra, **kwargs)


def _register(head: str, make, family: str, num_classes: int, input_size):
    def build(backbone: Optional[str] = None, num_classes: Optional[int] = None,
              features_only: bool = False, **kwargs):
        if features_only:
            raise ValueError(f"{head} is a dense model: features_only applies to its backbone")
        if not backbone:
            raise ValueError(f"{head} is a head: name its backbone, e.g. create_model({head!r}, "
                             f"backbone='resnet50', num_classes=K)")
        return make(head, backbone, num_classes=num_classes or build.num_classes, **kwargs)

    build.num_classes = num_classes
    build.__name__ = head
    build.__doc__ = f"``{head}`` on any registered backbone (see jaxvision.models.compose)."
    register_model(head, family=family, torch_name=None, num_params=0, input_size=input_size,
                   notes="a head composed with backbone=NAME; its parameter count depends on "
                         "the backbone (num_params 0 here); input_size is only the size its "
                         "variables are created at")(build)


for _h in ("retinanet", "fcos"):
    _register(_h, detector, "fpn_detector", 91, (128, 128))
_register("ssd", ssd, "ssd", 91, (128, 128))
_register("yolo", yolo, "yolo", 80, (128, 128))
for _h in SEGMENTATION_HEADS:
    _register(_h, segmenter, "segmentation", 21, (128, 128))

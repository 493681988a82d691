"""Which parameters train: by stage (mmdetection's ``frozen_stages``), by regex, or all but the head.

Paths are the "/"-joined parameter paths, which mirror torchvision's names (``layer1_0/conv1/
kernel`` is torch's ``layer1.0.conv1.weight``), so the stage table below reads like torchvision's
modules and can be checked against torchvision's own state_dict keys.
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple, Optional

import jax
import ml_collections

import jaxvision as jv
from jaxvision.models._stages import param_paths


def default_freeze_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        frozen_stages=-1,  # -1 none; 0 the stem; k the stem and stages 1..k
        patterns=(),  # regexes over parameter paths; a match is frozen
        linear_probe=False,  # train the classification head only
        norm_eval=False))  # BatchNorm statistics fixed while training


def model_overrides(cfg) -> dict:
    """Model keyword arguments the freeze config implies."""
    return {"norm": "batch_eval"} if cfg.norm_eval else {}


class Layout(NamedTuple):
    stem: str  # regex: the stem's params
    stage: Callable[[str, str], Optional[int]]  # (path, model_name) -> 1-based stage, or None
    head: str  # regex: the classification head's params


def _indexed(pattern: str, to_stage: Callable[[int, str], Optional[int]]):
    rx = re.compile(pattern)

    def stage(path: str, model_name: str) -> Optional[int]:
        m = rx.match(path)
        return to_stage(int(m.group(1)), model_name) if m else None
    return stage


def _bounds(starts: tuple[int, ...]) -> Callable[[int], Optional[int]]:
    """First block index of each stage (and one past the last) -> block index to stage."""
    def to_stage(i: int) -> Optional[int]:
        for s in range(len(starts) - 1):
            if starts[s] <= i < starts[s + 1]:
                return s + 1
        return None
    return to_stage


# torchvision's features indices: mmdetection's MobileNetV2 stages (blocks 1,2,3,4,3,3,1);
# features_18 (the 1x1 conv to 1280) is outside the stages, as mmdetection's ``conv2``.
_MBV2 = _bounds((1, 2, 4, 7, 11, 14, 17, 18))
# MobileNetV1/V3 stages by output stride (the block that downsamples opens a stage).
_MB_STAGES = {"mobilenet_v1": _bounds((1, 2, 4, 6, 12, 14)), "mobilenet_v2": _MBV2,
              "mobilenet_v3_large": _bounds((1, 2, 4, 7, 13, 16)),
              "mobilenet_v3_small": _bounds((1, 2, 4, 9, 12))}


def _mobilenet_stage(i: int, model_name: str) -> Optional[int]:
    if model_name not in _MB_STAGES:
        raise ValueError(f"freeze: no MobileNet stage layout for {model_name!r} "
                         f"(known: {', '.join(_MB_STAGES)})")
    return _MB_STAGES[model_name](i)

_VGG_CFGS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3),
             "vgg19": (2, 2, 4, 4, 4)}


def _vgg_stage(i: int, model_name: str) -> Optional[int]:
    """Stage of ``features_i``: each conv is conv+relu (conv+bn+relu with _bn), each stage ends
    with a max-pool, as torchvision's ``make_layers``."""
    base = model_name.removesuffix("_bn")
    if base not in _VGG_CFGS:
        raise ValueError(f"freeze: no VGG stage layout for {model_name!r}")
    per_conv = 3 if model_name.endswith("_bn") else 2
    start = 0
    for s, n in enumerate(_VGG_CFGS[base], 1):
        end = start + n * per_conv + 1
        if start <= i < end:
            return s
        start = end
    return None


_NAMED = {"googlenet": {"inception3": 1, "inception4": 2, "inception5": 3},
          "inception": {"Mixed_5": 1, "Mixed_6": 2, "Mixed_7": 3}}

FAMILIES: dict[str, Layout] = {
    "resnet": Layout(r"(conv1|bn1)/", _indexed(r"layer(\d+)_", lambda i, _: i), r"fc/"),
    "vit": Layout(r"(conv_proj/|class_token$|encoder/pos_embedding$)",
                  _indexed(r"encoder/layers/encoder_layer_(\d+)/", lambda i, _: i + 1),
                  r"heads/"),
    "mobilenet": Layout(r"features_0[_/]", _indexed(r"features_(\d+)[_/]", _mobilenet_stage),
                        r"classifier_"),
    "vgg": Layout(r"(?!)", _indexed(r"features_(\d+)/", _vgg_stage), r"classifier_"),
    "googlenet": Layout(r"conv[123]/",
                        _indexed(r"inception(\d)[a-e]/", lambda i, _: i - 2),
                        r"(fc|aux1|aux2)/"),
    "inception": Layout(r"Conv2d_", _indexed(r"Mixed_(\d)[a-e]/", lambda i, _: i - 4),
                        r"(fc|AuxLogits)/"),
}


class _Declared(NamedTuple):
    """A model's own :class:`~jaxvision.models._stages.StageLayout`, seen as a Layout."""
    stem: str
    stage: Callable[[str, str], Optional[int]]
    head: str


def layout(model_name: str, model=None):
    """The model's declared ``stage_layout`` when it has one, else the family table."""
    model = model if model is not None else jv.create_model(model_name)
    declared = getattr(model, "stage_layout", None)
    if declared is not None:
        return _Declared(declared.stem, lambda path, _: declared.stage_of(path), declared.head)
    family = jv.model_info(model_name).family
    if family not in FAMILIES:
        raise ValueError(f"freeze.frozen_stages/linear_probe: no stage table for model family "
                         f"{family!r} of {model_name!r} (known: {', '.join(FAMILIES)}); "
                         f"use freeze.patterns instead")
    return FAMILIES[family]


def stage_of(path: str, model_name: str, lay: Layout) -> Optional[int]:
    """0 for the stem, k for stage k, None for the rest (head, final norm/conv)."""
    if re.match(lay.stem, path):
        return 0
    return lay.stage(path, model_name)


def trainable_mask(params, cfg, model_name: str, model=None):
    """A pytree of bools shaped like ``params``: False for frozen leaves."""
    paths = param_paths(params)
    flat = jax.tree.leaves(paths)
    frozen = set()
    # unset in the config: what the model asks for (a detector's trainable_backbone_layers)
    frozen_stages = cfg.frozen_stages if cfg.frozen_stages >= 0 else getattr(
        model, "frozen_stages", -1)
    if frozen_stages >= 0 or cfg.linear_probe:
        lay = layout(model_name, model)
        stages = {p: stage_of(p, model_name, lay) for p in flat}
        if frozen_stages >= 0:
            n = max((s for s in stages.values() if s is not None), default=0)
            if frozen_stages > n:
                raise ValueError(f"freeze.frozen_stages={frozen_stages}: {model_name} has "
                                 f"{n} stages (use -1 for none, 0 for the stem only)")
            frozen |= {p for p, s in stages.items() if s is not None and s <= frozen_stages}
        if cfg.linear_probe:
            head = [p for p in flat if re.match(lay.head, p)]
            if not head:
                raise ValueError(f"freeze.linear_probe: no head parameters ({lay.head!r}) in "
                                 f"{model_name}")
            frozen |= set(flat) - set(head)
    for pattern in cfg.patterns:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"freeze.patterns: {pattern!r} is not a valid regex ({e})") from e
        hits = {p for p in flat if rx.search(p)}
        if not hits:
            raise ValueError(f"freeze.patterns: {pattern!r} matches no parameter path of "
                             f"{model_name} (paths look like {flat[0]!r})")
        frozen |= hits
    return jax.tree.map(lambda p: p not in frozen, paths)

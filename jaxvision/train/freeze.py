"""Which parameters train: by stage (mmdetection's ``frozen_stages``), by regex, or all but the head.

Paths are the "/"-joined parameter paths, which mirror torchvision's names (``layer1_0/conv1/
kernel`` is torch's ``layer1.0.conv1.weight``).  What a stage is, every model declares itself
(its ``stage_layout``, ``jaxvision/models/_stages.py``); this module holds no per-family table.
"""
from __future__ import annotations

import re

import jax
import ml_collections

import jaxvision as jv
from jaxvision.models._stages import StageLayout, param_paths


def default_freeze_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        frozen_stages=-1,  # -1 none; 0 the stem; k the stem and stages 1..k
        patterns=(),  # regexes over parameter paths; a match is frozen
        linear_probe=False,  # train the classification head only
        norm_eval=False))  # BatchNorm statistics fixed while training


def model_overrides(cfg) -> dict:
    """Model keyword arguments the freeze config implies."""
    return {"norm": "batch_eval"} if cfg.norm_eval else {}


def layout(model_name: str, model=None) -> StageLayout:
    """The model's own ``stage_layout`` (every family declares one; a composed model its
    backbone's under the backbone's path)."""
    model = model if model is not None else jv.create_model(model_name)
    declared = getattr(model, "stage_layout", None)
    if declared is None:
        raise ValueError(f"freeze.frozen_stages/linear_probe: model {model_name!r} (family "
                         f"{jv.model_info(model_name).family!r}) declares no stage_layout; "
                         f"use freeze.patterns instead")
    return declared


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
        stages = {p: lay.stage_of(p) for p in flat}
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

"""The ``effdet`` package's (rwightman's efficientdet-pytorch) weights -> jaxvision variables.

``BiFPN`` and ``EfficientDetHead`` mirror effdet's module names, so its state_dict maps key for
key by the generic rule of :mod:`jaxvision.convert.torchvision` (``cell.0.fnode.3.combine.
edge_weights`` -> ``params/cell_0/fnode_3/combine/edge_weights``).  effdet's backbones are timm's,
whose names are not torchvision's: only the neck and the heads convert.
"""
from __future__ import annotations

from typing import Any, Mapping

from jaxvision.convert import merge
from jaxvision.convert import torchvision as tv


def from_effdet(state_dict: Any, target: Mapping, prefix: str = "", strict: bool = True):
    """``(variables, report)``: ``target`` (variables, or their shapes, of a ``BiFPN`` or an
    ``EfficientDetHead``) filled from effdet's tensors under ``prefix`` (``"fpn."``,
    ``"class_net."``, ``"box_net."`` of a whole ``EfficientDet``'s state_dict; ``""`` for the
    module's own). ``state_dict``: a mapping of tensors, a torch module or a ``.pth`` path.
    Strict: every tensor and every variable finds its partner, or ConversionError names them."""
    sd = tv.as_state_dict(state_dict)
    picked = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not picked:
        raise merge.ConversionError(f"from_effdet: no tensor's key starts with {prefix!r} "
                                    f"(first keys: {', '.join(list(sd)[:3])})")
    report = merge.Report()
    source, names = tv.map_state_dict(picked, target, report)
    names = {p: prefix + n for p, n in names.items()}
    report.unexpected[:] = [prefix + k for k in report.unexpected]
    variables = merge.fill(dict(target), source, names, report, strict,
                           shown_shape=tv.torch_shape)
    return variables, report

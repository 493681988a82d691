"""The ``features_only`` contract shared by every backbone.

A backbone declares ``feature_info`` (name, channels, reduction) in the order its maps are
produced; ``out_indices`` picks among them (negative indices count from the end).  The model
returns ``{name: NHWC array}`` and stops computing after the last map asked for.
"""
from __future__ import annotations

from typing import Optional, Sequence

from jaxvision.registry import FeatureInfo


def select(feature_info: Sequence[FeatureInfo], out_indices: Optional[Sequence[int]]) -> list[str]:
    names = [f.name for f in feature_info]
    idx = range(len(names)) if out_indices is None else out_indices
    bad = [i for i in idx if not -len(names) <= i < len(names)]
    if bad:
        raise ValueError(f"out_indices {tuple(idx)} out of range: this model has "
                         f"{len(names)} feature maps {names}")
    return [names[i] for i in idx]


class FeatureCollector:
    """Collects the maps asked for; ``add`` answers True once all of them are in."""

    def __init__(self, feature_info, features_only: bool, out_indices=None):
        self.wanted = select(feature_info, out_indices) if features_only else None
        self.maps: dict = {}

    def add(self, name: str, x) -> bool:
        if self.wanted is None:
            return False
        if name in self.wanted:
            self.maps[name] = x
        return len(self.maps) == len(set(self.wanted))


FEATURE_TAPS = ("ends", "starts")


def features_at_strides(channels, strides, dilations=None,
                        taps="ends") -> tuple[FeatureInfo, ...]:
    """``taps="ends"``: the last ``features`` layer before the (nominal) stride changes, and the
    last.  ``taps="starts"``: torchvision's ``stage_indices`` for segmentation and detection --
    ``features[0]``, every strided block (``_is_cn``, nominal stride even where dilated) and the
    last layer.  ``strides``/``dilations`` are cumulative after each layer; the reduction is the
    real one."""
    if taps not in FEATURE_TAPS:
        raise ValueError(f"feature_taps must be one of {FEATURE_TAPS}, got {taps!r}")
    real = strides if dilations is None else [s // d for s, d in zip(strides, dilations)]
    n = len(strides)
    if taps == "ends":
        keep = [i for i in range(n) if i == n - 1 or strides[i + 1] != strides[i]]
    else:
        keep = [0] + [i for i in range(1, n - 1) if strides[i] != strides[i - 1]] + [n - 1]
    return tuple(FeatureInfo(f"features_{i}", channels[i], real[i]) for i in keep)

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

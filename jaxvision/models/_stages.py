"""How a model declares its stages, for ``freeze.frozen_stages`` and ``freeze.linear_probe``.

A model class exposes a ``stage_layout`` property returning a :class:`StageLayout` computed for
that instance (variant, depth).  Each entry is a regex matched with ``re.match`` against the
"/"-joined parameter paths (``layer1_0/conv1/kernel``), which mirror torchvision's state_dict
names, so a reader can check a layout against torchvision's modules.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class StageLayout:
    stem: str  # the stem's parameters ("(?!)" when the model has none)
    stages: tuple[str, ...]  # stage k (1-based) is stages[k - 1]
    head: str  # the classification head's parameters (what linear_probe trains)

    def stage_of(self, path: str) -> Optional[int]:
        """0 for the stem, k for stage k, None for the rest (head, final norm/conv)."""
        if re.match(self.stem, path):
            return 0
        for k, rx in enumerate(self.stages, 1):
            if re.match(rx, path):
                return k
        return None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def under(self, prefix: str, head: str) -> "StageLayout":
        """This (backbone's) layout inside a composed model whose variables hold it at
        ``prefix`` ("backbone/"); ``head``: the composed model's own head parameters."""
        p = re.escape(prefix)
        return StageLayout(f"{p}(?:{self.stem})", tuple(f"{p}(?:{s})" for s in self.stages),
                           head)


def block_range(prefix: str, start: int, stop: int, sep: str = "[_/]") -> str:
    """A regex for blocks ``prefix{start}`` .. ``prefix{stop - 1}`` followed by ``sep``."""
    return "(" + "|".join(f"{re.escape(prefix)}{i}{sep}" for i in range(start, stop)) + ")"


def param_paths(params):
    """The pytree of "/"-joined path strings, shaped like ``params``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p), params)

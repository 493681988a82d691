"""Filling a model's variables from a flat source, with a report of what went where.

Both import paths use it: a torchvision state_dict (after its keys are mapped to Flax paths)
and an Orbax checkpoint of converted variables.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxvision.errors import ConversionError  # noqa: F401  (raised here; importers find it here)


Path = tuple  # (collection, module, ..., leaf)


def path_str(path: Path) -> str:
    return "/".join(path)


@dataclasses.dataclass
class Report:
    """What a conversion loaded and what it could not place. Keys are source names (torch keys
    or Flax paths); ``missing`` are Flax paths left with their initial values."""

    loaded: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)  # (key, source shape, model shape)
    missing: list = dataclasses.field(default_factory=list)
    ignored: list = dataclasses.field(default_factory=list)  # e.g. num_batches_tracked

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.mismatched or self.missing)

    def problems(self, limit: int = 20) -> str:
        lines = []
        for title, items in (("missing (in the model, not in the weights)", self.missing),
                             ("unexpected (in the weights, not in the model)", self.unexpected),
                             ("shape mismatch (weights vs model)", self.mismatched)):
            if not items:
                continue
            lines.append(f"{len(items)} {title}:")
            for item in items[:limit]:
                if isinstance(item, tuple):
                    item = f"{item[0]}: {tuple(item[1])} vs {tuple(item[2])}"
                lines.append(f"  {item}")
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (f"loaded {len(self.loaded)} tensors; {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches, "
                f"{len(self.ignored)} ignored")
        problems = self.problems()
        return head + ("\n" + problems if problems else "")


def flatten(variables: Mapping) -> dict[Path, Any]:
    return traverse_util.flatten_dict(dict(variables))


def fill(target: Mapping, source: Mapping[Path, np.ndarray], names: Mapping[Path, str],
         report: Report, strict: bool, allow_unexpected: bool = False,
         shown_shape=lambda path, shape: shape) -> dict:
    """Put ``source`` (flat, Flax paths) into ``target`` (a variables tree of arrays, or of
    ShapeDtypeStructs in strict mode). ``names`` gives each source path its user-facing name,
    ``shown_shape`` the shape in the source's own layout (torch's OIHW for kernels).

    Every target leaf must be filled exactly once in strict mode; in partial mode leaves that are
    missing or whose shape differs keep the target's values.
    """
    flat_target = flatten(target)
    out = {}
    for path, ref in flat_target.items():
        name = names.get(path, path_str(path))
        if path not in source:
            report.missing.append(path_str(path))
            out[path] = ref
            continue
        value = source[path]
        if tuple(value.shape) != tuple(ref.shape):
            report.mismatched.append((name, shown_shape(path, tuple(value.shape)),
                                      shown_shape(path, tuple(ref.shape))))
            out[path] = ref
            continue
        out[path] = np.asarray(value, dtype=ref.dtype)
        report.loaded.append(name)
    report.unexpected.extend(names.get(p, path_str(p)) for p in source if p not in flat_target)
    fatal = report.missing or report.mismatched or (report.unexpected and not allow_unexpected)
    if strict and fatal:
        hint = ""
        if len(report.loaded) < len(flat_target) / 2:
            hint = (f"only {len(report.loaded)} of the model's {len(flat_target)} variables found "
                    "a tensor of the right name and shape: are these weights for another model?\n")
        raise ConversionError(
            "weights do not fit the model (strict=True; to load what fits and keep the rest from "
            "init, e.g. a new head: strict=False in Python, --partial (with --num-classes N) for "
            "jaxvision convert, model.pretrained_strict=False in a training config):\n"
            + hint + report.problems())
    return traverse_util.unflatten_dict(out)

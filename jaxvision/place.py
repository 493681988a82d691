"""Pretrained weights placed into a sub-tree of a user's own variables.

A research model holds a jaxvision model as a submodule (``create_model(NAME, ..., name=
"backbone")`` inside its ``nn.compact`` method), so its variables hold the model's own tree under
``params/backbone`` (and ``batch_stats/backbone``).  :func:`place_pretrained` fills exactly that
sub-tree from torchvision (or converted) weights with the converter's own rules: the user's
sub-tree is the target, every leaf of it must be filled once with the right shape (strict), and the
report names every tensor placed, missing, unexpected or mismatched.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence, Union

from flax import traverse_util

from jaxvision.build import build_model, init_variables, map_weights
from jaxvision.convert import merge, store
from jaxvision.convert import torchvision as tv


def _split(path: Union[str, Sequence[str]]) -> tuple[str, ...]:
    parts = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"path must name a submodule, e.g. 'backbone' or 'encoder/backbone'; "
                         f"got {path!r}")
    return parts


def _subtree(tree: Mapping, parts: tuple[str, ...]):
    for part in parts:
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return "the state_dict" if isinstance(source, Mapping) else type(source).__name__


def _shapes(tree: Mapping) -> dict:
    return {path: tuple(leaf.shape) for path, leaf in merge.flatten(tree).items()}


def _differences(have: dict, want: dict, limit: int = 5) -> list[str]:
    lines = [f"{merge.path_str(p)}: {have.get(p, 'absent')} vs {want.get(p, 'absent')}"
             for p in sorted(set(have) | set(want), key=merge.path_str)
             if have.get(p) != want.get(p)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _check_tree(name: str, model, subtrees: Mapping, model_kwargs: Mapping):
    """The sub-tree must be the one ``create_model(name, **model_kwargs)`` makes, leaf for leaf:
    weights of a larger sibling (resnet34 for resnet18) would otherwise fit it."""
    want = _shapes(init_variables(model, name, abstract=True))
    have = _shapes(subtrees)
    if have != want:
        raise merge.ConversionError(
            f"the sub-tree is not {name}({', '.join(f'{k}={v!r}' for k, v in model_kwargs.items())}) "
            "(sub-tree vs model):\n  " + "\n  ".join(_differences(have, want)))


def _refuse_foreign(name: str, sd: Mapping, unexpected: list, model_kwargs: Mapping):
    """A features-only model leaves out the classifier; any other tensor left over means weights
    of another model (resnet34's extra blocks loaded into resnet18)."""
    full_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("features_only",
                                                                       "out_indices")}
    full = build_model(name, **full_kwargs)
    scratch = merge.Report()
    tv.map_state_dict(sd, init_variables(full, name, abstract=True), scratch)
    if scratch.unexpected:
        raise merge.ConversionError(
            f"{len(scratch.unexpected)} tensors belong to no part of {name}: "
            f"{', '.join(scratch.unexpected[:5])}{' ...' if len(scratch.unexpected) > 5 else ''}"
            " -- are these weights for another model?")


def _fill(name: str, source: Any, model, target: Mapping, strict: bool, report: merge.Report,
          model_kwargs: Mapping):
    features_only = bool(getattr(model, "features_only", False))
    if isinstance(source, (str, os.PathLike)) and store.is_store(source):
        _, saved = store.load(source, name)
        return merge.fill(target, merge.flatten(saved), {}, report, strict,
                          allow_unexpected=features_only)
    sd, flat, names = map_weights(name, source, model, target, report)
    if strict and features_only and report.unexpected:
        _refuse_foreign(name, sd, report.unexpected, model_kwargs)
    return merge.fill(target, flat, names, report, strict, allow_unexpected=features_only,
                      shown_shape=tv.torch_shape)


def place_pretrained(variables: Mapping, path: Union[str, Sequence[str]], name: str, source: Any,
                     /, *, strict: bool = True, return_report: bool = False, **model_kwargs):
    """``variables`` with the sub-tree at ``path`` filled from ``source``.

    ``variables``: the user's own variables (``model.init(...)``), holding ``create_model(name,
    **model_kwargs)`` as the submodule at ``path`` ("backbone", or "encoder/backbone" for a
    nested one) in every collection it has (``params``, ``batch_stats``).  ``source``: what
    ``load_pretrained`` reads (a torchvision ``.pth`` or ``.safetensors`` file, a torch module, a
    state_dict, ``timm:ARCH.TAG``) or a directory written by ``jaxvision convert``.  ``model_kwargs`` (``features_only=True``, ``out_indices``, ...)
    describe the submodule as it was created.  Strict by default: a leaf of the sub-tree without
    a tensor of its name and shape is a :class:`~jaxvision.convert.merge.ConversionError` naming
    ``source``; ``strict=False`` keeps the user's values for those.  A ``features_only``
    submodule ignores the classifier's tensors.  The other variables are returned untouched (the
    same arrays).  ``return_report=True``: ``(variables, report)``, the converter's report.
    """
    parts = _split(path)
    subtrees = {col: _subtree(tree, parts) for col, tree in variables.items()}
    subtrees = {col: sub for col, sub in subtrees.items() if sub is not None}
    if not subtrees:
        raise KeyError(f"no submodule {'/'.join(parts)!r} in the variables (collections "
                       f"{sorted(variables)}; top-level names "
                       f"{sorted({k for t in variables.values() for k in t})}); create it with "
                       f"create_model({name!r}, ..., name={parts[-1]!r})")
    model = build_model(name, **model_kwargs)
    report = merge.Report()
    try:
        _check_tree(name, model, subtrees, model_kwargs)
        filled = _fill(name, source, model, subtrees, strict, report, model_kwargs)
    except merge.ConversionError as e:
        where = _source_name(source)
        raise merge.ConversionError(f"{where} -> {'/'.join(parts)} ({name}): "
                                    f"{str(e).removeprefix(where + ': ')}") from None
    out = traverse_util.flatten_dict(dict(variables))
    for col, sub in filled.items():
        for leaf, value in traverse_util.flatten_dict(sub).items():
            out[(col, *parts, *leaf)] = value
    out = traverse_util.unflatten_dict(out)
    return (out, report) if return_report else out


def pretrained_backbone(model, variables: Mapping, source: Any, /, *, strict: bool = True,
                        return_report: bool = False):
    """``variables`` of a dense model (``create_model(HEAD, backbone=NAME)`` or a preset) with
    its backbone filled from ``source``, the classification weights of its backbone's model
    (a torchvision ``.pth``, a state_dict, a converted directory): exactly what
    ``create_model(NAME, pretrained=source, features_only=True)`` gets, placed where the model
    holds its backbone (``model.body``: path, name and kwargs).  Strict, as
    :func:`place_pretrained`: weights of another model are refused, naming ``source``."""
    body = getattr(model, "body", None)
    if body is None or not hasattr(body, "path"):
        raise ValueError(f"{type(model).__name__} declares no backbone (model.body) to place "
                         "classification weights into")
    return place_pretrained(variables, body.path, body.name, source, strict=strict,
                            return_report=return_report, **body.model_kwargs)

"""create_model / load_pretrained: the ways from a name (and weights) to a model."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp

# build_model, init_variables, ... stay reachable as jaxvision.api.NAME
from jaxvision.build import (build_model, dummy_input, init_variables,  # noqa: F401
                             map_weights, weights_file)
from jaxvision.convert import merge, store
from jaxvision.convert import torchvision as tv
from jaxvision.place import pretrained_backbone as place_backbone
from jaxvision.registry import get_spec


def load_pretrained(name: str, state_dict: Any, /, strict: bool = True, *, model=None,
                    return_report: bool = False, **model_kwargs):
    """Flax variables for model ``name`` from a torchvision state_dict.

    ``state_dict``: a mapping of tensors/arrays, a torch module, a ``.pth`` or ``.safetensors``
    path, or timm's weights by name (``timm:resnet50.a1_in1k``).
    ``strict=True`` demands that every tensor and every model variable find its partner with the
    same shape; ``strict=False`` loads what fits and keeps the model's initial values for the
    rest (e.g. a new head).  A ``features_only`` model ignores the classifier's tensors.
    """
    model = build_model(name, **model_kwargs) if model is None else model
    target = init_variables(model, name, abstract=strict)
    report = merge.Report()
    _, source, names = map_weights(name, state_dict, model, target, report)
    variables = merge.fill(target, source, names, report, strict,
                           allow_unexpected=bool(getattr(model, "features_only", False)),
                           shown_shape=tv.torch_shape)
    return (variables, report) if return_report else variables


def torch_state_dict(name: str, variables: Mapping, model=None, **model_kwargs) -> dict:
    """The inverse of ``load_pretrained``: torchvision's state_dict (numpy arrays, torch's key
    names and layouts) of model ``name``'s variables, with the buffers torchvision stores and
    jaxvision computes added back, so that torchvision's model loads it with strict=True."""
    if model is None and get_spec(name).export_state_dict is not None:
        model = build_model(name, **model_kwargs)
    return tv.model_state_dict(name, variables, model)


def _from_store(name: str, path, model, strict: bool):
    _, saved = store.load(path, name)
    target = init_variables(model, name, abstract=strict)
    report = merge.Report()
    source = merge.flatten(saved)
    return merge.fill(target, source, {}, report, strict,
                      allow_unexpected=bool(getattr(model, "features_only", False)))


def create_model(name: str, /, num_classes: Optional[int] = None, pretrained=None,
                 dtype: Any = jnp.float32, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, strict: bool = True,
                 pretrained_backbone=None, **model_kwargs):
    """A ``flax.linen.Module`` for ``name``; with ``pretrained`` (a torchvision ``.pth`` file or a
    directory written by ``jaxvision convert``), ``(module, variables)``.

    ``name`` is positional-only, so ``name=`` is Flax's submodule name: inside a user's
    ``nn.compact`` method, ``create_model("resnet18", features_only=True, name="backbone")`` puts
    the model's variables under ``params/backbone`` (see :func:`jaxvision.place_pretrained`).

    ``pretrained_backbone`` (a dense model: ``create_model("retinanet", backbone=NAME, ...)`` or
    a preset): ``(module, variables)``, freshly initialised, with the backbone filled from NAME's
    classification weights (:func:`jaxvision.pretrained_backbone`)."""
    if pretrained_backbone is not None:
        if pretrained is not None:
            raise ValueError("give pretrained (the whole model) or pretrained_backbone, not both")
        model = build_model(name, num_classes, dtype, features_only, out_indices, **model_kwargs)
        variables = place_backbone(model, init_variables(model, name), pretrained_backbone,
                                   strict=strict)
        return model, variables
    if pretrained is not None and store.is_store(pretrained) and num_classes is None:
        saved_kwargs: Mapping = store.read_meta(pretrained).get("model_kwargs", {})
        num_classes = saved_kwargs.get("num_classes")
    model = build_model(name, num_classes, dtype, features_only, out_indices, **model_kwargs)
    if pretrained is None:
        return model
    if os.path.isdir(os.fspath(pretrained)):
        return model, _from_store(name, pretrained, model, strict)
    return model, load_pretrained(name, pretrained, strict, model=model)

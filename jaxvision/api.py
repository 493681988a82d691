"""create_model / load_pretrained: the ways from a name (and weights) to a model."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax.linen import module as flax_module

from jaxvision.convert import merge, store, timm_hub
from jaxvision.convert import torchvision as tv
from jaxvision.registry import get_spec


def build_model(name: str, /, num_classes: Optional[int] = None, dtype: Any = jnp.float32,
                features_only: bool = False, out_indices: Optional[Sequence[int]] = None,
                **model_kwargs):
    spec = get_spec(name)
    kwargs = {**spec.default_kwargs, **model_kwargs}
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, int) or num_classes < 0):
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got "
                         f"{num_classes!r}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    # Flax parents a module to whichever compact method is running when it is constructed: built
    # inside a user's module, a composed model's parts (a segmenter's backbone) would hang on the
    # user's module instead of the model.  Build detached, then attach the whole under `name`.
    module_name = kwargs.pop("name", None)
    stack = flax_module._context.module_stack
    parent = stack[-1]
    stack.append(None)
    try:
        model = spec.builder(dtype=dtype, features_only=features_only, **kwargs)
    finally:
        stack.pop()
    if parent is None and module_name is None:
        return model
    return model.clone(parent=parent, name=module_name)


def dummy_input(model, name: str, batch: int = 1):
    size = getattr(model, "image_size", None) or get_spec(name).input_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return jnp.zeros((batch, *size, 3), jnp.float32)


def init_variables(model, name: str, rng=None, abstract: bool = False):
    """The model's variables (or only their shapes, ``abstract=True``), created in eval mode."""
    x = dummy_input(model, name)
    rng = jax.random.key(0) if rng is None else rng
    init = jax.jit(lambda r, x: model.init(r, x, train=False))
    return dict(jax.eval_shape(init, rng, x) if abstract else init(rng, x))


def weights_file(name: str, source):
    """``source``, with a ``timm:ARCH.TAG`` name fetched to its local file (for model ``name``
    only: timm's resnet50 weights do not go into a resnext)."""
    if not timm_hub.is_timm(source):
        return source
    _, mapped = timm_hub.parse(source)
    if mapped != name:
        raise merge.ConversionError(f"{source}: weights for jaxvision's {mapped!r}, not {name!r}")
    return timm_hub.fetch(source)[0]


def map_weights(name: str, state_dict: Any, model, target: Mapping, report: merge.Report):
    """``(state_dict, source, names)``: ``state_dict`` read (what ``load_pretrained`` takes),
    adapted to ``name``'s family and mapped onto the leaves of ``target`` (``model``'s variables,
    or a sub-tree of a user's variables that holds it), ready for ``merge.fill``."""
    spec = get_spec(name)
    sd = tv.as_state_dict(weights_file(name, state_dict))
    if timm_hub.is_timm(state_dict):
        sd = timm_hub.to_torchvision(state_dict, sd)
    if spec.adapt_state_dict is not None:
        # an adapter reads and rewrites arrays: it gets numpy ones, whatever the source holds
        sd = spec.adapt_state_dict({k: tv.to_numpy(v) for k, v in sd.items()}, model)
    source, names = tv.map_state_dict(sd, target, report)
    return sd, source, names


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
    meta, saved = store.load(path)
    if meta.get("model") != name:
        raise merge.ConversionError(f"{path}: holds weights for {meta.get('model')!r}, "
                                    f"not {name!r}")
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
        from jaxvision.place import pretrained_backbone as place_backbone

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

"""Building a registered model and mapping weights onto its variables: the steps that
``create_model``/``load_pretrained`` (api.py) and ``place_pretrained`` (place.py) share."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax.linen import module as flax_module

from jaxvision.convert import merge, timm_hub
from jaxvision.convert import torchvision as tv
from jaxvision.layers import rng_lowering
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
    return dict(jax.eval_shape(init, rng, x) if abstract else rng_lowering.call(init, rng, x))


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

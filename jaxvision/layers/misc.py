from typing import Optional

import jax.numpy as jnp


def make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never more than 10%
    below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def flatten_nchw(x):
    """torch.flatten of the NCHW tensor: channel-major, so torch's Linear weights fit."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def transform_input(x):
    """torchvision's ``_transform_input`` of GoogLeNet and Inception v3: ImageNet-normalised
    input -> the (x-0.5)/0.5 scale the ported Google weights were trained with."""
    mean, std = jnp.array((0.485, 0.456, 0.406)), jnp.array((0.229, 0.224, 0.225))
    return x * (std / 0.5).astype(x.dtype) + ((mean - 0.5) / 0.5).astype(x.dtype)


def check_nhwc(x, model: str = "model", channels: Optional[int] = None):
    """Models take NHWC images; torch's NCHW is the usual mistake, so name it.  ``channels``:
    the number of channels the model's weights expect (torchvision's stems take 3), if fixed.

    Shapes are static, so this costs nothing under jit.  A model entry point calls it first.
    """
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"{model}: expected NHWC images (batch, height, width, channels), got "
                         f"shape {shape}")
    if shape[1] in (1, 3, 4) and shape[-1] > 4:
        raise ValueError(f"{model}: expected NHWC images (batch, height, width, channels), got "
                         f"shape {shape}, which looks like NCHW (torch's layout); use "
                         "x.transpose(0, 2, 3, 1)")
    if channels is not None and shape[-1] != channels:
        raise ValueError(f"{model}: expected NHWC images with {channels} channels (batch, height, "
                         f"width, {channels}), got shape {shape}")

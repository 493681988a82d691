"""interpolate against torch.nn.functional.interpolate (values and gradients); the HDC rule."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxvision.layers import interpolate
from jaxvision.layers.dilation import hdc_max_distance, hdc_ok, warn_if_gridding
from tv_parity import assert_close, images, nchw, to_nhwc

IN_SIZES = [(7, 9), (13, 5), (1, 1), (33, 17)]
OUT_SIZES = [(5, 4), (13, 19), (97, 65), (1, 3), (2, 2)]  # odd up- and down-sizes, and 1
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]


def _torch(x, size, mode, ac, grad_weights=None):
    xt = nchw(x).requires_grad_(grad_weights is not None)
    y = F.interpolate(xt, size=size, mode=mode, align_corners=ac)
    if grad_weights is None:
        return to_nhwc(y), None
    (y * nchw(grad_weights)).sum().backward()
    return to_nhwc(y), to_nhwc(xt.grad)


@pytest.mark.parametrize("mode,ac", MODES)
def test_interpolate_matches_torch(mode, ac):
    errs = []
    for i, size_in in enumerate(IN_SIZES):
        x = images((2, *size_in, 3), seed=i)
        for size in OUT_SIZES + [size_in]:
            want, _ = _torch(x, size, mode, ac)
            got = interpolate(jnp.asarray(x), size, mode, bool(ac))
            # nearest copies pixels: exact.  bilinear: torch's weights, float32 rounding
            errs.append(assert_close(got, want, 0.0 if mode == "nearest" else 2e-6,
                                     f"{mode} ac={ac} {size_in}->{size}"))
    assert len(errs) == len(IN_SIZES) * (len(OUT_SIZES) + 1)


@pytest.mark.parametrize("mode,ac", MODES)
def test_interpolate_gradient_matches_torch(mode, ac):
    x = images((1, 13, 5, 2))
    for size in [(5, 4), (31, 17)]:
        w = images((1, *size, 2), seed=size[0])
        _, want = _torch(x, size, mode, ac, grad_weights=w)
        grad = jax.grad(lambda x: jnp.sum(interpolate(x, size, mode, bool(ac)) * w))(
            jnp.asarray(x))
        assert_close(grad, want, 1e-5, f"gradient {mode} ac={ac} -> {size}")


def test_nearest_differs_from_jax_image_resize_where_torch_does():
    """The trap this layer exists for: jax.image.resize picks other pixels at odd sizes."""
    x = images((1, 7, 7, 1))
    want, _ = _torch(x, (5, 5), "nearest", None)
    assert np.array_equal(np.asarray(interpolate(jnp.asarray(x), (5, 5))), want)
    assert not np.array_equal(np.asarray(jax.image.resize(x, (1, 5, 5, 1), "nearest")), want)


def test_interpolate_bad_input():
    with pytest.raises(ValueError, match="NHWC"):
        interpolate(jnp.zeros((3, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match="mode"):
        interpolate(jnp.zeros((1, 4, 4, 1)), (2, 2), "bicubic")
    with pytest.raises(ValueError, match="align_corners"):
        interpolate(jnp.zeros((1, 4, 4, 1)), (2, 2), "nearest", align_corners=True)


def test_hdc_rule():
    assert hdc_ok([1, 2, 5], 3) and not hdc_ok([1, 2, 9], 3)
    # by hand: M_3 = 9, M_2 = max(9 - 4, 9 - 2 * (9 - 2), 2) = 5
    assert hdc_max_distance([1, 2, 9]) == 5 and hdc_max_distance([1, 2, 5]) == 2
    assert not hdc_ok([2, 4, 8], 3)  # the common-factor stack the HDC paper warns about
    assert hdc_ok([1, 2, 9], 5)  # a larger kernel bridges the gap
    with pytest.raises(ValueError, match="positive"):
        hdc_ok([1, 0, 2])


def test_gridding_warns_once_naming_the_layers():
    stack = [("block1.conv", 1), ("block2.conv", 2), ("block3.conv", 9)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not warn_if_gridding(stack)
        assert not warn_if_gridding(stack)  # same stack again: no second warning
        assert warn_if_gridding([("a", 1), ("b", 2), ("c", 5)])
    assert len(caught) == 1
    assert all(n in str(caught[0].message) for n, _ in stack)


def test_building_a_gridding_resnet_warns_once():
    """Multi-Grid (2, 2, 2) on a stride-16 ResNet-50 gives layer4 rates 4, 4, 4 after layer3's
    rate 1 (M_2 = 4 > 3): building the model says so once, naming the layers.  torchvision's
    output-stride-8 chain (..., 1, 2, 2, 2, 2, 2, 2, 4, 4) and Multi-Grid (1, 2, 4) (1, 2, 4, 8)
    pass silently."""
    import jaxvision as jv

    x = jnp.zeros((1, 64, 64, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model = jv.create_model("resnet50", features_only=True, out_indices=(-1,),
                                    replace_stride_with_dilation=(False, False, True),
                                    multi_grid=(2, 2, 2))
            jax.eval_shape(lambda: model.init(jax.random.key(0), x))
        for kw in (dict(replace_stride_with_dilation=(False, True, True)),
                   dict(replace_stride_with_dilation=(False, False, True), multi_grid=(1, 2, 4))):
            jax.eval_shape(lambda: jv.create_model("resnet50", features_only=True, **kw)
                           .init(jax.random.key(0), x))
    grid = [w for w in caught if "grid" in str(w.message)]
    assert len(grid) == 1
    assert all(f"layer4.{j}.conv2 (rate 4)" in str(grid[0].message) for j in range(3))
    assert "layer3.5.conv2 (rate 1)" in str(grid[0].message)

"""Shared layers against torch.nn.functional: pooling sizes and values, BatchNorm updates."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxvision.layers import (BatchNorm, adaptive_avg_pool2d, avg_pool2d, make_divisible,
                              max_pool2d)
from tv_parity import assert_close, images, nchw, to_nhwc

SIZES = [(7, 7), (8, 11), (13, 9), (14, 14)]
POOLS = [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 0), (3, 3, 1)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k,s,p", POOLS)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_matches_torch(size, k, s, p, ceil_mode):
    x = images((2, *size, 3))
    want = F.max_pool2d(nchw(x), k, s, p, ceil_mode=ceil_mode)
    got = max_pool2d(jnp.asarray(x), k, s, p, ceil_mode)
    assert_close(got, to_nhwc(want), 0.0, f"max_pool2d{(k, s, p, ceil_mode)} on {size}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k,s,p", POOLS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("include", [True, False])
def test_avg_pool_matches_torch(size, k, s, p, ceil_mode, include):
    x = images((2, *size, 3))
    want = F.avg_pool2d(nchw(x), k, s, p, ceil_mode=ceil_mode, count_include_pad=include)
    got = avg_pool2d(jnp.asarray(x), k, s, p, ceil_mode, include)
    assert_close(got, to_nhwc(want), 1e-6, f"avg_pool2d{(k, s, p, ceil_mode, include)} on {size}")


@pytest.mark.parametrize("size,out", [((7, 7), 1), ((7, 7), 7), ((9, 13), (7, 7)), ((5, 3), 7),
                                      ((14, 10), (4, 3))])
def test_adaptive_avg_pool_matches_torch(size, out):
    x = images((2, *size, 3))
    want = F.adaptive_avg_pool2d(nchw(x), out)
    assert_close(adaptive_avg_pool2d(jnp.asarray(x), out), to_nhwc(want), 1e-6)


def test_batchnorm_train_step_matches_torch():
    x = images((4, 5, 6, 8)) * 3 + 1
    bn = torch.nn.BatchNorm2d(8, momentum=0.3, eps=1e-3).train()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    variables = {"params": {"scale": bn.weight.detach().numpy().copy(),
                            "bias": bn.bias.detach().numpy().copy()},
                 "batch_stats": {"mean": bn.running_mean.numpy().copy(),
                                 "var": bn.running_var.numpy().copy()}}
    want = bn(nchw(x))
    got, upd = BatchNorm(momentum=0.3, epsilon=1e-3).apply(variables, jnp.asarray(x), train=True,
                                                           mutable=["batch_stats"])
    assert_close(got, to_nhwc(want), 1e-5, "train output")
    assert_close(upd["batch_stats"]["mean"], bn.running_mean, 1e-6, "running_mean")
    assert_close(upd["batch_stats"]["var"], bn.running_var, 1e-6, "running_var (unbiased)")
    bn.eval()
    assert_close(BatchNorm(momentum=0.3, epsilon=1e-3).apply(
        {**variables, "batch_stats": upd["batch_stats"]}, jnp.asarray(x)), to_nhwc(bn(nchw(x))),
        1e-5, "eval output")


@pytest.mark.parametrize("mode", ["auto", "xla"])
def test_batchnorm_train_gradients_match_torch(mode):
    """The hand-written backward of the train-mode BatchNorm (norm._batch_norm_train, the CPU
    default) and jax's own ("xla") against torch's autograd: the input's, scale's and bias's
    gradients through a nonlinear loss."""
    import jax

    from jaxvision.layers import lowering

    x = images((4, 5, 6, 8)) * 3 + 1
    bn = torch.nn.BatchNorm2d(8, momentum=0.3, eps=1e-3).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    xt = nchw(x).clone().requires_grad_(True)
    torch.sin(bn(xt)).pow(2).sum().backward()
    params = {"scale": jnp.asarray(bn.weight.detach().numpy()),
              "bias": jnp.asarray(bn.bias.detach().numpy())}
    stats = {"mean": jnp.zeros(8), "var": jnp.ones(8)}

    def loss(x, params):
        y, _ = BatchNorm(momentum=0.3, epsilon=1e-3).apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) ** 2)

    dx, dp = lowering.jit(jax.grad(loss, argnums=(0, 1)), mode)(jnp.asarray(x), params)
    assert_close(dx, to_nhwc(xt.grad), 1e-5, "input gradient")
    assert_close(dp["scale"], bn.weight.grad, 1e-4, "scale gradient")
    assert_close(dp["bias"], bn.bias.grad, 1e-4, "bias gradient")


def test_make_divisible_like_torchvision():
    from torchvision.models._utils import _make_divisible

    for v in [3, 8, 15.5, 16, 24 * 0.75, 32 * 1.4, 96 * 0.35, 1280 * 1.3, 7]:
        for d in (4, 8):
            assert make_divisible(v, d) == _make_divisible(v, d), (v, d)


def test_batchnorm_normalises_in_at_least_float32():
    """bfloat16 compute normalises in float32; float64 (the parity tests' exact reference run)
    stays float64 instead of being rounded to float32 on the way."""
    import jax

    bn = BatchNorm()
    v = bn.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
    v = {"params": v["params"], "batch_stats": {"mean": jnp.full(3, 0.1), "var": jnp.full(3, 3.0)}}
    assert bn.apply(v, jnp.ones((1, 2, 2, 3), jnp.bfloat16)).dtype == jnp.bfloat16
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        y = BatchNorm(dtype=jnp.float64).apply(v64, jnp.full((1, 2, 2, 3), 1 / 3, jnp.float64))
        assert y.dtype == jnp.float64
        want = (1 / 3 - np.float64(np.float32(0.1))) / np.sqrt(3.0 + 1e-5)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-13)  # float32: 1e-8 off

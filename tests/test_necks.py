"""Necks against torchvision: FPN (every extra block, odd level sizes) and ASPP; SPP/PAN shapes."""
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchASPP

from jaxvision.convert import merge
from jaxvision.convert import torchvision as tv
from jaxvision.necks.aspp import ASPP
from jaxvision.necks.fpn import FPN
from seg_parity import rerandomize_zeros_
from tv_parity import assert_close, images, nchw, randomize_, to_nhwc

# C2..C5 of an odd-sized input (e.g. 200x260 through a ResNet): every level is odd or uneven
LEVELS = [("c2", 32, (25, 33)), ("c3", 48, (13, 17)), ("c4", 64, (7, 9)), ("c5", 2048, (4, 5))]


def load_module(module, state_dict, *inputs):
    """Strict load of a torch module's state_dict into a jaxvision module."""
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
    report = merge.Report()
    source, names = tv.map_state_dict(state_dict, target, report)
    return merge.fill(dict(target), source, names, report, strict=True,
                      shown_shape=tv.torch_shape)


@pytest.mark.parametrize("extra", [None, "pool", "p6p7_256", "p6p7_2048"])
def test_fpn_matches_torchvision(extra):
    torch.manual_seed(0)
    blocks = {None: None, "pool": LastLevelMaxPool(), "p6p7_256": LastLevelP6P7(256, 256),
              "p6p7_2048": LastLevelP6P7(2048, 256)}[extra]
    tfpn = rerandomize_zeros_(FeaturePyramidNetwork([c for _, c, _ in LEVELS], 256, blocks))
    feats = OrderedDict((n, images((1, *s, c), seed=i)) for i, (n, c, s) in enumerate(LEVELS))
    with torch.no_grad():
        want = tfpn(OrderedDict((n, nchw(x)) for n, x in feats.items()))
    kind, _, in_ch = (extra or "").partition("_")
    fpn = FPN(256, extra_blocks=kind or None, extra_in_channels=int(in_ch) if in_ch else None)
    inputs = {n: jnp.asarray(x) for n, x in feats.items()}
    variables = load_module(fpn, tfpn.state_dict(), inputs)
    got = jax.jit(fpn.apply)(variables, inputs)
    assert list(got) == list(want)
    for k in want:
        assert_close(got[k], to_nhwc(want[k]), 1e-4, f"FPN({extra}) {k}")
    if kind == "p6p7":  # P6 reads P5 (256 in) or C5 (2048 in), as torchvision's use_P5
        assert variables["params"]["extra_blocks"]["p6"]["kernel"].shape[2] == int(in_ch)


def test_aspp_matches_torchvision_eval_and_train():
    torch.manual_seed(0)
    taspp = TorchASPP(96, [2, 5, 7], 64)
    rerandomize_zeros_(taspp)
    x = images((2, 15, 21, 96))
    class Wrap(torch.nn.Module):  # randomize_ feeds 3-channel images; ASPP wants 96 channels
        def __init__(self, m):
            super().__init__()
            self.m, self.proj = m, torch.nn.Conv2d(3, 96, 1)

        def forward(self, z):
            return self.m(self.proj(z))

    # realistic statistics: calibrated on a batch, then perturbed (tv_parity.randomize_)
    randomize_(Wrap(taspp), calib_size=(15, 21))
    aspp = ASPP((2, 5, 7), 64)
    variables = load_module(aspp, taspp.state_dict(), jnp.asarray(x))
    with torch.no_grad():
        want = taspp.eval()(nchw(x))
    err = assert_close(jax.jit(aspp.apply)(variables, jnp.asarray(x)), to_nhwc(want), 1e-4,
                       "ASPP eval")
    # train mode without dropout: batch statistics, incl. the image-pooling branch's BN
    taspp.project[3].p = 0.0
    with torch.no_grad():
        want = taspp.train()(nchw(x))
    got, _ = jax.jit(lambda v, x: ASPP((2, 5, 7), 64, dropout=0.0).apply(
        v, x, train=True, mutable=["batch_stats"]))(variables, jnp.asarray(x))
    assert_close(got, to_nhwc(want), 1e-4, "ASPP train")
    assert np.isfinite(err)

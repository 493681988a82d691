"""Shared by the segmentation parity tests: torchvision segmenters with random weights that
prove something (no all-zero tensor, calibrated BatchNorm statistics)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import torch
import torchvision

import jaxvision as jv
from tv_parity import as_float64, assert_parity, images, nchw, randomize_, to_nhwc


def rerandomize_zeros_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """torchvision zero-initialises some tensors (MobileNetV3's conv biases); a parity test on
    zeros compares nothing there, so give each all-zero parameter small random values."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not torch.any(p):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def tv_segmenter(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                           **kwargs)
    rerandomize_zeros_(model, seed)
    return randomize_(model, seed, calib_size=(64, 64)).eval()


def assert_no_zero_tensor(state_dict):
    zero = [k for k, v in state_dict.items()
            if v.dtype.is_floating_point and v.numel() > 1 and not torch.any(v)]
    assert not zero, f"all-zero tensors make parity vacuous: {zero}"


def check_segmenter(name, tmodel, variables, model, sizes, tol=1e-4):
    """Max abs error of each output at each size (``assert_parity``'s bar), one jit."""
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    errs = {}
    for size in sizes:
        x = images((1, *size, 3), seed=size[0])
        with torch.no_grad():
            want = tmodel(nchw(x))
        got = fwd(variables, jnp.asarray(x))
        assert set(got) == set(want), (set(got), set(want))
        f64 = {}

        def truth(k):
            if not f64:
                with torch.no_grad():
                    f64.update(as_float64(tmodel)(nchw(x).double()))
            return to_nhwc(f64[k])

        for k in want:
            assert got[k].shape == (1, *size, want[k].shape[1])
            errs[(size, k)] = assert_parity(f"{name} {k} at {size}", got[k], to_nhwc(want[k]),
                                            lambda k=k: truth(k), tol)
    return errs


def load(name, tmodel, **kwargs):
    model = jv.create_model(name, **kwargs)
    sd = tmodel.state_dict()
    assert_no_zero_tensor({k: v for k, v in sd.items() if "running" not in k})
    return model, jv.load_pretrained(name, sd, model=model)  # strict

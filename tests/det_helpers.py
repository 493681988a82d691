"""Shared by the detection-head tests: run a torchvision head and its jaxvision twin, with the
torch weights converted by the generic converter, on the same NHWC pyramid."""
import numpy as np
import torch
import jax

from jaxvision.convert import merge, torchvision as tv


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def randomize_(module, scale=0.05):
    """torchvision zero-initialises head biases: perturb every tensor so none compares zeros."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def run_both(head, thead, feats):
    """(jaxvision outputs, torchvision outputs) of ``head`` loaded strictly from ``thead``."""
    target = jax.eval_shape(lambda: head.init(jax.random.key(0), feats))
    report = merge.Report()
    source, names = tv.map_state_dict(thead.state_dict(), target, report)
    variables = merge.fill(dict(target), source, names, report, True, shown_shape=tv.torch_shape)
    with torch.no_grad():
        want = thead([nchw(f) for f in feats])
    return jax.jit(head.apply)(variables, feats), want

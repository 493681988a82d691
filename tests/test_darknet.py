"""darknet53 / cspdarknet53 against timm's CspNet modules (the reference implementation of
both papers' backbones): parameter counts, eval and train-mode outputs, stage maps."""
from functools import partial

import numpy as np
import pytest
import timm  # the reference implementation of both backbones (a test dependency)
import torch
import jax
import jax.numpy as jnp

import jaxvision as jv
from jaxvision.train import freeze

from tv_parity import as_float64, assert_parity, randomize_


ACTS = {"darknet53": partial(torch.nn.LeakyReLU, 0.1), "cspdarknet53": "mish"}


@pytest.mark.parametrize("name,paper_millions", [("darknet53", 41.6), ("cspdarknet53", 27.6)])
def test_param_counts(name, paper_millions):
    with torch.device("meta"):
        tm = timm.create_model(name)
    n_timm = sum(p.numel() for p in tm.parameters())
    shapes = jv.api.init_variables(jv.create_model(name), name, abstract=True)
    n_ours = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes["params"]))
    assert n_ours == n_timm == jv.model_info(name).num_params
    assert round(n_ours / 1e6, 1) == paper_millions


@pytest.mark.parametrize("name", ["cspdarknet53",
                                  pytest.param("darknet53", marks=pytest.mark.sweep)])
def test_parity_with_timm(name):
    torch.manual_seed(0)
    tm = timm.create_model(name, act_layer=ACTS[name], num_classes=7)
    randomize_(tm, calib_size=(64, 64))
    tm.eval()
    model = jv.create_model(name, num_classes=7)
    variables = jv.load_pretrained(name, tm.state_dict(), model=model)
    x = np.random.default_rng(0).normal(size=(2, 96, 80, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        want = tm(xt).numpy()
        want_maps = tm.forward_intermediates(xt, intermediates_only=True)
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    fmodel = jv.create_model(name, features_only=True)
    maps = jax.jit(lambda v, x: fmodel.apply(v, x))(variables, x)
    names = [f.name for f in fmodel.feature_info][1:]

    def truth(i):  # float64 maps, for the deep stages where float32 itself drifts past 1e-4
        with torch.no_grad():
            maps64 = as_float64(tm).forward_intermediates(xt.double(), intermediates_only=True)
        return maps64[-len(names):][i].numpy().transpose(0, 2, 3, 1)

    for i, (n, w) in enumerate(zip(names, want_maps[-len(names):])):
        assert_parity(n, np.asarray(maps[n]), w.numpy().transpose(0, 2, 3, 1),
                      lambda i=i: truth(i))
    assert [maps[n].shape[-1] for n in names] == [f.channels for f in fmodel.feature_info[1:]]
    # train mode: batch statistics and the updated running averages
    tm.train()
    with torch.no_grad():
        want_train = tm(xt).numpy()
    got_train, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    np.testing.assert_allclose(got_train, want_train, atol=1e-4)
    rm = tm.state_dict()["stages.2.blocks.0.conv1.bn.running_var"].numpy()
    np.testing.assert_allclose(upd["batch_stats"]["stages_2"]["blocks_0"]["conv1"]["bn"]["var"],
                               rm, rtol=1e-4, atol=1e-5)


def test_declared_stages_freeze():
    model = jv.create_model("cspdarknet53", num_classes=3)
    params = jv.api.init_variables(model, "cspdarknet53", abstract=True)["params"]
    cfg = freeze.default_freeze_config()
    cfg.frozen_stages = 2
    mask = freeze.trainable_mask(params, cfg, "cspdarknet53", model)
    flat = {"/".join(str(k.key) for k in p): v for p, v in
            jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert not any(v for k, v in flat.items() if k.startswith(("stem/", "stages_0/", "stages_1/")))
    assert all(v for k, v in flat.items() if k.startswith(("stages_2/", "head/")))


def test_bad_input():
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: jv.create_model("darknet53").init(jax.random.key(0),
                                                                  jnp.zeros((1, 3, 64, 64))))
    with pytest.raises(ValueError, match="act must be one of"):
        jax.eval_shape(lambda: jv.create_model("darknet53", act="gelu").init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3))))

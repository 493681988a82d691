"""Checks shared by the DenseNet, ShuffleNet, MNASNet, SqueezeNet and AlexNet tests: weights with
no all-zero tensor, and the declared stages against torchvision's module names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.train import freeze, optim
from tv_parity import (as_float64, assert_parity, images, nchw, param_count, randomize_,
                       torch_param_count)


def fill_zero_params_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """torchvision zero-initialises DenseNet's and MNASNet's classifier bias and every SqueezeNet
    bias: a parity test comparing zeros with zeros proves nothing about those tensors."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not torch.any(p):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def assert_no_zero_tensor(state_dict):
    zero = [k for k, v in state_dict.items()
            if v.is_floating_point() and v.numel() and not torch.any(v)]
    assert not zero, f"all-zero tensors would hide layout bugs: {zero}"


def nonzero_tv_model(torch_model, seed=0, calib_size=(128, 128)):
    """A torch model (a name, a zero-argument constructor, or a module) with random weights and
    calibrated, perturbed BatchNorm statistics, and no all-zero tensor.  Names and constructors
    are built after seeding, so the weights do not depend on which tests ran before."""
    torch.manual_seed(seed)
    if isinstance(torch_model, str):
        torch_model = getattr(torchvision.models, torch_model)(weights=None)
    elif not isinstance(torch_model, torch.nn.Module):
        torch_model = torch_model()
    model = randomize_(fill_zero_params_(torch_model, seed), seed, calib_size).eval()
    assert_no_zero_tensor(model.state_dict())
    return model


def _frozen(params, name, model, **kw):
    cfg = freeze.default_freeze_config()
    cfg.update(kw)
    mask = freeze.trainable_mask(params, cfg, name, model)
    paths = jax.tree.leaves(freeze.param_paths(params))
    return {p for p, t in zip(paths, jax.tree.leaves(mask)) if not t}


def check_stages(name, groups, head, size=64, **model_kwargs):
    """``groups[k]``: torchvision parameter-name prefixes of the stem (k = 0) and of stage k;
    ``head``: the classifier's prefix; parameters in neither are in no stage (a final norm or
    conv).  Checks that ``frozen_stages=k`` freezes exactly groups 0..k of our parameters,
    ``linear_probe`` everything but the head, and that an optimizer step leaves the frozen
    leaves bitwise unchanged while the others move."""
    model = jv.create_model(name, **model_kwargs)
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)(**model_kwargs)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    params = params["params"]
    torch_key = {"/".join(module_path(k)[0] + (module_path(k)[1],)): k
                 for k, _ in tv.named_parameters()}
    paths = jax.tree.leaves(freeze.param_paths(params))
    # our weight/bias leaves are kernel/scale: compare by module, then count
    ours = {p.rsplit("/", 1)[0] for p in paths}
    assert ours == {k.rsplit("/", 1)[0] for k in torch_key}
    assert len(paths) == len(torch_key)
    module_key = {k.rsplit("/", 1)[0]: v.rsplit(".", 1)[0] + "." for k, v in torch_key.items()}

    def group(path):
        key = module_key[path.rsplit("/", 1)[0]]
        return next((s for s, prefixes in enumerate(groups) if key.startswith(prefixes)), None)

    n = len(groups) - 1
    for k in range(n + 1):
        assert _frozen(params, name, model, frozen_stages=k) == {
            p for p in paths if group(p) is not None and group(p) <= k}, k
    with pytest.raises(ValueError, match=f"has {n} stages"):
        _frozen(params, name, model, frozen_stages=n + 1)
    assert _frozen(params, name, model, linear_probe=True) == {
        p for p in paths if not module_key[p.rsplit("/", 1)[0]].startswith(head)}

    # one SGD step (momentum, weight decay) with stage 1 and the stem frozen
    cfg = freeze.default_freeze_config()
    cfg.frozen_stages = 1
    trainable = freeze.trainable_mask(params, cfg, name, model)
    # the tree matters, not the sizes: 4 random numbers a leaf keep this fast for densenet121
    leaves, tree = jax.tree.flatten(params)
    values = jax.tree.unflatten(tree, list(jax.random.normal(jax.random.key(1),
                                                             (len(leaves), 4))))
    ocfg = optim.default_optimizer_config()
    ocfg.weight_decay = 0.1
    tx = optim.build_optimizer(ocfg, 0.1, values, trainable)

    @jax.jit
    def step(values):
        grads = jax.tree.map(jnp.ones_like, values)
        updates, _ = tx.update(grads, tx.init(values), values)
        return optax.apply_updates(values, updates)

    new = step(values)
    for t, a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(values), jax.tree.leaves(new)):
        assert np.array_equal(np.asarray(a), np.asarray(b)) == (not t)


def check_param_count(name):
    """Ours (abstract: nothing allocated) equals torchvision's (meta device) and the registry's."""
    with torch.device("meta"):
        expected = torch_param_count(getattr(torchvision.models, name)())
    model = jv.create_model(name)
    assert param_count(jv.api.init_variables(model, name, abstract=True)) == expected
    assert expected == jv.model_info(name).num_params


def check_embedding(name, embed, size=(64, 64)):
    """``num_classes=0`` against ``embed(torch_model, nchw_input)``, torch's own trunk output
    (typically the model with its head replaced by Identity), on random nonzero weights."""
    tmodel = nonzero_tv_model(name, calib_size=size)
    model = jv.create_model(name, num_classes=0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model, strict=False)
    x = images((2, *size, 3))
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x))
    assert got.ndim == 2 and got.shape[0] == 2
    with torch.no_grad():
        want = embed(tmodel, nchw(x))
        return assert_parity(f"{name} embedding", got, want,
                             lambda: embed(as_float64(tmodel), nchw(x).double()))


def check_feature_shapes(name, size=224, **kwargs):
    """Every map of ``features_only`` has the declared channels and ``size / reduction`` sides
    (for the models whose convs are padded), and ``feature_info`` is the registry's."""
    model = jv.create_model(name, features_only=True, **kwargs)
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, size, size, 3)))[0])
    info = model.feature_info
    assert [feats[f.name].shape for f in info] == [
        (1, size // f.reduction, size // f.reduction, f.channels) for f in info]
    if not kwargs:
        assert info == jv.model_info(name).features
    return info


def check_dropout(model, size=32):
    """Train mode draws its dropout masks from the ``'dropout'`` rng (different keys, different
    outputs; the same key, the same output); eval mode uses none.  Returns the variables and the
    eval output.  Use ``norm="batch_eval"`` so that dropout is the only train-mode difference."""
    x = jnp.asarray(images((2, size, size, 3)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    run = jax.jit(lambda key, train: model.apply(variables, x, train=train,
                                                 rngs={"dropout": key}), static_argnums=1)
    a, b = np.asarray(run(jax.random.key(1), True)), np.asarray(run(jax.random.key(2), True))
    assert np.max(np.abs(a - b)) > 0
    np.testing.assert_array_equal(run(jax.random.key(1), True), a)
    evals = np.asarray(run(jax.random.key(1), False))
    np.testing.assert_array_equal(evals, run(jax.random.key(2), False))
    return x, variables, evals

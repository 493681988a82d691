"""Checks shared by the DenseNet, ShuffleNet, MNASNet, SqueezeNet and AlexNet tests: the declared
stages against torchvision's module names, counts, embeddings, feature shapes, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.train import freeze
from family_checks import assert_step_keeps_frozen, frozen
from tv_parity import (as_float64, assert_parity, images, nchw, param_count, tv_model,
                       torch_param_count)


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
        assert frozen(name, params, model, frozen_stages=k) == {
            p for p in paths if group(p) is not None and group(p) <= k}, k
    with pytest.raises(ValueError, match=f"has {n} stages"):
        frozen(name, params, model, frozen_stages=n + 1)
    assert frozen(name, params, model, linear_probe=True) == {
        p for p in paths if not module_key[p.rsplit("/", 1)[0]].startswith(head)}

    assert_step_keeps_frozen(name, params, model, 1)


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
    tmodel = tv_model(name, nonzero=True, calib_size=size)
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
    # variables as an argument: closed over, they would be baked into the program as constants
    # (alexnet's 61M parameters), which XLA then spends its compile time folding
    apply = jax.jit(lambda v, key, train: model.apply(v, x, train=train, rngs={"dropout": key}),
                    static_argnums=2)
    run = lambda key, train: apply(variables, key, train)
    a, b = np.asarray(run(jax.random.key(1), True)), np.asarray(run(jax.random.key(2), True))
    assert np.max(np.abs(a - b)) > 0
    np.testing.assert_array_equal(run(jax.random.key(1), True), a)
    evals = np.asarray(run(jax.random.key(1), False))
    np.testing.assert_array_equal(evals, run(jax.random.key(2), False))
    return x, variables, evals

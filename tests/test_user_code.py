"""jaxvision modules inside a user's own Linen and NNX code: exports, submodule names, weights
placed into a sub-tree, the NNX bridge's training step, and the examples/ scripts."""
import importlib
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

import jaxvision as jv
from jaxvision.convert import store
from jaxvision.convert.merge import ConversionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_necks_and_heads_are_exported_as_the_readme_says():
    from jaxvision import heads, necks
    from jaxvision.necks import ASPP, FPN, PAN, SPP  # noqa: F401  (the README's import)

    for package in (necks, heads):
        for name in package.__all__:
            obj = getattr(package, name)
            assert obj.__module__.startswith(package.__name__ + "."), (name, obj.__module__)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "from jaxvision.necks import FPN" in readme and "jaxvision.heads" in readme


class _Holder(nn.Module):
    model: str
    kwargs: dict

    @nn.compact
    def __call__(self, x):
        return jv.create_model(self.model, name="backbone", **self.kwargs)(x, train=False)


@pytest.mark.parametrize("model,kwargs", [("convnext_tiny", {"features_only": True}),
                                          # a composition: its parts must stay inside it
                                          ("deeplabv3plus_resnet18", {"num_classes": 3})])
def test_create_model_takes_a_flax_submodule_name(model, kwargs):
    x = jnp.zeros((1, 64, 64, 3))
    mine = jax.eval_shape(lambda: _Holder(model, kwargs).init(jax.random.key(0), x))
    alone = jax.eval_shape(lambda: jv.create_model(model, **kwargs).init(jax.random.key(0), x))
    for col in alone:
        assert list(mine[col]) == ["backbone"]
        shapes = lambda t: {k: v.shape for k, v in traverse_util.flatten_dict(t).items()}
        assert shapes(mine[col]["backbone"]) == shapes(alone[col])


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        f = jv.create_model("resnet18", features_only=True, name="backbone")(x, train=train)
        return nn.Dense(3, name="head")(f["layer4"].mean((1, 2)))


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tmp = tmp_path_factory.mktemp("place")
    torch.manual_seed(0)
    paths = {}
    for name in ("resnet18", "resnet34"):
        paths[name] = str(tmp / f"{name}.pth")
        torch.save(getattr(torchvision.models, name)().state_dict(), paths[name])
    mine = jax.jit(lambda: _Net().init(jax.random.key(1), jnp.zeros((1, 32, 32, 3))))()
    _, ref = jv.create_model("resnet18", pretrained=paths["resnet18"], features_only=True)
    assert _same(jv.load_pretrained("resnet18", paths["resnet18"], features_only=True), ref)
    return tmp, paths, mine, ref


def _same(a, b):
    fa, fb = traverse_util.flatten_dict(dict(a)), traverse_util.flatten_dict(dict(b))
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_place_pretrained_fills_the_subtree_as_create_model_would(placed):
    tmp, paths, mine, ref = placed
    out, report = jv.place_pretrained(mine, "backbone", "resnet18", paths["resnet18"],
                                      features_only=True, return_report=True)
    assert all(_same(out[col]["backbone"], ref[col]) for col in ref)
    assert out["params"]["head"]["kernel"] is mine["params"]["head"]["kernel"]  # rest untouched
    assert len(report.loaded) == 100 and report.unexpected == ["fc.weight", "fc.bias"]
    assert not (report.missing or report.mismatched)
    # a directory written by `jaxvision convert` places the same
    store.save(str(tmp / "converted"), "resnet18", ref, {"features_only": True})
    again = jv.place_pretrained(mine, ("backbone",), "resnet18", str(tmp / "converted"),
                                features_only=True)
    assert all(_same(again[col]["backbone"], ref[col]) for col in ref)
    store.save(str(tmp / "labelled_r34"), "resnet34", ref, {"features_only": True})
    with pytest.raises(ConversionError, match=r"labelled_r34 -> backbone \(resnet18\): holds "
                                              r"weights for 'resnet34', not 'resnet18'"):
        jv.place_pretrained(mine, "backbone", "resnet18", str(tmp / "labelled_r34"),
                            features_only=True)


def test_place_pretrained_refuses_weights_or_trees_of_another_model(placed):
    _, paths, mine, _ = placed
    with pytest.raises(ConversionError, match=r"resnet34\.pth -> backbone \(resnet18\): 80 "
                                              r"tensors belong to no part of resnet18"):
        jv.place_pretrained(mine, "backbone", "resnet18", paths["resnet34"], features_only=True)
    with pytest.raises(ConversionError, match=r"the sub-tree is not resnet34\(features_only="
                                              r"True\)[\s\S]*layer1_2/bn1/mean: absent vs"):
        jv.place_pretrained(mine, "backbone", "resnet34", paths["resnet34"], features_only=True)
    with pytest.raises(KeyError, match=r"no submodule 'encoder'.*\['backbone', 'head'\]"):
        jv.place_pretrained(mine, "encoder", "resnet18", paths["resnet18"], features_only=True)


def test_place_pretrained_partial_keeps_the_users_values(placed):
    _, paths, mine, ref = placed
    sd = dict(pytest.importorskip("torch").load(paths["resnet18"]))
    del sd["layer4.1.conv2.weight"]
    with pytest.raises(ConversionError, match=r"the state_dict -> backbone \(resnet18\)[\s\S]*"
                                              r"1 missing[^:]*:\n  params/layer4_1/conv2/kernel"):
        jv.place_pretrained(mine, "backbone", "resnet18", sd, features_only=True)
    out, report = jv.place_pretrained(mine, "backbone", "resnet18", sd, features_only=True,
                                      strict=False, return_report=True)
    assert report.missing == ["params/layer4_1/conv2/kernel"]
    kept = out["params"]["backbone"]["layer4_1"]["conv2"]["kernel"]
    assert np.array_equal(kept, mine["params"]["backbone"]["layer4_1"]["conv2"]["kernel"])
    assert np.array_equal(out["params"]["backbone"]["conv1"]["kernel"],
                          ref["params"]["conv1"]["kernel"])


class _Small(nn.Module):
    """BatchNorm (resnet18's stem and layer1) and dropout, small enough to compile fast."""

    @nn.compact
    def __call__(self, x, train=False):
        f = jv.create_model("resnet18", features_only=True, out_indices=(1,),
                            name="backbone")(x, train=train)
        h = nn.Dropout(0.5, deterministic=not train)(f["layer1"].mean((1, 2)))
        return nn.Dense(3, name="head")(h)


def test_nnx_training_step_equals_the_linen_step():
    from jaxvision.nnx import linen_variables, to_nnx

    model, tx = _Small(), optax.sgd(0.1, momentum=0.9)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    y = jnp.array([0, 1, 2, 0])
    v0 = jax.jit(lambda: model.init(jax.random.key(0), x))()
    loss_of = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def linen_step(v, opt, key):
        def f(p):
            out, upd = model.apply({**v, "params": p}, x, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"])
            return loss_of(out), upd["batch_stats"]
        (loss, stats), g = jax.value_and_grad(f, has_aux=True)(v["params"])
        upd, opt = tx.update(g, opt, v["params"])
        return {"params": optax.apply_updates(v["params"], upd), "batch_stats": stats}, opt, loss

    @nnx.jit
    def nnx_step(m, optimizer, key):
        loss, g = nnx.value_and_grad(
            lambda m: loss_of(m(x, train=True, rngs=nnx.Rngs(dropout=key))))(m)
        optimizer.update(m, g)
        return loss

    m = to_nnx(model, x, rngs=nnx.Rngs(0), variables=v0)
    optimizer = nnx.Optimizer(m, tx, wrt=nnx.Param)
    v, opt = v0, tx.init(v0["params"])
    for i in range(3):
        key = jax.random.key(10 + i)
        # the bridge draws the call's key from the stream: the Linen step gets the same one
        v, opt, linen_loss = linen_step(v, opt, nnx.Rngs(dropout=key).dropout())
        assert abs(float(nnx_step(m, optimizer, key)) - float(linen_loss)) < 1e-6
    got = linen_variables(m)
    for col in ("params", "batch_stats"):
        diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), v[col], got[col])
        assert max(jax.tree.leaves(diff)) < 1e-6, col
    assert not _same(v["batch_stats"], v0["batch_stats"])  # statistics did move
    # eval mode: the same logits as the Linen model's
    np.testing.assert_allclose(m(x), model.apply(v, x), atol=1e-6)
    with pytest.raises(ValueError, match=r"variables do not fit _Small.*head"):
        to_nnx(model, x, rngs=nnx.Rngs(0), variables={**v0, "params": {
            **v0["params"], "head": {"kernel": jnp.zeros((2, 3)), "bias": jnp.zeros(3)}}})


@pytest.mark.parametrize("script", ["custom_head_linen", "custom_head_nnx",
                                    "finetune_torchvision"])
def test_examples_run(script, monkeypatch, capsys):
    if script == "finetune_torchvision":
        pytest.importorskip("torchvision")
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    result = importlib.import_module(script).main(["--tiny"])
    losses = result[0]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert "loss" in capsys.readouterr().out
    if script == "finetune_torchvision":
        assert len(result[2].loaded) == 100

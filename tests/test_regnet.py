"""RegNetX / RegNetY against torchvision."""
import jax
import jax.numpy as jnp
import pytest
import torch
import torchvision
from torchvision.models.regnet import BlockParams

import jaxvision as jv
from jaxvision.convert.torchvision import module_path
from jaxvision.train import freeze
from family_checks import (assert_bfloat16_compute_keeps_float32_params,
                           assert_registry_matches_default_weights, assert_step_keeps_frozen,
                           frozen)
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, fill_zero_params_, images, nchw, param_count, randomize_,
                       torch_param_count, tv_model)

NAMES = [f"regnet_{k}_{s}" for k in "xy" for s in
         ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")] + ["regnet_y_128gf"]
SMALLEST = ["regnet_x_400mf", "regnet_y_400mf"]
# torch graph node -> jaxvision feature name
NODES = {"stem": "stem", **{f"trunk_output.block{k}": f"block{k}" for k in range(1, 5)}}


def _abstract(name, **kwargs):
    model = jv.create_model(name, **kwargs)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


@pytest.fixture
def tv_on_meta(monkeypatch):
    """torchvision's regnet_* on the meta device: BlockParams reads its widths back with
    ``tolist()``, which meta tensors cannot, so that part runs on the CPU."""
    orig = BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return orig(cls, *args, **kwargs)

    monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))

    def build(name):
        with torch.device("meta"):
            return getattr(torchvision.models, name)()
    return build


def test_all_fifteen_are_registered():
    assert jv.list_models("regnet*") == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_widths_and_param_count_equal_torchvision(name, tv_on_meta):
    tmodel = tv_on_meta(name)
    model, variables = _abstract(name)
    assert param_count(variables) == torch_param_count(tmodel) == jv.model_info(name).num_params
    theirs = [(b[0].f.a[0].in_channels, b[0].f.c[0].out_channels, len(b))
              for b in (list(s.children()) for s in tmodel.trunk_output)]
    assert [(w_in, w_out, d) for w_in, w_out, d, _ in model._stages()] == theirs
    assert [f.channels for f in model.feature_info] == [32] + [w for _, w, _ in theirs]


def _parity(name, full):
    tmodel = tv_model(name, nonzero=True)
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)  # strict
    errs = {"eval": check_eval(name, tmodel, variables, model,
                               [(224, 224), (97, 129)] if full else [(97, 129)])}
    errs["features"] = check_features(name, tmodel, NODES, variables, {}, (97, 129))
    if full:
        errs["train"] = check_train(name, tmodel, variables, model, (65, 97))
        errs["grad"] = check_input_grad(name, tmodel, variables, model, (65, 97))
    print(f"{name} max abs error: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


def test_x_400mf_matches_torchvision():
    _parity("regnet_x_400mf", full=True)


def test_y_400mf_matches_torchvision():
    """Y adds squeeze-excitation to X's block; its full check (224, train, gradient) is in the
    sweep, as X's covers every other op."""
    _parity("regnet_y_400mf", full=False)


@pytest.mark.sweep
def test_y_400mf_matches_torchvision_fully():
    _parity("regnet_y_400mf", full=True)


# regnet_y_128gf (645M parameters) needs ~6 GB for torch's copy, ours and a float64 truth: it
# has its own sweep case below, to be run alone
@pytest.mark.sweep
@pytest.mark.parametrize("name", [n for n in NAMES if n not in SMALLEST + ["regnet_y_128gf"]])
def test_every_variant_matches_torchvision(name):
    _small_forward(name)


@pytest.mark.sweep  # run alone: ~2.6 GB a float32 copy, two of them and a float64 truth
def test_y_128gf_forward_matches_torchvision():
    _small_forward("regnet_y_128gf")


def _small_forward(name):
    tmodel = tv_model(name, nonzero=True, calib_size=(64, 64))
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    err = check_eval(name, tmodel, variables, model, [(65, 97)])
    print(f"PARITY {name} max abs error: eval {err:.2e}")


# a small RegNetY: three stages of 1-2 blocks, grouped convs and squeeze-excitation
TINY = dict(depth=4, w_0=16, w_a=16.0, w_m=2.0, group_width=8, se_ratio=0.25)


def test_embedding_and_features_only():
    from torchvision.models.regnet import RegNet

    torch.manual_seed(0)
    tmodel = RegNet(BlockParams.from_init_params(**TINY), num_classes=10)
    tmodel = randomize_(fill_zero_params_(tmodel), calib_size=(64, 64))
    name = "regnet_y_400mf"
    model = jv.create_model(name, num_classes=0, **TINY)
    assert [s[:3] for s in model._stages()] == [
        (b[0].f.a[0].in_channels, b[0].f.c[0].out_channels, len(b)) for b in
        (list(s.children()) for s in tmodel.trunk_output)]
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model, strict=False)
    assert "fc" not in variables["params"]
    x = images((2, 33, 47, 3))
    got = jax.jit(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x))
    assert got.shape == (2, model._stages()[-1][1])
    tmodel.fc = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_parity("tiny RegNetY embedding", got, want,
                  lambda: as_float64(tmodel)(nchw(x).double()).detach())
    fmodel = jv.create_model(name, features_only=True, out_indices=(1, -1))
    feats = jax.eval_shape(lambda: fmodel.init_with_output(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3)))[0])
    assert list(feats) == ["block1", "block4"]
    info = {f.name: f for f in fmodel.feature_info}
    for k, v in feats.items():
        assert v.shape == (1, 224 // info[k].reduction, 224 // info[k].reduction,
                           info[k].channels)
    assert [f.reduction for f in fmodel.feature_info] == [2, 4, 8, 16, 32]
    # stopping early: a model asked for block2 has no parameters past it
    v2 = jax.eval_shape(jv.create_model(name, features_only=True, out_indices=(2,)).init,
                        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert sorted(v2["params"]["trunk_output"]) == ["block1", "block2"]


@pytest.mark.parametrize("name", SMALLEST)
def test_frozen_stages_and_linear_probe_follow_torchvision_modules(name, tv_on_meta):
    model, variables = _abstract(name, num_classes=10)
    params = variables["params"]
    paths = set(jax.tree.leaves(freeze.param_paths(params)))
    # torchvision's own module names through the converter's rule are ours
    assert {p.rsplit("/", 1)[0] for p in paths} == {
        "/".join(module_path(k)[0]) for k, _ in tv_on_meta(name).named_parameters()}
    for k in range(5):
        prefixes = ("stem_",) + tuple(f"trunk_output/block{i}/" for i in range(1, k + 1))
        assert frozen(name, params, model, frozen_stages=k) == {
            p for p in paths if p.startswith(prefixes)}
    assert frozen(name, params, model, linear_probe=True) == paths - {"fc/kernel", "fc/bias"}
    with pytest.raises(ValueError, match=f"{name} has 4 stages"):
        frozen(name, params, model, frozen_stages=5)
    assert_step_keeps_frozen(name, params, model, 2)


@pytest.mark.parametrize("name", NAMES)
def test_registry_matches_torchvision_default_weights(name):
    assert_registry_matches_default_weights(name)


def test_bad_input_is_named():
    model = jv.create_model("regnet_x_400mf")
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="Invalid RegNet settings"):
        jax.eval_shape(jv.create_model("regnet_x_400mf", w_0=20).init, jax.random.key(0),
                       jnp.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="norm must be one of"):
        jax.eval_shape(jv.create_model("regnet_x_400mf", norm="layer").init, jax.random.key(0),
                       jnp.zeros((1, 64, 64, 3)))


def test_bfloat16_compute_keeps_float32_params():
    assert_bfloat16_compute_keeps_float32_params("regnet_y_400mf")

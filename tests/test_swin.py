"""Swin Transformer V1/V2 against torchvision: parameter counts, eval logits and stage maps at
two input sizes (one not a multiple of the window or of 32: padding, masks and odd patch
merging), train mode and input gradients, stochastic depth, freezing, buffers, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer as TorchSwin,
                                                 SwinTransformerBlockV2)
from torchvision.ops import StochasticDepth as TorchStochasticDepth

import jaxvision as jv
from jaxvision.convert import ConversionError
from tv_parity import check_eval, images, max_err, nchw
from tv_randomize import (STAGE_RX, assert_no_constant_tensor, check_bfloat16, check_eval_and_maps,
                          check_freezing, check_frozen_leaves_bitwise, check_stochastic_depth,
                          check_train_and_grad_no_bn, count_params_eval_shape, meta_param_count,
                          randomize_params_)

NAMES = ["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"]
NODES = {"features.1": "stage1", "features.3": "stage2", "features.5": "stage3",
         "features.7": "stage4"}


def blocks_of(depths):
    """Our top-level module ending each stage (its last block)."""
    return {f"features_{2 * s + 1}_{d - 1}": f"stage{s + 1}" for s, d in enumerate(depths)}


def torch_swin(name, seed=0, no_drop=False, **kwargs):
    torch.manual_seed(seed)
    tmodel = randomize_params_(getattr(torchvision.models, name)(weights=None, **kwargs), seed)
    if no_drop:  # torchvision's swin_* builders refuse stochastic_depth_prob=...: set it after
        for m in tmodel.modules():
            if isinstance(m, TorchStochasticDepth):
                m.p = 0.0
    return tmodel


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
    expected = meta_param_count(name)
    assert count_params_eval_shape(jv.create_model(name), (64, 64)) == expected
    assert jv.model_info(name).num_params == expected


@pytest.mark.parametrize("name,size", [("swin_t", 224),
                                       pytest.param("swin_v2_t", 256, marks=pytest.mark.sweep)])
def test_full_size_parity_eval_maps_train_gradient(name, size):
    tmodel = torch_swin(name, no_drop=True)
    assert_no_constant_tensor(tmodel)
    model = jv.create_model(name, stochastic_depth_prob=0.0)
    variables, report = jv.load_pretrained(name, tmodel.state_dict(), model=model,
                                           return_report=True)
    # every tensor loaded but the position buffers, which are computed (and checked) instead
    buffers = [k for k in tmodel.state_dict() if k.endswith(("relative_position_index",
                                                             "relative_coords_table"))]
    assert report.ok and len(report.loaded) == len(tmodel.state_dict()) - len(buffers)
    assert len(buffers) == (24 if "v2" in name else 12)
    blocks = blocks_of(model.depths)
    # 193x257: every stage map is padded to the window, stage 1's merge sees odd sides
    errs = [check_eval_and_maps(name, tmodel, variables, model, hw, NODES, blocks, nhwc=True)
            for hw in [(size, size), (193, 257)]]
    train, grad = check_train_and_grad_no_bn(name, tmodel, variables, model, (100, 72))
    print(f"PARITY {name} eval {max(max(e.values()) for e in errs):.2g} train {train:.2g} "
          f"grad_rel {grad:.2g}")


def _twin(v2=False, sd=0.5, num_classes=10, window=(4, 4), **kwargs):
    """A small Swin built from torchvision's classes, on both sides."""
    arch = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                window_size=list(window), stochastic_depth_prob=sd, num_classes=num_classes)
    if v2:
        arch.update(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    torch.manual_seed(0)
    tmodel = randomize_params_(TorchSwin(**arch))
    name = "swin_v2_t" if v2 else "swin_t"
    model = jv.create_model(name, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                            window_size=tuple(window), stochastic_depth_prob=sd,
                            num_classes=num_classes, **kwargs)
    return tmodel, model, jv.load_pretrained(name, tmodel.state_dict(), model=model)


@pytest.mark.parametrize("v2", [False, True])
def test_windows_shifts_and_padding_on_small_twins(v2):
    """Rectangular windows and sizes where the shift survives along one axis only (torch's
    mask slices then degenerate along the other): cheap to compile, so many shapes."""
    tmodel, model, variables = _twin(v2=v2, sd=0.0, window=(3, 5))
    fwd = jax.jit(model.apply)
    # 9x5 patches: the shift survives along H only; 3x11: along W only (both padded)
    for hw in [(36, 20), (12, 44)]:
        x = images((2, *hw, 3), seed=hw[0])
        with torch.no_grad():
            want = tmodel(nchw(x)).numpy()
        assert max_err(fwd(variables, jnp.asarray(x)), want) < 1e-4, hw


def test_stochastic_depth_draws_from_the_dropout_rng():
    tmodel, model, variables = _twin(sd=0.5)
    x = jnp.asarray(images((4, 32, 32, 3)))
    check_stochastic_depth(tmodel, model, variables, x)


def test_features_only_and_pooled_embedding():
    tmodel, model, variables = _twin(v2=True, sd=0.0)
    x = jnp.asarray(images((2, 36, 44, 3)))
    fmodel = jv.create_model("swin_v2_t", embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                             window_size=(4, 4), features_only=True)
    assert [(f.name, f.channels, f.reduction) for f in fmodel.feature_info] == [
        ("stage1", 16, 4), ("stage2", 32, 8)]
    maps = jax.jit(fmodel.apply)(variables, x)
    with torch.no_grad():
        want = tmodel.features(nchw(np.asarray(x)))  # NHWC, sides rounded up: 9x11 -> 5x6
    assert maps["stage2"].shape == (2, 5, 6, 32)
    assert max_err(maps["stage2"], want.numpy()) < 1e-4
    assert [f.channels for f in jv.create_model("swin_b").feature_info] == [128, 256, 512, 1024]

    pooled = jv.create_model("swin_v2_t", embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                             window_size=(4, 4), num_classes=0)
    v, report = jv.load_pretrained("swin_v2_t", tmodel.state_dict(), model=pooled, strict=False,
                                   return_report=True)
    assert not report.missing and set(report.unexpected) == {"head.weight", "head.bias"}
    tmodel.head = torch.nn.Identity()
    with torch.no_grad():
        assert max_err(jax.jit(pooled.apply)(v, x), tmodel(nchw(np.asarray(x))).numpy()) < 1e-4


def test_frozen_stages_and_linear_probe_follow_declared_stages():
    model = jv.create_model("swin_v2_t")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    with torch.device("meta"):
        tmodel = torchvision.models.swin_v2_t()

    def stage(key):  # features.0 stem; features.{2k-1} stage k, features.{2k-2} its merging
        m = STAGE_RX.match(key)
        return None if not m else (0 if m.group(1) == "0" else int(m.group(1)) // 2 + 1)

    assert check_freezing("swin_v2_t", model, params, tmodel, stage,
                          lambda k: k.startswith("head.")) == 4
    _, twin, variables = _twin(v2=True, sd=0.0)
    x = jnp.asarray(images((2, 32, 32, 3)))
    assert check_frozen_leaves_bitwise("swin_v2_t", twin, variables, x, frozen_stages=1) > 0


def test_buffers_are_checked_not_loaded():
    tmodel, model, _ = _twin(v2=True, window=(4, 4))
    other = _twin(v2=True, window=(3, 3))[1]
    with pytest.raises(ConversionError, match="relative_coords_table.*another window size"):
        jv.load_pretrained("swin_v2_t", tmodel.state_dict(), model=other)


def test_bfloat16_compute_keeps_float32_params():
    tmodel, _, _ = _twin(v2=True, sd=0.0)
    model = jv.create_model("swin_v2_t", embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                            window_size=(4, 4), num_classes=10, dtype=jnp.bfloat16)
    variables = jv.load_pretrained("swin_v2_t", tmodel.state_dict(), model=model)
    check_bfloat16(tmodel, model, variables, images((2, 32, 32, 3), seed=2))


def test_bad_input_is_named():
    model = jv.create_model("swin_t")
    with pytest.raises(ValueError, match="at least the patch size.*got shape \\(1, 3, 64, 3\\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 64, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_spec_follows_torchvision_weights_meta(name):
    w = torchvision.models.get_model_weights(name).DEFAULT
    preset = w.transforms()
    spec = jv.model_info(name)
    assert spec.input_size == tuple(w.meta["min_size"])
    assert (spec.resize_size, spec.crop_size) == (preset.resize_size[0], preset.crop_size[0])
    assert spec.interpolation == preset.interpolation.value == "bicubic"


@pytest.mark.sweep
@pytest.mark.parametrize("name", ["swin_s", "swin_b", "swin_v2_s", "swin_v2_b"])
def test_other_variants_small_forward(name):
    tmodel = torch_swin(name, no_drop=True)
    model = jv.create_model(name, stochastic_depth_prob=0.0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    err = check_eval(name, tmodel, variables, model, [(64, 96)])
    train, grad = check_train_and_grad_no_bn(name, tmodel, variables, model, (64, 96))
    print(f"PARITY {name} eval {err:.2e} train {train:.2e} grad_rel {grad:.2e}")

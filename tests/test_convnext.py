"""ConvNeXt against torchvision: parameter counts, eval/feature/train/gradient parity at two
input sizes, stochastic depth, freezing by declared stages, strict conversion, bad input."""
import jax
import jax.numpy as jnp
import pytest
import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt as TorchConvNeXt

import jaxvision as jv
from tv_parity import check_eval, images, max_err, nchw
from tv_randomize import (STAGE_RX, assert_no_constant_tensor, check_bfloat16, check_eval_and_maps,
                          check_freezing, check_frozen_leaves_bitwise, check_stochastic_depth,
                          check_train_and_grad_no_bn, count_params_eval_shape, meta_param_count,
                          randomize_params_)

NAMES = ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"]
SIZES = [(224, 224), (193, 257)]  # 193 and 257 are not multiples of 32
NODES = {"features.1": "stage1", "features.3": "stage2", "features.5": "stage3",
         "features.7": "stage4"}


def torch_convnext(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_params_(getattr(torchvision.models, name)(weights=None, **kwargs), seed)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
    expected = meta_param_count(name)
    assert count_params_eval_shape(jv.create_model(name), (224, 224)) == expected
    assert jv.model_info(name).num_params == expected


@pytest.fixture(scope="module")
def tiny():
    # stochastic depth 0 on both sides: train mode is then deterministic and comparable
    tmodel = torch_convnext("convnext_tiny", stochastic_depth_prob=0.0)
    assert_no_constant_tensor(tmodel)
    model = jv.create_model("convnext_tiny", stochastic_depth_prob=0.0)
    variables, report = jv.load_pretrained("convnext_tiny", tmodel.state_dict(), model=model,
                                           return_report=True)
    assert report.ok and len(report.loaded) == len(tmodel.state_dict())
    return tmodel, model, variables


def test_convnext_tiny_eval_maps_train_gradient(tiny):
    tmodel, model, variables = tiny
    blocks = {"features_1_2": "stage1", "features_3_2": "stage2", "features_5_8": "stage3",
              "features_7_2": "stage4"}
    errs = [check_eval_and_maps("convnext_tiny", tmodel, variables, model, size, NODES, blocks)
            for size in SIZES]
    train, grad = check_train_and_grad_no_bn("convnext_tiny", tmodel, variables, model,
                                             (100, 72))
    print(f"PARITY convnext_tiny eval {max(max(e.values()) for e in errs):.2g} "
          f"train {train:.2g} grad_rel {grad:.2g}")


def _twin(sd=0.5, num_classes=10):
    """A two-stage ConvNeXt small enough to run many times, built from the same classes."""
    setting = ((16, 32, 2), (32, None, 2))
    torch.manual_seed(0)
    tmodel = randomize_params_(TorchConvNeXt([CNBlockConfig(*s) for s in setting],
                                             stochastic_depth_prob=sd, num_classes=num_classes))
    model = jv.create_model("convnext_tiny", block_setting=setting, stochastic_depth_prob=sd,
                            num_classes=num_classes)
    return tmodel, model, jv.load_pretrained("convnext_tiny", tmodel.state_dict(), model=model)


def test_stochastic_depth_draws_from_the_dropout_rng():
    tmodel, model, variables = _twin(sd=0.5)
    x = jnp.asarray(images((4, 64, 64, 3)))
    check_stochastic_depth(tmodel, model, variables, x)


def test_num_classes_zero_and_features_only_contract():
    tmodel, _, _ = _twin(sd=0.0)
    pooled = jv.create_model("convnext_tiny", block_setting=((16, 32, 2), (32, None, 2)),
                             num_classes=0)
    v, report = jv.load_pretrained("convnext_tiny", tmodel.state_dict(), model=pooled,
                                   strict=False, return_report=True)
    assert not report.missing and set(report.unexpected) == {"classifier.2.weight",
                                                             "classifier.2.bias"}
    x = images((2, 64, 64, 3))
    tmodel.classifier[2] = torch.nn.Identity()
    with torch.no_grad():
        want = tmodel(nchw(x)).numpy()
    assert max_err(jax.jit(pooled.apply)(v, jnp.asarray(x)), want) < 1e-4

    model = jv.create_model("convnext_base", features_only=True, out_indices=(0, -1))
    assert [(f.name, f.channels, f.reduction) for f in model.feature_info] == [
        ("stage1", 128, 4), ("stage2", 256, 8), ("stage3", 512, 16), ("stage4", 1024, 32)]
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                        jnp.zeros((1, 193, 257, 3)))[0])
    assert {k: v.shape for k, v in out.items()} == {"stage1": (1, 48, 64, 128),
                                                    "stage4": (1, 6, 8, 1024)}
    early = jv.create_model("convnext_tiny", features_only=True, out_indices=(1,))
    params = jax.eval_shape(early.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    assert max(int(k.split("_")[1]) for k in params) == 3 and "classifier_2" not in params


def test_frozen_stages_and_linear_probe_follow_declared_stages():
    model = jv.create_model("convnext_tiny")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    with torch.device("meta"):
        tmodel = torchvision.models.convnext_tiny()

    def stage(key):  # features.0 stem; features.{2k-1} stage k, features.{2k-2} its downsampler
        m = STAGE_RX.match(key)
        if not m:
            return None
        i = int(m.group(1))
        return 0 if i == 0 else i // 2 + 1

    assert check_freezing("convnext_tiny", model, params, tmodel, stage,
                          lambda k: k.startswith("classifier.")) == 4
    assert model.stage_layout.stage_of("features_2_1/kernel") == 2

    _, twin, variables = _twin(sd=0.0)
    x = jnp.asarray(images((2, 64, 64, 3)))
    assert check_frozen_leaves_bitwise("convnext_tiny", twin, variables, x, frozen_stages=1) > 0


def test_bfloat16_compute_keeps_float32_params():
    tmodel, _, _ = _twin(sd=0.0)
    model = jv.create_model("convnext_tiny", block_setting=((16, 32, 2), (32, None, 2)),
                            num_classes=10, dtype=jnp.bfloat16)
    variables = jv.load_pretrained("convnext_tiny", tmodel.state_dict(), model=model)
    check_bfloat16(tmodel, model, variables, images((2, 64, 64, 3), seed=2))


def test_bad_input_is_named():
    model = jv.create_model("convnext_tiny")
    with pytest.raises(ValueError, match="sides of at least 32.*got shape \\(1, 31, 64, 3\\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 31, 64, 3)))
    with pytest.raises(ValueError, match="3 channels"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 1)))


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_small", "convnext_base",
                                  "convnext_large"])
def test_spec_follows_torchvision_weights_meta(name):
    w = torchvision.models.get_model_weights(name).DEFAULT
    preset = w.transforms()
    spec = jv.model_info(name)
    assert (spec.resize_size, spec.crop_size) == (preset.resize_size[0], preset.crop_size[0])
    assert spec.interpolation == preset.interpolation.value
    assert spec.num_params == w.meta["num_params"]


@pytest.mark.sweep
@pytest.mark.parametrize("name", NAMES[1:])
def test_other_variants_small_forward(name):
    tmodel = torch_convnext(name, stochastic_depth_prob=0.0)
    model = jv.create_model(name, stochastic_depth_prob=0.0)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    err = check_eval(name, tmodel, variables, model, [(64, 96)])
    train, grad = check_train_and_grad_no_bn(name, tmodel, variables, model, (64, 96))
    print(f"PARITY {name} eval {err:.2e} train {train:.2e} grad_rel {grad:.2e}")

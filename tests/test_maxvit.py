"""MaxViT against torchvision: parameter count, eval logits and every stage map at 224 (its
only size unless built for another), train mode with running statistics and input gradient,
stochastic depth, freezing, buffers, sizes it refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.maxvit import MaxVit as TorchMaxVit
from torchvision.ops import StochasticDepth as TorchStochasticDepth

import jaxvision as jv
from jaxvision.convert import ConversionError
from tv_parity import images, max_err, nchw, randomize_
from tv_randomize import (assert_no_constant_tensor, check_bfloat16, check_eval_and_maps,
                          check_freezing, check_frozen_leaves_bitwise, check_stochastic_depth,
                          check_train_and_grad_bn, count_params_eval_shape, meta_param_count,
                          randomize_params_)

NODES = {"stem": "stem", "blocks.0": "stage1", "blocks.1": "stage2", "blocks.2": "stage3",
         "blocks.3": "stage4"}
BLOCKS = {"stem_1_0": "stem", "blocks_0": "stage1", "blocks_1": "stage2", "blocks_2": "stage3",
          "blocks_3": "stage4"}


def _randomize(tmodel, size):
    # random weights and norms first, then BatchNorm statistics calibrated on them
    return randomize_(randomize_params_(tmodel), 0, calib_size=size)


def test_param_count_equals_torchvision():
    expected = meta_param_count("maxvit_t")
    assert count_params_eval_shape(jv.create_model("maxvit_t"), (224, 224)) == expected
    assert jv.model_info("maxvit_t").num_params == expected == 30_919_624


@pytest.mark.sweep  # ~100 s; the suite compares the small twins (same classes) with torch
def test_full_size_parity_eval_maps_train_gradient():
    torch.manual_seed(0)
    tmodel = _randomize(torchvision.models.maxvit_t(), (224, 224))
    for m in tmodel.modules():  # the builder refuses stochastic_depth_prob=...: set it after
        if isinstance(m, TorchStochasticDepth):
            m.p = 0.0
    assert_no_constant_tensor(tmodel)
    model = jv.create_model("maxvit_t", stochastic_depth_prob=0.0)
    variables, report = jv.load_pretrained("maxvit_t", tmodel.state_dict(), model=model,
                                           return_report=True)
    buffers = [k for k in tmodel.state_dict() if k.endswith("relative_position_index")]
    assert len(buffers) == 2 * 11 and report.ok
    assert len(report.loaded) + len(report.ignored) == len(tmodel.state_dict()) - len(buffers)
    ev = check_eval_and_maps("maxvit_t", tmodel, variables, model, (224, 224), NODES, BLOCKS)
    tr = check_train_and_grad_bn("maxvit_t", tmodel, variables, model, (224, 224))
    print(f"PARITY maxvit_t eval {max(ev.values()):.2g} train {tr['train']:.2g} "
          f"stats {tr['stats']:.2g} grad_rel {tr['grad']:.2g}")


TWIN = dict(stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
            head_dim=8)


def _twin(sd=0.5, num_classes=10, **kwargs):
    """A small MaxVit built from the same classes on both sides: 32x32 input, grids 8 and 4."""
    torch.manual_seed(0)
    tmodel = _randomize(TorchMaxVit(input_size=(32, 32), stochastic_depth_prob=sd,
                                    num_classes=num_classes, **TWIN), (32, 32))
    model = jv.create_model("maxvit_t", input_size=(32, 32), stochastic_depth_prob=sd,
                            num_classes=num_classes, **{**TWIN, **kwargs})
    return tmodel, model, jv.load_pretrained("maxvit_t", tmodel.state_dict(), model=model)


def test_stochastic_depth_draws_from_the_dropout_rng():
    tmodel, model, variables = _twin(sd=0.5)
    x = jnp.asarray(images((4, 32, 32, 3)))
    check_stochastic_depth(tmodel, model, variables, x)


def test_features_only_and_pooled_embedding():
    tmodel, model, variables = _twin(sd=0.0)
    x = jnp.asarray(images((2, 32, 32, 3)))
    fmodel = jv.create_model("maxvit_t", input_size=(32, 32), features_only=True, **TWIN)
    assert [(f.name, f.channels, f.reduction) for f in fmodel.feature_info] == [
        ("stem", 8, 2), ("stage1", 16, 4), ("stage2", 32, 8)]
    maps = jax.jit(fmodel.apply)(variables, x)
    with torch.no_grad():
        want = tmodel.blocks[1](tmodel.blocks[0](tmodel.stem(nchw(np.asarray(x)))))
    assert maps["stage2"].shape == (2, 4, 4, 32)
    assert max_err(maps["stage2"], want.numpy().transpose(0, 2, 3, 1)) < 1e-4

    pooled = jv.create_model("maxvit_t", input_size=(32, 32), num_classes=0, **TWIN)
    v, report = jv.load_pretrained("maxvit_t", tmodel.state_dict(), model=pooled, strict=False,
                                   return_report=True)
    assert not report.missing and report.unexpected == ["classifier.5.weight"]
    tmodel.classifier[5] = torch.nn.Identity()
    with torch.no_grad():
        assert max_err(jax.jit(pooled.apply)(v, x), tmodel(nchw(np.asarray(x))).numpy()) < 1e-4


def test_frozen_stages_and_linear_probe_follow_declared_stages():
    model = jv.create_model("maxvit_t")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    with torch.device("meta"):
        tmodel = torchvision.models.maxvit_t()

    def stage(key):
        if key.startswith("stem."):
            return 0
        return int(key.split(".")[1]) + 1 if key.startswith("blocks.") else None

    assert check_freezing("maxvit_t", model, params, tmodel, stage,
                          lambda k: k.startswith("classifier.")) == 4
    _, twin, variables = _twin(sd=0.0)
    x = jnp.asarray(images((2, 32, 32, 3)))
    assert check_frozen_leaves_bitwise("maxvit_t", twin, variables, x, frozen_stages=1) > 0


def test_sizes_it_refuses_and_buffers_checked():
    with pytest.raises(ValueError, match="Input size \\(4, 4\\) of block 3 is not divisible by "
                                         "partition size 7"):
        jax.eval_shape(jv.create_model("maxvit_t", input_size=(112, 112)).init,
                       jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
    with pytest.raises(ValueError, match="224x224x3 .*input_size.*got shape \\(1, 448, 448, 3\\)"):
        jax.eval_shape(jv.create_model("maxvit_t").init, jax.random.key(0),
                       jnp.zeros((1, 448, 448, 3)))
    # torchvision accepts input_size=448 (grids 112..14, all multiples of 7): so do we
    out = jax.eval_shape(jv.create_model("maxvit_t", input_size=(448, 448)).init,
                         jax.random.key(0), jnp.zeros((1, 448, 448, 3)))
    assert count_params_eval_shape(jv.create_model("maxvit_t", input_size=(448, 448)),
                                   (448, 448)) == 30_919_624 and out
    tmodel, _, _ = _twin()
    with pytest.raises(ConversionError, match="relative_position_index.*another partition"):
        jv.load_pretrained("maxvit_t", tmodel.state_dict(), model=jv.create_model(
            "maxvit_t", input_size=(48, 48), **{**TWIN, "partition_size": 3}))


def test_bfloat16_compute_keeps_float32_params():
    tmodel, _, _ = _twin(sd=0.0)
    model = jv.create_model("maxvit_t", input_size=(32, 32), stochastic_depth_prob=0.0,
                            num_classes=10, dtype=jnp.bfloat16, **TWIN)
    variables = jv.load_pretrained("maxvit_t", tmodel.state_dict(), model=model)
    check_bfloat16(tmodel, model, variables, images((2, 32, 32, 3), seed=2))


def test_spec_follows_torchvision_weights_meta():
    w = torchvision.models.MaxVit_T_Weights.DEFAULT
    preset = w.transforms()
    spec = jv.model_info("maxvit_t")
    assert spec.input_size == tuple(w.meta["min_size"]) == (224, 224)
    assert (spec.resize_size, spec.crop_size) == (preset.resize_size[0], preset.crop_size[0])
    assert spec.interpolation == preset.interpolation.value == "bicubic"

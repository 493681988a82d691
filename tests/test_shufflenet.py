"""ShuffleNet V2 against torchvision: counts for every variant, full parity for x0_5, one small
forward for the others, the channel shuffle against torch's own, and the declared stages."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models.shufflenetv2 import channel_shuffle as torch_shuffle

import jaxvision as jv
from jaxvision.models.shufflenetv2 import channel_shuffle
from tv_parity import (as_float64, assert_parity, check_eval, check_features, check_input_grad,
                       check_train, images, nchw, to_nhwc, tv_model)
from zoo_checks import check_embedding, check_feature_shapes, check_param_count, check_stages

NAMES = ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
NODES = {"conv1": "conv1", "maxpool": "maxpool", "stage2": "stage2", "stage3": "stage3",
         "conv5": "conv5"}


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_torchvision(name):
    check_param_count(name)


def test_channel_shuffle_is_torchs():
    x = images((2, 3, 5, 12))  # NHWC, 12 channels in 2 and in 3 groups
    for g in (2, 3):
        want = to_nhwc(torch_shuffle(nchw(x), g))
        np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x), g), want)


def test_parity_with_torchvision():
    name = "shufflenet_v2_x0_5"
    tmodel = tv_model(name, nonzero=True)
    model = jv.create_model(name)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(224, 224), (193, 257)])
    check_features(name, tmodel, NODES, variables, {}, (193, 257))
    check_train(name, tmodel, variables, model, (97, 129))
    check_input_grad(name, tmodel, variables, model, (97, 129))


@pytest.mark.sweep  # every variant's small forward: the exhaustive part
@pytest.mark.parametrize("name", NAMES[1:])
def test_wider_variants_small_forward_and_embedding(name):
    def pooled_conv5(tmodel, x):
        tmodel.fc = torch.nn.Identity()
        return tmodel(x)

    check_embedding(name, pooled_conv5)


def test_features_only_info_and_out_indices():
    for name in ("shufflenet_v2_x0_5", "shufflenet_v2_x2_0"):
        assert [f.reduction for f in check_feature_shapes(name)] == [2, 4, 8, 16, 32]
    model = jv.create_model("shufflenet_v2_x1_0", features_only=True, out_indices=(2, 3))
    feats = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
    assert {k: v.shape[-1] for k, v in feats.items()} == {"stage2": 116, "stage3": 232}


def test_frozen_stages_and_linear_probe():
    check_stages("shufflenet_v2_x0_5", [("conv1.",), ("stage2.",), ("stage3.",), ("stage4.",)],
                 head="fc.")


def test_frozen_batchnorm_keeps_its_statistics():
    # torchvision's ShuffleNetV2 takes no norm_layer: its eval mode is FrozenBatchNorm2d's output
    ref = tv_model("shufflenet_v2_x0_5", nonzero=True, calib_size=(64, 64))
    model = jv.create_model("shufflenet_v2_x0_5", norm="frozen")
    variables = jv.load_pretrained("shufflenet_v2_x0_5", ref.state_dict(), model=model)
    x = jnp.asarray(images((2, 64, 64, 3)))
    run = jax.jit(lambda v, x, train: model.apply(v, x, train=train, mutable=["batch_stats"]),
                  static_argnums=2)
    (out_train, upd), (out_eval, _) = run(variables, x, True), run(variables, x, False)
    np.testing.assert_array_equal(out_train, out_eval)
    jax.tree.map(np.testing.assert_array_equal, upd["batch_stats"], variables["batch_stats"])
    with torch.no_grad():
        want = ref(nchw(np.asarray(x)))
    assert_parity("shufflenet frozen BN", out_eval, want,
                  lambda: as_float64(ref)(nchw(np.asarray(x)).double()).detach())

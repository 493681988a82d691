"""``feature_info`` describes the instance: channels and reductions equal the maps it returns."""
import jax
import jax.numpy as jnp
import pytest

import jaxvision as jv

CASES = [
    ("resnet18", {}), ("resnet50", {}), ("wide_resnet50_2", {}),
    ("resnet50", {"replace_stride_with_dilation": (False, True, True)}),
    ("resnet50", {"replace_stride_with_dilation": (False, False, True)}),
    ("mobilenet_v2", {}), ("mobilenet_v2", {"feature_taps": "starts"}),
    ("mobilenet_v3_large", {}), ("mobilenet_v3_large", {"dilated": True}),
    ("mobilenet_v3_large", {"dilated": True, "feature_taps": "starts"}),
    ("mobilenet_v3_small", {"feature_taps": "starts"}), ("mobilenet_v1", {}),
    ("vgg16", {}), ("vgg11_bn", {}), ("googlenet", {}), ("inception_v3", {}),
    ("vit_b_16", {}),
]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_feature_info_matches_returned_maps(name, kwargs):
    model = jv.create_model(name, features_only=True, **kwargs)
    size = 224 if name.startswith(("vit", "inception")) else 128
    x = jnp.zeros((1, size, size, 3))
    maps = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
    info = model.feature_info
    # (eval_shape sorts a dict's keys; ViT adds a ``_tokens`` companion to each map)
    assert {k for k in maps if not k.endswith("_tokens")} == {f.name for f in info}
    for f in info:
        shape = maps[f.name].shape
        assert shape[-1] == f.channels, (f.name, shape, f)
        if len(shape) == 4:  # (ViT's maps are token sequences: channels only)
            # the map covers the input at that stride (ceil/floor pooling aside); Inception v3's
            # unpadded convs shave borders off, so there the reduction is an upper bound
            if name == "inception_v3":
                assert all(size / f.reduction / 2 < n <= size / f.reduction for n in shape[1:3])
            else:
                assert all(abs(n - size / f.reduction) < 1 for n in shape[1:3]), (f.name, shape)


def test_resnet50_layer1_has_256_channels_and_dilation_keeps_stride():
    info = {f.name: f for f in jv.create_model("resnet50").feature_info}
    assert (info["layer1"].channels, info["layer4"].channels) == (256, 2048)
    dil = jv.create_model("resnet50", replace_stride_with_dilation=(False, True, True))
    assert [f.reduction for f in dil.feature_info] == [2, 4, 8, 8, 8]
    assert jv.model_info("resnet50").features == jv.create_model("resnet50").feature_info


def test_mobilenet_v3_starts_are_torchvision_stage_indices():
    """torchvision's segmentation/detection taps: [0] + strided blocks (_is_cn) + [last]."""
    import torch
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.mobilenet_v3_large(dilated=True).features
    want = [0] + [i for i, b in enumerate(tv) if getattr(b, "_is_cn", False)] + [len(tv) - 1]
    model = jv.create_model("mobilenet_v3_large", dilated=True, feature_taps="starts")
    assert [f.name for f in model.feature_info] == [f"features_{i}" for i in want]
    assert [(f.channels, f.reduction) for f in model.feature_info][2] == (40, 8)

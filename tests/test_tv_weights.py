"""model_info carries what torchvision's weights publish: preset (resize, crop, interpolation,
mean, std; the DEFAULT weights' unless PRESET_OF names others) and the DEFAULT weights' meta (recipe URL, ImageNet-1K accuracy, GFLOPS, file size, docs),
for every classification model, checked against the installed torchvision."""
import dataclasses
import os
import sys

import pytest
import torchvision

import jaxvision as jv
from jaxvision.registry import torchvision_weights

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import gen_tv_weights  # noqa: E402

CLASSIFIERS = sorted(torchvision.models.list_models(module=torchvision.models))
# the registry's preset describes the model create_model builds and the older weights where the
# DEFAULT ones changed it: ViT-H/14 is built at 224 (DEFAULT: SWAG end-to-end at 518); these
# keep IMAGENET1K_V1's resize 256 (V2: 232).  A converted torchvision file records its own
# preset (jaxvision.convert.preprocess).
PRESET_OF = {"vit_h_14": "IMAGENET1K_SWAG_LINEAR_V1", **{n: "IMAGENET1K_V1" for n in (
    "mobilenet_v2", "mobilenet_v3_large", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")}}


def test_every_torchvision_classifier_is_registered_with_its_weights():
    assert len(CLASSIFIERS) == 80
    assert {jv.model_info(n).torch_name for n in CLASSIFIERS} == set(CLASSIFIERS)


def test_table_is_what_the_installed_torchvision_publishes():
    # the whole file, field by field: nothing in it was typed by hand
    want = {k: dict(zip(gen_tv_weights.FIELDS, v)) for k, v in gen_tv_weights.rows().items()}
    got = {n: dataclasses.asdict(torchvision_weights(n)) for n in CLASSIFIERS}
    assert got == want


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_model_info_follows_default_weights(name):
    enum = torchvision.models.get_model_weights(name)
    w, spec = enum.DEFAULT, jv.model_info(name)
    preset = enum[PRESET_OF.get(name, w.name)].transforms()
    assert (spec.resize_size, spec.crop_size, spec.interpolation) == (
        preset.resize_size[0], preset.crop_size[0], preset.interpolation.value)
    assert (list(spec.mean), list(spec.std)) == (preset.mean, preset.std)
    assert spec.num_params == enum[PRESET_OF.get(name, w.name)].meta["num_params"]
    pub = spec.torchvision_weights
    assert (pub.weights, pub.recipe) == (str(w), w.meta["recipe"])
    assert (pub.acc1, pub.acc5) == tuple(w.meta["_metrics"]["ImageNet-1K"][k]
                                         for k in ("acc@1", "acc@5"))
    assert spec.describe()["torchvision_weights"]["recipe"] == w.meta["recipe"]


def test_examples_and_models_without_classification_weights():
    convnext = jv.model_info("convnext_tiny").torchvision_weights
    assert convnext.weights == "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"
    assert convnext.recipe.endswith("references/classification#convnext")
    assert "momentum of 0.99" in jv.model_info("maxvit_t").torchvision_weights.docs
    # segmentation and detection weights publish other metrics: not in this table
    for name in ("fcn_resnet50", "retinanet_resnet50_fpn"):
        assert jv.model_info(name).torchvision_weights is None
        assert jv.model_info(name).describe()["torchvision_weights"] is None
    assert torchvision_weights(None) is None and torchvision_weights("no_such_model") is None

"""The detectors' inference transform against torchvision's: the eager resize rule over every
short side from 100 to 1999 px, and the preprocessing each model carries (torchvision's
``model.transform``), which ``detection.predict`` reads from the module alone."""
import numpy as np
import pytest
import torch
from torchvision.models.detection import fcos, retinanet, ssd, ssdlite
from torchvision.models.detection.transform import _resize_image_and_masks

import jaxvision as jv
from jaxvision.ops import resized_size
from jaxvision.tasks.detection import preprocessing_of


def _torch_sizes(shapes, min_size, max_size, monkeypatch):
    """torchvision's eager ``_resize_image_and_masks`` output size for each (h, w): the whole
    Python path (its scale, F.interpolate's recompute_scale_factor rule) runs; only the
    bilinear kernel is replaced by one that allocates the output, so 7,600 sizes take a second.
    Also checks the kernel is told to use the in/out size ratio (no scale factor)."""
    kernel_args = []

    def kernel(inp, output_size, align_corners, scale_factors):
        kernel_args.append(scale_factors)
        return inp.new_empty((*inp.shape[:2], *output_size))

    monkeypatch.setattr(torch._C._nn, "upsample_bilinear2d", kernel)
    out = [tuple(_resize_image_and_masks(torch.zeros(1, 1, 1).expand(1, h, w), min_size,
                                         max_size)[0].shape[-2:]) for h, w in shapes]
    assert kernel_args == [None] * len(shapes)
    return out


def test_resize_rule_equals_torchvision_eager(monkeypatch):
    shapes = [s for short in range(100, 2000) for long in (short * 4 // 3, short * 3 // 2)
              for s in ((short, long), (long, short))]
    want = _torch_sizes(shapes, 800, 1333, monkeypatch)
    got = [resized_size(h, w, 800, 1333) for h, w in shapes]
    bad = [(s, g, w) for s, g, w in zip(shapes, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(shapes)} sizes differ, e.g. {bad[:3]}"
    assert resized_size(480, 640, 800, 1333) == (800, 1066)  # 799 under a float32 scale


def test_stubbed_kernel_gives_the_real_sizes(monkeypatch):
    shapes = [(480, 640), (333, 500), (427, 640), (375, 500), (1999, 100)]
    real = [tuple(_resize_image_and_masks(torch.zeros(1, h, w), 800, 1333)[0].shape[-2:])
            for h, w in shapes]
    assert _torch_sizes(shapes, 800, 1333, monkeypatch) == real


def test_resize_rule_rejects_an_empty_image():
    with pytest.raises(ValueError, match="0x640 has an empty side"):
        resized_size(0, 640, 800, 1333)


TORCH_BUILDERS = {"retinanet_resnet50_fpn": retinanet.retinanet_resnet50_fpn,
                  "retinanet_resnet50_fpn_v2": retinanet.retinanet_resnet50_fpn_v2,
                  "fcos_resnet50_fpn": fcos.fcos_resnet50_fpn,
                  "ssd300_vgg16": ssd.ssd300_vgg16,
                  "ssdlite320_mobilenet_v3_large": ssdlite.ssdlite320_mobilenet_v3_large}


@pytest.mark.parametrize("name", list(TORCH_BUILDERS))
def test_models_carry_torchvisions_preprocessing(name):
    with torch.device("meta"):
        t = TORCH_BUILDERS[name](weights=None, weights_backbone=None).transform
    pre = jv.create_model(name).preprocessing
    fixed = None if t.fixed_size is None else tuple(t.fixed_size)[::-1]  # torch's is (w, h)
    assert (pre.min_size, pre.max_size, pre.fixed_size, pre.size_divisible) == (
        t.min_size[-1], t.max_size, fixed, t.size_divisible)
    np.testing.assert_array_equal(pre.image_mean, t.image_mean)
    np.testing.assert_array_equal(pre.image_std, t.image_std)


def test_preprocessing_follows_the_models_settings():
    pre = jv.create_model("ssd300_vgg16", size=(400, 300), image_std=(0.5, 0.5, 0.5)).preprocessing
    assert pre.fixed_size == (300, 400) and pre.image_std == (0.5, 0.5, 0.5)
    assert jv.create_model("yolo_cspdarknet53").preprocessing.image_std == (1.0, 1.0, 1.0)
    # a module without its own preprocessing: the registered one of ``name``, as before
    bare = type("Bare", (), {"min_size": 300, "max_size": 500})()
    assert preprocessing_of(bare, "ssd300_vgg16").fixed_size == (300, 300)
    assert preprocessing_of(bare).image_mean == (0.485, 0.456, 0.406)
    assert preprocessing_of(bare).min_size == 300

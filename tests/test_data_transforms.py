"""Transforms against torchvision.transforms on the same PIL images (uint8 out: the pixels must
be torchvision's exactly; normalisation is on the device, tests/test_data_device.py)."""
import numpy as np
import pytest
import torchvision.transforms as tvt
import torchvision.transforms.functional as TF
from PIL import Image

from jaxvision.data import transforms as T

_TV_INTERP = {"bilinear": tvt.InterpolationMode.BILINEAR,
              "bicubic": tvt.InterpolationMode.BICUBIC, "nearest": tvt.InterpolationMode.NEAREST}


def _img(w, h, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content plus noise, like a photo, so resampling differences would show
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("w,h,resize,crop,interp", [
    (64, 48, 36, 32, "bilinear"), (40, 75, 32, 28, "bicubic"), (50, 50, 20, 20, "nearest"),
    (3, 5, 9, 8, "bilinear"),  # tiny: upsampled
    (30, 20, 20, 24, "bilinear"),  # crop larger than the resized image: zero padding
])
def test_eval_image_matches_torchvision(w, h, resize, crop, interp):
    img = _img(w, h)
    ours = T.eval_image(img, crop, resize, interp)
    tv = tvt.Compose([tvt.Resize(resize, _TV_INTERP[interp]), tvt.CenterCrop(crop)])(img)
    assert ours.shape == (crop, crop, 3) and ours.dtype == np.uint8
    # both resize through PIL on a PIL input (torchvision's antialias only matters for
    # tensors), so the pixels agree exactly
    np.testing.assert_array_equal(ours, np.asarray(tv))


def test_eval_image_accepts_arrays_and_modes():
    rgb = np.asarray(_img(20, 20))
    a = T.eval_image(rgb, 16, 18)
    b = T.eval_image(Image.fromarray(rgb).convert("RGBA"), 16, 18)
    np.testing.assert_array_equal(a, b)
    grey = T.eval_image(rgb[..., :1], 16, 18)
    assert grey.shape == (16, 16, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    with pytest.raises(ValueError, match="expected HW, HW1, HW3 or HW4"):
        T.eval_image(np.zeros((4, 4, 2), np.uint8), 4, 4)


@pytest.mark.parametrize("w,h,scale,ratio", [
    (40, 30, (2.0, 3.0), (3 / 4, 4 / 3)),  # no attempt fits: whole image
    (100, 10, (0.9, 1.0), (3 / 4, 4 / 3)),  # too wide: centre crop at max ratio
    (10, 100, (0.9, 1.0), (3 / 4, 4 / 3)),  # too tall: centre crop at min ratio
])
def test_random_resized_crop_fallback_matches_torchvision(w, h, scale, ratio):
    img = _img(w, h)
    ours = T.random_resized_crop_box(np.random.default_rng(0), w, h, scale, ratio)
    assert ours == tuple(tvt.RandomResizedCrop.get_params(img, list(scale), list(ratio)))


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, ch, cw = T.random_resized_crop_box(rng, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + ch <= 48 and 0 <= left and left + cw <= 64
        # rounding to whole pixels moves area and aspect a little past the bounds
        assert 0.06 <= ch * cw / (64 * 48) <= 1.0
        assert 0.65 <= cw / ch <= 1.5


def test_train_crop_equals_torchvision_resized_crop_of_the_same_box():
    img = _img(64, 48)
    t = T.TrainTransform(24, hflip=False)
    out = t.random_map({"image": np.asarray(img), "label": np.int32(1)}, np.random.default_rng(3))
    top, left, ch, cw = T.random_resized_crop_box(np.random.default_rng(3), 64, 48,
                                                  (0.08, 1.0), (3 / 4, 4 / 3))
    tv = TF.resized_crop(img, top, left, ch, cw, [24, 24], tvt.InterpolationMode.BILINEAR)
    assert out["image"].dtype == np.uint8
    np.testing.assert_array_equal(out["image"], np.asarray(tv))
    assert out["label"] == 1


def test_train_transform_deterministic_per_seed_and_flips():
    x = {"image": np.asarray(_img(32, 32)), "label": np.int32(0)}
    t = T.TrainTransform(32, random_resized_crop=False, hflip=True)
    outs = [t.random_map(x, np.random.default_rng(s))["image"] for s in range(8)]
    plain = x["image"]
    flipped = [np.array_equal(o, plain[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, plain) for f, o in zip(flipped, outs))
    assert 0 < sum(flipped) < 8
    np.testing.assert_array_equal(t.random_map(x, np.random.default_rng(5))["image"], outs[5])

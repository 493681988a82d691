"""data.augment.policy / random_erasing wired into the classification train transform, and the
errors of bad values (each names its field)."""
import numpy as np
import pytest
import torch
from torchvision.transforms import RandomErasing as TvRandomErasing

from jaxvision.data import DataError
from jaxvision.tasks import build_data
from jaxvision.data import transforms as T
from jaxvision.data.erasing import RandomErasing
from jaxvision.data.policies import AugMix, TrivialAugmentWide
from jaxvision.tasks import build_task
from jaxvision.train.defaults import default_config
from test_data_loader import _cfg


def test_policy_runs_after_crop_and_flip_from_the_same_rng():
    example = {"image": np.asarray(T._pil(np.random.default_rng(0).integers(
        0, 256, (40, 30, 3), dtype=np.uint8))), "label": np.int32(2)}
    plain = T.TrainTransform(24)
    for policy in (TrivialAugmentWide(), AugMix()):
        rng = np.random.default_rng(5)
        base = plain.random_map(example, rng)["image"]
        want = policy(base, rng)
        got = T.TrainTransform(24, policy=policy).random_map(example, np.random.default_rng(5))
        np.testing.assert_array_equal(got["image"], want)


def test_loader_ships_erase_boxes_and_stays_deterministic():
    c = _cfg()
    c.augment.update(policy="trivialaugment", random_erasing=0.5)
    data = build_data(c, "resnet18")
    a, b = iter(data.train_loader(seed=3)), iter(data.train_loader(seed=3))
    boxes = []
    for _ in range(9):  # across the epoch boundary (8 steps)
        x, y = next(a), next(b)
        for k in ("image", "label", "erase"):
            np.testing.assert_array_equal(x[k], y[k])
        boxes.append(x["erase"])
    boxes = np.concatenate(boxes)
    assert boxes.dtype == np.int32 and boxes.shape == (72, 4)
    erased = boxes[:, 2] > 0
    assert 0.25 < erased.mean() < 0.75  # p = 0.5 of 72 examples
    top, left, h, w = boxes[erased].T
    assert np.all((top + h <= 24) & (left + w <= 24) & (h < 24) & (w < 24))
    plain = next(iter(build_data(_cfg(), "resnet18").train_loader(seed=3)))
    assert "erase" not in plain
    assert not np.array_equal(plain["image"], next(iter(data.train_loader(seed=3)))["image"])


def test_erasing_box_size_is_torchvisions():
    # a fixed area and aspect leave only the position to chance
    ours = RandomErasing(1.0, scale=(0.1, 0.1), ratio=(0.5, 0.5)).box(
        np.random.default_rng(0), 40, 60)
    _, _, h, w, _ = TvRandomErasing.get_params(torch.zeros(3, 40, 60), scale=(0.1, 0.1),
                                               ratio=(0.5, 0.5), value=[0.0])
    assert (ours[2], ours[3]) == (h, w)
    # nothing strictly smaller than the image fits: torchvision returns the image untouched
    full = RandomErasing(1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(full.box(np.random.default_rng(0), 10, 10), np.zeros(4))
    assert not RandomErasing(0.0).box(np.random.default_rng(0), 10, 10).any()


@pytest.mark.parametrize("update,field", [
    (dict(policy="ta_wide"), "data.augment.policy"),
    (dict(policy="randaugment", randaugment=dict(num_ops=2, magnitude=31,
                                                 num_magnitude_bins=31)),
     "data.augment.randaugment"),
    (dict(policy="augmix", augmix=dict(severity=0, mixture_width=3, chain_depth=-1,
                                       alpha=1.0, all_ops=True)), "data.augment.augmix"),
    (dict(policy="autoaugment", autoaugment=dict(policy="coco")), "data.augment.autoaugment"),
    (dict(random_erasing=1.5), "data.augment.random_erasing"),
])
def test_bad_augment_values_name_their_field(update, field):
    c = _cfg()
    c.augment.update(update)
    with pytest.raises(DataError, match=field):
        build_data(c, "resnet18").train_loader(seed=0)


@pytest.mark.parametrize("field,value", [("train.mixup_alpha", 0.2),
                                         ("data.augment.policy", "augmix"),
                                         ("data.augment.random_erasing", 0.1),
                                         ("data.repeated_augment", 3)])
def test_classification_augmentations_refused_elsewhere(field, value):
    c = default_config()
    c.task = "segmentation"
    section, key = field.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ValueError, match=f"{field}=.* is a classification augmentation"):
        build_task(c, 21)


def test_step_erases_after_normalising_as_torchvision():
    """torchvision's recipe erases the normalised tensor: value 0 is the mean colour."""
    import jax
    import torchvision.transforms.v2.functional as F

    from jaxvision.tasks import Classification

    x = np.random.default_rng(0).normal(size=(3, 12, 10, 3)).astype(np.float32)
    boxes = np.array([[2, 3, 5, 4], [0, 0, 0, 0], [11, 9, 1, 1]], np.int32)
    batch = {"image": x, "label": np.zeros(3, np.int32), "erase": boxes}
    got = np.asarray(Classification(4).train_batch(batch, jax.random.key(0))["image"])
    for n, (i, j, h, w) in enumerate(boxes):
        t = torch.tensor(x[n]).permute(2, 0, 1)
        want = F.erase(t, int(i), int(j), int(h), int(w), torch.tensor(0.0))
        np.testing.assert_array_equal(got[n], want.permute(1, 2, 0).numpy())
    noisy = np.asarray(Classification(4, erasing_noise=True).train_batch(
        {**batch, "erase": np.array([[0, 0, 12, 10]] * 3, np.int32)}, jax.random.key(0))["image"])
    assert abs(noisy.std() - 1) < 0.15 and not np.allclose(noisy, x)


def test_eval_crop_can_differ_from_the_train_crop():
    c = _cfg(eval_image_size=16)  # torchvision's --val-crop-size
    data = build_data(c, "resnet18")
    assert next(iter(data.eval_loader()))["image"].shape[1:] == (16, 16, 3)
    assert next(iter(data.train_loader(seed=0)))["image"].shape[1:] == (24, 24, 3)

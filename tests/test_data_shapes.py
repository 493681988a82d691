"""The procedural ``shapes`` dataset: determinism and agreement of label, mask and boxes."""
import numpy as np
import pytest

from jaxvision.data import DataError
from jaxvision.data.shapes import KINDS, ShapesSource


def test_deterministic_per_seed_and_index():
    a, b = ShapesSource(50, 6, 32, seed=3), ShapesSource(50, 6, 32, seed=3)
    for i in (0, 7, 49):
        for k, v in a[i].items():
            np.testing.assert_array_equal(v, b[i][k])
    other = ShapesSource(50, 6, 32, seed=4)
    assert not np.array_equal(a[0]["image"], other[0]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_label_mask_boxes_agree_and_classes_balanced():
    src = ShapesSource(120, 5, 40, seed=0)
    labels = []
    for i in range(len(src)):
        ex = src[i]
        lab = int(ex["label"])
        labels.append(lab)
        assert ex["image"].shape == (40, 40, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (40, 40)
        assert set(np.unique(ex["mask"])) == {0, lab + 1}
        ys, xs = np.nonzero(ex["mask"])
        np.testing.assert_array_equal(ex["boxes"], [[xs.min(), ys.min(), xs.max() + 1,
                                                     ys.max() + 1]])
        np.testing.assert_array_equal(ex["classes"], [lab])
        assert ex["num_boxes"] == 1
        # the shape is painted in one colour: every mask pixel has the same RGB
        assert len(np.unique(ex["image"][ex["mask"] > 0], axis=0)) == 1
    counts = np.bincount(labels, minlength=5)
    assert counts.min() >= 10, counts  # all classes present, roughly uniform
    assert src.class_names == list(KINDS[:5])


def test_bad_arguments_and_index():
    with pytest.raises(DataError, match="data.shapes.num_classes"):
        ShapesSource(10, len(KINDS) + 1)
    with pytest.raises(DataError, match="data.shapes.image_size"):
        ShapesSource(10, 4, image_size=8)
    with pytest.raises(IndexError):
        ShapesSource(10, 4)[10]

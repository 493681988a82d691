"""TFDS detection examples (normalised yxyx boxes) -> jaxvision's detection contract."""
import numpy as np
import pytest

from jaxvision.data import DataError, default_data_config
from jaxvision.data.tfds_source import detection_example, tfds_detection_source, tfds_sources


def _example():
    image = np.zeros((20, 40, 3), np.uint8)
    image[5:15, 8:20] = 200  # the first object's pixels
    bbox = np.array([[5 / 20, 8 / 40, 15 / 20, 20 / 40],  # [ymin, xmin, ymax, xmax]
                     [0.0, 0.5, 1.0, 1.0],
                     [0.5, 0.25, 0.5, 0.75],  # no height: dropped
                     [0.1, 0.1, 0.2, 0.2]], np.float32)
    return {"image": image, "objects": {"bbox": bbox, "label": np.array([0, 4, 2, 7]),
                                        "is_crowd": np.array([False, False, False, True])}}


def test_mapping_on_a_hand_made_example():
    out = detection_example(_example(), "ex")
    np.testing.assert_allclose(out["boxes"], [[8, 5, 20, 15], [20, 0, 40, 20]], atol=1e-5)
    x1, y1, x2, y2 = np.round(out["boxes"][0]).astype(int)  # on the object's pixels
    assert (out["image"][y1:y2, x1:x2] == 200).all() and (out["image"] == 200).sum() == 360
    np.testing.assert_array_equal(out["classes"], [1, 5])  # label + 1: 0 is background
    assert out["classes"].dtype == np.int32 and out["num_boxes"] == 2
    keep_crowd = detection_example(_example(), "ex", label_offset=0, drop_crowd=False)
    np.testing.assert_array_equal(keep_crowd["classes"], [0, 4, 7])
    empty = {"image": np.zeros((4, 4, 3), np.uint8),
             "objects": {"bbox": np.zeros((0, 4), np.float32), "label": np.zeros(0, np.int64)}}
    out = detection_example(empty, "ex")
    assert out["boxes"].shape == (0, 4) and out["num_boxes"] == 0


@pytest.mark.parametrize("change,match", [
    (lambda ex: ex.pop("objects"), "expected features 'image', 'objects/bbox'"),
    (lambda ex: ex["objects"].update(label=np.array([1])), "4 boxes but objects/label 1"),
    (lambda ex: ex["objects"]["bbox"].__setitem__((0, 2), 0.1), "not a normalised"),
    (lambda ex: ex["objects"]["bbox"].__setitem__((1, 3), 1.5), "not a normalised"),
])
def test_bad_examples(change, match):
    ex = _example()
    change(ex)
    with pytest.raises(DataError, match=match) as e:
        detection_example(ex, "tfds voc/2007[train] example 3")
    assert "example 3" in str(e.value)


def test_tfds_voc_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = [_example(), _example()]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda *a, **k: examples):
        src, names = tfds_detection_source("voc/2007", "train")
        with pytest.raises(DataError, match="not a detection dataset"):
            tfds_detection_source("mnist", "train")
        cfg = default_data_config().tfds
        cfg.name = "voc/2007"
        train, val, cfg_names = tfds_sources(cfg, "detection")
    assert cfg_names == names and len(train) == len(val) == 2
    assert len(names) == 21 and names[0] == "__background__" and names[1] == "aeroplane"
    assert len(src) == 2 and "voc/2007[train]" in repr(src) and "0x" not in repr(src)
    np.testing.assert_array_equal(src[1]["classes"], [1, 5])

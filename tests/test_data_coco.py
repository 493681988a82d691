"""COCO-format detection source: the reference's box rules, label layouts, and bad files."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import DataError, default_data_config
from jaxvision.data.coco import CocoSource, coco_sources

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


def _write(tmp_path, images, anns, cats=CATS, name="instances.json", paint=True):
    """COCO JSON plus PNGs in which every box's pixels hold its annotation id."""
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    for im in images:
        if "file_name" not in im or not im["width"]:  # an entry that fails before the disk
            continue
        pix = np.zeros((im["height"], im["width"], 3), np.uint8)
        for a in anns if paint else ():
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            if a["image_id"] == im["id"] and w > 0 and h > 0 and not a["iscrowd"]:
                pix[max(y, 0):y + h, max(x, 0):x + w] = a["id"]
        Image.fromarray(pix).save(folder / im["file_name"])
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(folder)


def _img(i, w=40, h=30):
    return {"id": i, "file_name": f"{i:06d}.png", "width": w, "height": h}


def _dataset(tmp_path):
    images = [_img(9), _img(2, 50, 20), _img(5)]  # listed out of id order
    anns = [_ann(10, 9, 3, [4, 5, 10, 8]),
            _ann(11, 9, 7, [20, 1, 15, 20]),
            _ann(12, 9, 1, [0, 0, 40, 30], crowd=1),  # crowd: not a target
            _ann(13, 2, 1, [30.5, 2, 20.4, 18]),  # 0.9 px past the right edge: clamped
            _ann(14, 2, 3, [10, 10, 0, 5]),  # no width: dropped
            _ann(15, 2, 7, [12, 4, 1, 1])]  # 1x1: kept (only skip_empty looks at > 1 px)
    return _write(tmp_path, images, anns)  # image 5 has no annotation


def test_boxes_labels_and_pixels(tmp_path):
    src = CocoSource(*_dataset(tmp_path))
    assert len(src) == 3 and src.image_ids == [2, 5, 9]  # torchvision: sorted ids, all images
    ex = src[2]  # image 9
    assert ex["image"].shape == (30, 40, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["boxes"], [[4, 5, 14, 13], [20, 1, 35, 21]])
    assert ex["boxes"].dtype == np.float32 and ex["classes"].dtype == np.int32
    np.testing.assert_array_equal(ex["classes"], [3, 7])  # category ids, 91-class style
    assert ex["num_boxes"] == 2 and ex["num_boxes"].dtype == np.int32
    for (x1, y1, x2, y2), ann_id in zip(ex["boxes"].astype(int), (10, 11)):  # on its pixels
        inside = ex["image"][y1:y2, x1:x2, 0]
        assert (inside == ann_id).all() and (ex["image"][..., 0] == ann_id).sum() == inside.size
    ex = src[0]  # image 2: clamped to the 50 px width, the zero-width box gone
    np.testing.assert_allclose(ex["boxes"], [[30.5, 2, 50, 20], [12, 4, 13, 5]])
    np.testing.assert_array_equal(ex["classes"], [1, 7])
    ex = src[1]
    assert ex["boxes"].shape == (0, 4) and ex["classes"].shape == (0,) and ex["num_boxes"] == 0
    assert src.class_names == ["__background__", "person", "N/A", "car", "N/A", "N/A", "N/A",
                               "train"]
    with pytest.raises(IndexError):
        src[3]


def test_contiguous_skip_empty_repr_pickle(tmp_path):
    ann, folder = _dataset(tmp_path)
    src = CocoSource(ann, folder, skip_empty=True, contiguous=True)
    assert src.class_names == ["__background__", "person", "car", "train"]
    # image 5 (no annotation) goes; image 2 stays: its 20.4x18 box is over 1 px both ways
    assert src.image_ids == [2, 9]
    np.testing.assert_array_equal(src[1]["classes"], [2, 3])
    r = repr(src)
    assert "0x" not in r and "skip_empty=True" in r and "n=2" in r
    again = pickle.loads(pickle.dumps(src))  # grain's workers receive the source pickled
    assert repr(again) == r
    np.testing.assert_array_equal(again[0]["boxes"], src[0]["boxes"])


def test_coco_sources_from_config(tmp_path):
    (tmp_path / "annotations").mkdir()
    _write(tmp_path, [_img(1), _img(2)], [_ann(1, 1, 1, [1, 1, 5, 5])],
           name="annotations/train.json")
    _write(tmp_path, [_img(1), _img(2)], [_ann(1, 2, 3, [1, 1, 5, 5])],
           name="annotations/val.json")
    cfg = default_data_config().coco
    cfg.root, cfg.train_ann, cfg.val_ann = str(tmp_path), "annotations/train.json", \
        "annotations/val.json"
    cfg.train_images = cfg.val_images = "img"
    train, val, names = coco_sources(cfg)
    assert (len(train), len(val)) == (1, 2)  # train drops the image without boxes
    assert names == ["__background__", "person", "N/A", "car", "N/A", "N/A", "N/A", "train"]
    cfg.root = ""
    with pytest.raises(DataError, match="data.coco.root"):
        coco_sources(cfg)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not JSON"),
    ('{"images": [], "annotations": []}', r"no \['categories'\]"),
    ("[1, 2]", "no \\['images', 'annotations', 'categories'\\]"),
])
def test_not_coco_json(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as e:
        CocoSource(str(path), str(tmp_path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("bbox,match", [
    ([30, 5, 11.5, 5], r"outside its image 000001.png \(40x30\) by more than 1 px"),
    ([-1.5, 5, 5, 5], "outside its image"),
    ([5, 5, 10, 26.5], "outside its image"),
    ([10, 5, -3, 5], "negative or non-finite value"),  # x2 < x1
    ([10, 5, 3, -1], "negative or non-finite value"),
    ([10, 5, float("nan"), 2], "negative or non-finite value"),
    ([10, 5, 3], r"expected \[x, y, width, height\]"),
])
def test_bad_box(tmp_path, bbox, match):
    anns = [_ann(1, 1, 1, [1, 1, 3, 3]), _ann(77, 1, 3, bbox), _ann(78, 1, 3, bbox)]
    ann, folder = _write(tmp_path, [_img(1)], anns, paint=False)
    with pytest.raises(DataError, match=match) as e:
        CocoSource(ann, folder)
    assert ann in str(e.value) and "annotation id 77" in str(e.value)
    if len(bbox) == 4:
        assert "(and 1 more)" in str(e.value)  # one error for the file, not one per box


def test_missing_images_named_and_counted(tmp_path):
    ann, folder = _write(tmp_path, [_img(i) for i in range(1, 6)], [])
    for i in (2, 3, 4, 5):
        (tmp_path / "img" / f"{i:06d}.png").unlink()
    with pytest.raises(DataError, match=r"4 of its 5 images are not in") as e:
        CocoSource(ann, folder)
    assert ann in str(e.value) and "000002.png" in str(e.value) and " ..." in str(e.value)


def test_unknown_category_and_image(tmp_path):
    ann, folder = _write(tmp_path, [_img(1)], [_ann(5, 1, 4, [1, 1, 3, 3])])
    with pytest.raises(DataError, match=r"annotation id 5 has category_id 4, not one of the "
                                         r"file's categories \[1, 3, 7\]") as e:
        CocoSource(ann, folder)
    assert ann in str(e.value)
    ann, folder = _write(tmp_path, [_img(1)], [_ann(5, 8, 1, [1, 1, 3, 3])])
    with pytest.raises(DataError, match="refers to image id 8"):
        CocoSource(ann, folder)


def test_bad_category_and_image_entries(tmp_path):
    ann, folder = _write(tmp_path, [_img(1)], [], cats=[{"id": "car"}])
    with pytest.raises(DataError, match=r"category #0 has id 'car', expected an integer"):
        CocoSource(ann, folder)
    ann, folder = _write(tmp_path, [_img(1) | {"width": 0}], [])
    with pytest.raises(DataError, match="image id 1 has width 0, height 30"):
        CocoSource(ann, folder)
    ann, folder = _write(tmp_path, [{"id": 1, "width": 4, "height": 4}], [])
    with pytest.raises(DataError, match=r"image #0 .* lacks one of the keys \['id', 'file_name'"):
        CocoSource(ann, folder)


def test_image_differs_from_annotation(tmp_path):
    ann, folder = _write(tmp_path, [_img(1)], [])
    Image.new("RGB", (20, 30)).save(tmp_path / "img" / "000001.png")
    src = CocoSource(ann, folder)
    with pytest.raises(DataError, match=r"000001.png: image is 20x30, but .* gives it as 40x30"):
        src[0]
    (tmp_path / "img" / "000001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="000001.png: cannot be read as an image"):
        src[0]


def test_agrees_with_torchvision_coco_detection(tmp_path):
    """torchvision's CocoDetection (v2 wrapper: xyxy boxes, category-id labels) followed by the
    detection reference's rules (drop crowd, clamp to the image, keep x2 > x1 and y2 > y1)."""
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("torchvision.datasets")
    ann, folder = _dataset(tmp_path)
    ref = datasets.wrap_dataset_for_transforms_v2(
        datasets.CocoDetection(folder, ann), target_keys={"boxes", "labels", "iscrowd"})
    src = CocoSource(ann, folder)
    assert len(ref) == len(src)
    compared = 0
    for i in range(len(src)):
        image, target = ref[i]
        ex = src[i]
        np.testing.assert_array_equal(np.asarray(image), ex["image"])
        if "boxes" not in target:  # an image without annotations
            assert ex["num_boxes"] == 0
            continue
        h, w = ex["image"].shape[:2]
        boxes = torch.as_tensor(target["boxes"]).clone()
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = ((boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
                & (torch.tensor(target["iscrowd"]) == 0))
        np.testing.assert_allclose(ex["boxes"], boxes[keep].numpy(), atol=1e-5)
        np.testing.assert_array_equal(ex["classes"], target["labels"][keep].numpy())
        compared += 1
    assert compared == 2

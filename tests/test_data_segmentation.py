"""Segmentation data: joint transforms keep image and mask aligned, crop padding is ignored,
eval counts every pixel once; VOC folders, TFDS mask features and shapes; each bad input named."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import DataError, default_data_config
from jaxvision.tasks import build_data
from jaxvision.data import transforms as T
from jaxvision.tasks.segmentation import PALETTE

# distinct non-black colours: a pixel's colour says its class; black only ever comes from padding
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]], np.uint8)


def blocks(h, w, seed, block=6):
    """An image of coloured blocks and the mask of their colour ids (drawn from the image)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(COLOURS), (-(-h // block), -(-w // block)))
    mask = np.kron(ids, np.ones((block, block), int))[:h, :w]
    return COLOURS[mask], mask


def mask_from_image(image):
    """Each pixel's nearest colour id; black (padding) -> 255."""
    rgb = np.asarray(image, np.float32)
    d = np.abs(rgb[..., None, :] - COLOURS.astype(np.float32)).sum(-1)
    ids = d.argmin(-1)
    return np.where(rgb.sum(-1) < 30, 255, ids)


@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_joint_transforms_keep_image_and_mask_aligned(interp):
    padded = 0
    for seed in range(24):
        h, w = (23, 31) if seed % 2 else (31, 17)
        image, mask = blocks(h, w, seed)
        t = T.SegTrainTransform(24, 20, (0.5, 2.0), True, interp)
        out = t.random_map({"image": image, "mask": mask}, np.random.default_rng(seed))
        assert out["image"].shape == (24, 24, 3) and out["mask"].shape == (24, 24)
        assert out["mask"].dtype == np.int32 and out["image"].dtype == np.uint8
        derived = mask_from_image(out["image"])
        if interp == "nearest":  # the same sampling for both: equal everywhere, padding too
            np.testing.assert_array_equal(derived, out["mask"])
        else:  # bilinear blends colours only along block edges
            assert (derived == out["mask"]).mean() > 0.9
            np.testing.assert_array_equal(derived == 255, out["mask"] == 255)
        padded += (out["mask"] == 255).any()
    assert padded > 0, "no draw was small enough to pad: the test would not test padding"
    ev = T.SegEvalTransform(20, 40, interp).map({"image": image, "mask": mask})
    derived = mask_from_image(ev["image"])
    agree = (derived == ev["mask"]).mean()
    assert agree == 1.0 if interp == "nearest" else agree > 0.9


def test_flip_moves_image_and_mask_together():
    image, mask = blocks(16, 16, 0, block=4)
    t = T.SegTrainTransform(16, 16, (1.0, 1.0), True, "nearest")
    outs = [t.random_map({"image": image, "mask": mask}, np.random.default_rng(s))
            for s in range(12)]
    flips = [np.array_equal(o["mask"], mask[:, ::-1]) for o in outs]
    assert 0 < sum(flips) < 12  # both orientations drawn
    for o, f in zip(outs, flips):
        np.testing.assert_array_equal(o["mask"], mask[:, ::-1] if f else mask)
        np.testing.assert_array_equal(mask_from_image(o["image"]), o["mask"])


def test_crop_padding_is_ignored_and_black():
    image, mask = blocks(10, 8, 1)
    t = T.SegTrainTransform(16, 8, (1.0, 1.0), False)  # no resize: 8 wide, 10 high
    out = t.random_map({"image": image, "mask": mask}, np.random.default_rng(0))
    # torchvision pads right and bottom, then the crop covers all of the 16x16 canvas
    np.testing.assert_array_equal(out["mask"][:10, :8], mask)
    assert (out["mask"][10:] == 255).all() and (out["mask"][:, 8:] == 255).all()
    assert (out["mask"] == 255).sum() == 16 * 16 - 10 * 8
    # black before normalising, as torchvision pads: -mean/std on the device
    assert (out["image"][10:] == 0).all() and (out["image"][:, 8:] == 0).all()


def save_mask(mask, path):
    """A palette PNG as VOC's: with the full 256-colour map (a short palette lets PIL renumber
    the indices when it saves)."""
    m = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="P")
    m.putpalette(PALETTE.ravel().tolist())
    m.save(path)


def _voc(root, ids):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(root / d, exist_ok=True)
    for k, i in enumerate(ids):
        h, w = (14, 20) if k % 2 else (20, 14)
        image, mask = blocks(h, w, k)
        mask = mask % 3
        mask[0, 0] = 255  # a VOC object border: ignored
        Image.fromarray(image).save(root / "JPEGImages" / f"{i}.jpg")
        save_mask(mask, root / "SegmentationClass" / f"{i}.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _voc_cfg(root, **kw):
    c = default_data_config()
    c.source = "voc"
    c.update(image_size=16, resize_size=16, batch_size=2, eval_batch_size=4, **kw)
    c.voc.update(root=str(root), num_classes=3)
    return c


def test_voc_folder_batches_and_eval_counts_every_pixel_once(tmp_path):
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    _voc(tmp_path, ids)
    c = _voc_cfg(tmp_path)
    c.segmentation.eval_size = 24
    data = build_data(c, "resnet18", "segmentation")
    assert data.class_names == ["class_0", "class_1", "class_2"] and data.num_val == 3
    ex = data.train_source[0]
    assert ex["mask"].dtype == np.int32 and set(np.unique(ex["mask"])) <= {0, 1, 2, 255}
    b = next(iter(data.train_loader(seed=0)))
    assert b["image"].shape == (2, 16, 16, 3) and b["mask"].shape == (2, 16, 16)
    batches = list(data.eval_loader())
    assert len(batches) == 1 and batches[0]["valid"].tolist() == [True, True, True, False]
    counted = sum(int((bt["mask"][bt["valid"]] != 255).sum()) for bt in batches)
    # the shorter side to 16 (the longer one follows, floored): 16x22 each, less 1 border pixel
    assert batches[0]["mask"].shape == (4, 24, 24)
    assert counted == 3 * (16 * 22 - 1)


def test_voc_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="data.voc.root is empty"):
        build_data(_voc_cfg(""), None, "segmentation")
    _voc(tmp_path / "a", ["x1", "x2"])
    os.remove(tmp_path / "a" / "SegmentationClass" / "x2.png")
    with pytest.raises(DataError, match=r"train.txt: lists 'x2', but .*SegmentationClass/x2.png "
                                        "does not exist"):
        build_data(_voc_cfg(tmp_path / "a"), None, "segmentation")

    _voc(tmp_path / "b", ["y1"])
    save_mask(np.zeros((5, 5)), tmp_path / "b" / "SegmentationClass" / "y1.png")
    data = build_data(_voc_cfg(tmp_path / "b"), None, "segmentation")
    with pytest.raises(DataError, match=r"y1.png: mask is 5x5 \(WxH\), its image 14x20"):
        data.train_source[0]

    _voc(tmp_path / "c", ["z1"])
    save_mask(np.full((20, 14), 7), tmp_path / "c" / "SegmentationClass" / "z1.png")
    data = build_data(_voc_cfg(tmp_path / "c"), None, "segmentation")
    with pytest.raises(DataError, match=r"z1.png: mask holds class ids \[7\] outside \[0, 3\)"):
        data.train_source[0]
    with pytest.raises(DataError, match="set task='segmentation'"):
        build_data(_voc_cfg(tmp_path / "c"))


def test_shapes_segmentation_batches():
    c = default_data_config()
    c.update(image_size=24, resize_size=24, batch_size=4, eval_batch_size=8)
    c.shapes.update(num_train=16, num_val=5, image_size=24, num_classes=3)
    data = build_data(c, "resnet18", "segmentation")
    assert data.class_names == ["background", "circle", "square", "triangle"]
    b = next(iter(data.train_loader(seed=0)))
    assert b["mask"].shape == (4, 24, 24) and set(np.unique(b["mask"])) <= {0, 1, 2, 3, 255}
    (e,) = list(data.eval_loader())
    for i in range(5):  # eval at the source's size: the masks come through untouched
        np.testing.assert_array_equal(e["mask"][i], data.val_source[i]["mask"])
    with pytest.raises(DataError, match="imagefolder' has no masks"):
        c.source = "imagefolder"
        build_data(c, None, "segmentation")


def test_tfds_segmentation_mask_feature_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    ok = []
    for k in range(6):
        image, mask = blocks(20, 18, k)
        ok.append({"image": image, "segmentation_mask": (mask % 3)[..., None].astype(np.uint8)})
    c = default_data_config()
    c.source = "tfds"
    c.update(image_size=16, resize_size=16, batch_size=2, eval_batch_size=4)
    c.tfds.update(name="oxford_iiit_pet", val_split="test", class_names=("bg", "pet", "edge"))
    examples = ok
    source_fn = lambda self, split, **kw: examples
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=source_fn):
        data = build_data(c, None, "segmentation")
        assert data.class_names == ["bg", "pet", "edge"] and data.num_train == 6
        b = next(iter(data.train_loader(seed=0)))
        assert b["mask"].shape == (2, 16, 16)
        assert sum(int(x["valid"].sum()) for x in data.eval_loader()) == 6
        examples = [{"image": ok[0]["image"], "segmentation_mask": ok[0]["segmentation_mask"] + 3}]
        with pytest.raises(DataError, match=r"oxford_iiit_pet\[train\].*example 0.*class ids"):
            build_data(c, None, "segmentation").train_source[0]
        c.tfds.class_names = ()
        with pytest.raises(DataError, match="data.tfds.class_names is empty"):
            build_data(c, None, "segmentation")

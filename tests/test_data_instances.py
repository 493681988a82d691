"""Instance masks, keypoints and crowd regions through the COCO source, the joint detection
transforms, ``shapes`` and the loader: opt-in, and exact where torchvision defines the rule."""
import json

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import DataError, default_data_config
from jaxvision.data.coco import CocoSource
from jaxvision.data.det_transforms import DetEvalTransform, DetTrainTransform
from jaxvision.data.instance_ops import COCO_KEYPOINT_FLIP, hflip_keypoints, resize_masks
from jaxvision.tasks import build_data
from jaxvision.data.shapes import ShapesSource
from jaxvision.ops.resize import resize_keypoints

CATS = [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)]},
        {"id": 3, "name": "car"}]
W, H = 40, 30


def _kps(*points):
    """51 numbers: the given (index, x, y) labelled (v 2), the rest unlabelled zeros."""
    k = np.zeros((17, 3))
    for i, x, y in points:
        k[i] = (x, y, 2)
    return k.reshape(-1).tolist()


def _rle(mask):
    from pycocotools import mask as coco_mask

    r = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def _crowd_mask():
    m = np.zeros((H, W), np.uint8)
    m[20:28, 2:30] = 1
    return m


def _annotations():
    ucrle = np.zeros((H, W), np.uint8)  # an uncompressed RLE: a 6x4 block
    ucrle[2:6, 30:36] = 1
    counts, run, val = [], 0, 0
    for v in ucrle.T.reshape(-1):  # column-major runs, starting with zeros
        if v != val:
            counts.append(run)
            run, val = 0, v
        run += 1
    counts.append(run)
    return [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 2, 10, 12], "iscrowd": 0,
         "area": 119.5,
         "segmentation": [[4, 2, 14, 2, 14, 14, 4, 14]],  # a polygon covering its box
         "keypoints": _kps((1, 5, 3), (2, 12, 3), (0, 8, 10))},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [30, 2, 6, 4], "iscrowd": 0,
         "area": 24,
         "segmentation": {"size": [H, W], "counts": counts}},  # no keypoints: all unlabelled
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [2, 20, 28, 8], "iscrowd": 1,
         "area": 224,
         "segmentation": _rle(_crowd_mask()), "keypoints": [0] * 51},
        {"id": 13, "image_id": 2, "category_id": 3, "bbox": [1, 1, 8, 8], "iscrowd": 0,
         "area": 48,
         "segmentation": [[1, 1, 9, 1, 9, 9], [20, 20, 24, 20, 24, 24, 20, 24]]},  # two parts
    ]


def _write(tmp_path, anns, cats=CATS):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2)]
    for im in images:
        Image.fromarray(np.full((H, W, 3), 7 * im["id"], np.uint8)).save(folder / im["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(folder)


@pytest.fixture
def coco_files(tmp_path):
    return _write(tmp_path, _annotations())


def test_masks_keypoints_crowd_as_pycocotools_reads_them(coco_files):
    from pycocotools.coco import COCO

    ann, folder = coco_files
    plain = CocoSource(ann, folder)
    assert set(plain[0]) == {"image", "boxes", "classes", "num_boxes"}  # opt-in only
    src = CocoSource(ann, folder, masks=True, keypoints=True, crowd=True)
    ref = COCO(ann)
    ex = src[0]
    for k in ("image", "boxes", "classes", "num_boxes"):  # the detection fields unchanged
        np.testing.assert_array_equal(ex[k], plain[0][k])
    assert ex["masks"].shape == (2, H, W) and ex["masks"].dtype == np.uint8
    for m, i in zip(ex["masks"], (10, 11)):
        np.testing.assert_array_equal(m, ref.annToMask(ref.anns[i]))
    assert ex["masks"][1].sum() == 24  # the uncompressed RLE's 6x4 block
    assert ex["keypoints"].shape == (2, 17, 3) and ex["keypoints"].dtype == np.float32
    np.testing.assert_array_equal(ex["keypoints"][0].reshape(-1), ref.anns[10]["keypoints"])
    assert not ex["keypoints"][1].any()
    np.testing.assert_array_equal(ex["crowd_boxes"], [[2, 20, 30, 28]])
    np.testing.assert_array_equal(ex["crowd_classes"], [1])
    assert ex["num_crowd"] == 1 and ex["crowd_masks"].shape == (1, H, W)
    np.testing.assert_array_equal(ex["crowd_masks"][0], _crowd_mask())
    two = src[1]  # a polygon in two parts: one mask, their union
    np.testing.assert_array_equal(two["masks"][0], ref.annToMask(ref.anns[13]))
    assert two["num_crowd"] == 0 and two["crowd_masks"].shape == (0, H, W)
    np.testing.assert_array_equal(src.crowd_counts(), [1, 0])
    assert "masks=True, keypoints=True, crowd=True" in repr(src)


def test_masks_agree_with_torchvision_coco_wrapper(coco_files):
    datasets = pytest.importorskip("torchvision.datasets")
    ann, folder = coco_files
    ref = datasets.wrap_dataset_for_transforms_v2(
        datasets.CocoDetection(folder, ann), target_keys={"masks", "iscrowd"})
    src = CocoSource(ann, folder, masks=True, crowd=True)
    for i in range(len(src)):
        target, ex = ref[i][1], src[i]
        crowd = np.array(target["iscrowd"], bool)
        np.testing.assert_array_equal(ex["masks"], target["masks"].numpy()[~crowd])
        np.testing.assert_array_equal(ex["crowd_masks"], target["masks"].numpy()[crowd])


@pytest.mark.parametrize("field,value,match", [
    ("segmentation", [[4, 2, 14, 2]], r"polygon #0 has 4 numbers, expected .* at least 3 points"),
    ("segmentation", {"size": [20, 40], "counts": "abc"},
     r"RLE of size \[20, 40\], but its image is \[30, 40\] \(\[height, width\]\)"),
    ("keypoints", [1, 2, 2] * 16, r"keypoints of length 48, expected 51 numbers \(17 x"),
])
def test_bad_instance_annotation_named(tmp_path, field, value, match):
    anns = _annotations()
    anns[1][field] = value
    anns.append(dict(anns[1], id=14))  # a second bad one: one error for the file
    ann, folder = _write(tmp_path, anns)
    with pytest.raises(DataError, match=match) as e:
        CocoSource(ann, folder, masks=True, keypoints=True)
    assert ann in str(e.value) and "annotation id 11 of image id 1" in str(e.value)


def test_resize_masks_and_keypoints_as_torch():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.transform import resize_keypoints as tv_resize_keypoints

    rng = np.random.default_rng(0)
    for (h, w), (nh, nw) in [((480, 640), (800, 1066)), ((37, 53), (20, 29)),
                             ((333, 500), (800, 1201)), ((30, 40), (30, 40))]:
        masks = (rng.random((2, h, w)) > 0.5).astype(np.uint8)
        want = torch.nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(),
                                               size=(nh, nw))[:, 0].byte().numpy()
        np.testing.assert_array_equal(resize_masks(masks, (nh, nw)), want)
        kps = (rng.random((3, 17, 3)) * [w, h, 2]).astype(np.float32)
        np.testing.assert_array_equal(
            resize_keypoints(kps, (h, w), (nh, nw)),
            tv_resize_keypoints(torch.from_numpy(kps), [h, w], [nh, nw]).numpy())


def test_hflip_keypoints_swaps_left_and_right():
    k = np.zeros((1, 17, 3), np.float32)
    k[0, 1], k[0, 2], k[0, 0] = (5, 3, 2), (12, 3, 1), (8, 9, 2)  # left eye, right eye, nose
    k[0, 5] = (7, 7, 0)  # unlabelled: zeroed, whatever its x, y
    f = hflip_keypoints(k, 40)
    np.testing.assert_array_equal(f[0, [0, 1, 2]], [[32, 9, 2], [28, 3, 1], [35, 3, 2]])
    assert not f[0, 5:].any()
    np.testing.assert_array_equal(hflip_keypoints(f, 40)[0, :3], k[0, :3])  # an involution
    assert sorted(COCO_KEYPOINT_FLIP) == list(range(17))
    with pytest.raises(ValueError, match="14 keypoints per instance, but the flip permutation"):
        hflip_keypoints(np.zeros((1, 14, 3)), 40)


def _rect_example(rng, h=48, w=64, n=4):
    """Random integer boxes whose masks are exactly their rectangles, with a labelled keypoint
    at a pixel centre of each box; the image's red channel holds the column index."""
    x1, y1 = rng.integers(0, w - 8, n), rng.integers(0, h - 8, n)
    x2, y2 = x1 + rng.integers(3, 8, n), y1 + rng.integers(3, 8, n)
    boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
    masks = np.zeros((n, h, w), np.uint8)
    kps = np.zeros((n, 17, 3), np.float32)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, b:d, a:c] = 1
        kps[i, 1] = (a + 0.5, b + 0.5, 2)  # left eye at the box's top-left pixel
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w)
    return {"image": image, "boxes": boxes, "classes": np.arange(1, n + 1, dtype=np.int32),
            "num_boxes": np.int32(n), "masks": masks, "keypoints": kps}


def test_train_transform_moves_masks_and_keypoints_with_boxes():
    """No resize (min_size = the short side), so flip and crop keep the rectangles exact:
    each mask covers its box's pixels and no other, and the left-eye keypoint (moved to the
    right-eye slot by a flip) stays on its box's corner pixel."""
    rng = np.random.default_rng(0)
    t = DetTrainTransform(48, 64, canvas=40, max_boxes=6, min_box=1.0)
    flips = 0
    for seed in range(12):
        ex = _rect_example(np.random.default_rng(seed))
        out = t.random_map(ex, rng)
        assert out["masks"].shape == (6, 40, 40) and out["keypoints"].shape == (6, 17, 3)
        flipped = out["image"][0, 0, 0] > out["image"][0, 1, 0]  # columns now descend
        flips += flipped
        n = int(out["num_boxes"])
        for i in range(6):
            m = out["masks"][i]
            if i >= n:
                assert not m.any() and not out["keypoints"][i].any()
                continue
            x1, y1, x2, y2 = out["boxes"][i].astype(int)
            assert m[y1:y2, x1:x2].all() and m.sum() == (x2 - x1) * (y2 - y1)
            kp = out["keypoints"][i, 2 if flipped else 1]
            if kp[2]:  # labelled, unless the crop cut it off
                assert m[int(kp[1]), int(kp[0])] == 1
                corner = (x2 - 1 if flipped else x1, y1)
                assert (int(kp[0]), int(kp[1])) == corner
            assert not out["keypoints"][i, 1 if flipped else 2].any()
    assert 0 < flips < 12


def test_eval_transform_pads_masks_and_crowd(coco_files):
    src = CocoSource(*coco_files, masks=True, keypoints=True, crowd=True)
    t = DetEvalTransform(60, 80, canvas=96, max_boxes=4, max_crowd=2)
    out = t.map(src[0])
    assert out["masks"].shape == (4, 96, 96) and out["crowd_masks"].shape == (2, 96, 96)
    assert out["keypoints"].shape == (4, 17, 3) and out["num_crowd"] == 1
    np.testing.assert_array_equal(out["crowd_boxes"][0], [4, 40, 60, 56])  # scaled by 2
    np.testing.assert_array_equal(out["masks"][:2, :60, :80],
                                  resize_masks(src[0]["masks"], (60, 80)))
    assert not out["masks"][2:].any() and not out["masks"][:, 60:].any()
    np.testing.assert_array_equal(out["keypoints"][0, 1], [10, 6, 2])
    with pytest.raises(DataError, match="holds 1 crowd regions, more than max_crowd=0"):
        DetEvalTransform(60, 80, canvas=96, max_boxes=4, max_crowd=0).map(src[0])
    bad = dict(src[0], masks=src[0]["masks"][:, :20])  # a source's masks off its image
    with pytest.raises(DataError, match=r"masks of shape \(2, 20, 40\), expected \(2, 30, 40\)"):
        t.map(bad)
    plain = DetEvalTransform(60, 80, canvas=96, max_boxes=4).map(CocoSource(*coco_files)[0])
    assert set(plain) == {"image", "boxes", "classes", "num_boxes", "image_size", "scale"}


def test_shapes_instance_masks_and_loader_batches():
    src = ShapesSource(4, 3, 32, masks=True)
    for i in range(4):
        ex = src[i]
        np.testing.assert_array_equal(ex["masks"], (ex["mask"] > 0)[None].astype(np.uint8))
    assert "masks" not in ShapesSource(4, 3, 32)[0] and "masks=True" in repr(src)
    cfg = default_data_config()
    cfg.shapes.update(num_train=4, num_val=3)
    cfg.batch_size, cfg.eval_batch_size, cfg.image_size = 2, 2, 32
    cfg.detection.update(max_size=32, max_boxes=3, masks=True, crowd=True)
    data = build_data(cfg, task="detection")
    batch = next(iter(data.train_loader(seed=0)))
    assert batch["masks"].shape == (2, 3, 32, 32) and batch["masks"].dtype == np.uint8
    np.testing.assert_array_equal(batch["masks"][:, 1:], 0)  # one shape per image
    val = next(iter(data.eval_loader()))
    assert val["masks"].shape == (2, 3, 32, 32) and "num_crowd" not in val  # shapes: no crowd
    cfg.detection.keypoints = True
    with pytest.raises(DataError, match="data.detection.keypoints=True, but data.source="
                                        "'shapes' holds no instance keypoints"):
        build_data(cfg, task="detection")


def test_detection_eval_keeps_crowd_regions_as_ignore_regions():
    """The detection task's COCO ground truth: crowd regions join as iscrowd 1, so a
    detection on one is neither a true nor a false positive."""
    from jaxvision.tasks.detection import Detection

    task = Detection(num_classes=4)
    sums = {"det_boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32),
            "det_scores": np.array([[0.9, 0.8]], np.float32),
            "det_labels": np.array([[1, 1]]), "det_count": np.array([2]),
            "gt_boxes": np.array([[[20, 20, 30, 30]]], np.float32),
            "gt_classes": np.array([[1]]), "gt_count": np.array([1]),
            "scale": np.array([[1.0, 1.0]], np.float32), "valid": np.array([True])}
    plain = task.summary(task.accumulate(None, sums))
    crowd = {"crowd_boxes": np.array([[[0, 0, 10, 10]]], np.float32),
             "crowd_classes": np.array([[1]]), "num_crowd": np.array([1])}
    total = task.accumulate(None, sums | crowd)
    np.testing.assert_array_equal(total["gts"][0]["iscrowd"], [0, 1])
    assert plain["val_ap"] == pytest.approx(0.5)  # the detection on the crowd: a false positive
    assert task.summary(total)["val_ap"] == pytest.approx(1.0)  # ignored


def test_eval_targets_score_as_pycocotools_on_the_file(coco_files):
    """The source's original-pixel ground truth (crowd regions and the file's areas
    included) scores detections as COCOeval does on the annotation file itself."""
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from jaxvision.tasks.coco_eval import KEYS, coco_metrics

    ann, folder = coco_files
    src = CocoSource(ann, folder, masks=True, crowd=True)
    gts = [src.eval_targets(i) for i in range(len(src))]
    np.testing.assert_array_equal(gts[0]["iscrowd"], [0, 0, 1])
    np.testing.assert_array_equal(gts[0]["labels"], [1, 3, 1])
    np.testing.assert_array_equal(coco_mask.decode(gts[0]["masks"][2]), _crowd_mask())
    np.testing.assert_array_equal(gts[0]["areas"], [119.5, 24, 224])  # the file's
    # detections: the first image's instances shifted a pixel, one inside the crowd region,
    # a false positive on the second image
    dets, results = [], []
    for i, (iid, masks) in enumerate([(1, np.roll(src[0]["masks"], 1, 2)),
                                      (2, np.roll(src[1]["masks"], 9, 1))]):
        masks = np.concatenate([masks, _crowd_mask()[None]]) if i == 0 else masks
        scores = np.linspace(0.5, 0.9, len(masks))  # the crowd detection first
        labels = np.array([1, 3, 1][:len(masks)] if i == 0 else [3])
        dets.append({"masks": masks, "scores": scores, "labels": labels})
        for m, s, c in zip(masks, scores, labels):
            r = coco_mask.encode(np.asfortranarray(m))
            results.append({"image_id": iid, "category_id": int(c), "score": float(s),
                            "segmentation": {"size": r["size"], "counts": r["counts"].decode()}})
    ref = COCO(ann)
    ev = COCOeval(ref, ref.loadRes(results), "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    got = coco_metrics(gts, dets, "segm")
    assert 0 < ev.stats[0] < 1
    for k, want in zip(KEYS, ev.stats):
        assert got[k] == pytest.approx(want, abs=1e-12) or (np.isnan(got[k]) and want == -1)


def test_coco_loader_batches_carry_instances_and_val_crowd(coco_files, tmp_path):
    ann, folder = coco_files
    cfg = default_data_config()
    cfg.source, cfg.batch_size, cfg.eval_batch_size, cfg.image_size = "coco", 2, 2, 30
    cfg.coco.update(root=str(tmp_path), train_ann=ann, val_ann=ann, train_images=folder,
                    val_images=folder)
    cfg.detection.update(max_size=40, max_boxes=3, masks=True, keypoints=True, crowd=True)
    data = build_data(cfg, task="detection")
    train = next(iter(data.train_loader(seed=0)))
    assert train["masks"].shape == (2, 3, 64, 64) and train["keypoints"].shape == (2, 3, 17, 3)
    assert "num_crowd" not in train  # crowd regions are no training targets
    val = next(iter(data.eval_loader()))
    assert val["crowd_masks"].shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(val["num_crowd"], [1, 0])
    np.testing.assert_array_equal(val["crowd_masks"][0, 0, :30, :40], _crowd_mask())


def test_hflip_refused_for_a_keypoint_layout_it_cannot_mirror(tmp_path):
    cats = [dict(CATS[0], keypoints=["a", "b", "c"]), CATS[1]]
    anns = [dict(a, keypoints=[1, 1, 2] * 3) if "keypoints" in a else a for a in _annotations()]
    ann, folder = _write(tmp_path, anns, cats)
    assert CocoSource(ann, folder, keypoints=True).num_keypoints == 3
    cfg = default_data_config()
    cfg.source, cfg.batch_size = "coco", 1
    cfg.coco.update(root=str(tmp_path), train_ann=ann, val_ann=ann, train_images=folder,
                    val_images=folder)
    cfg.detection.keypoints = True
    data = build_data(cfg, task="detection")
    with pytest.raises(DataError, match="hflip with 3 keypoints per instance"):
        data.train_transform()
    cfg.detection.hflip = False
    assert data.train_transform().random_map(data.train_source[0], np.random.default_rng(0))[
        "keypoints"].shape == (100, 3, 3)


def _voc_instances(root, objects, classes):
    for d in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*objects.shape, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(classes.astype(np.uint8)).save(root / "SegmentationClass" / "a.png")
    Image.fromarray(objects.astype(np.uint8)).save(root / "SegmentationObject" / "a.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("a\n")


def test_voc_segmentation_object_layout(tmp_path):
    objects, classes = np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8)
    objects[2:8, 3:10], classes[2:8, 3:10] = 1, 2
    objects[10:18, 12:20], classes[10:18, 12:20] = 2, 1
    objects[10:18, 11], classes[10:18, 11] = 255, 255  # a border: no object's pixel
    _voc_instances(tmp_path, objects, classes)
    cfg = default_data_config()
    cfg.source, cfg.batch_size, cfg.eval_batch_size, cfg.image_size = "voc", 1, 1, 20
    cfg.voc.update(root=str(tmp_path), num_classes=3)
    cfg.detection.update(max_size=24, max_boxes=3, masks=True)
    data = build_data(cfg, task="detection")
    ex = data.train_source[0]
    np.testing.assert_array_equal(ex["boxes"], [[3, 2, 10, 8], [12, 10, 20, 18]])
    np.testing.assert_array_equal(ex["classes"], [2, 1])
    np.testing.assert_array_equal(ex["masks"], [objects == 1, objects == 2])
    assert next(iter(data.eval_loader()))["masks"].shape == (1, 3, 32, 32)
    classes[9:12, 12:14] = 2  # object 2 now lies on two classes
    _voc_instances(tmp_path, objects, classes)
    with pytest.raises(DataError, match=r"SegmentationObject/a.png: object 2 lies on class ids "
                                        r"\[1, 2\] of .*SegmentationClass/a.png"):
        build_data(cfg, task="detection").train_source[0]

"""Detection on the task-generic engine: box-aligned transforms with static shapes, the task's
host-side gathering in original pixels, and a short run end to end (train -> eval -> predict)
of a CPU-sized FCOS on ``shapes``."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision.data.det_transforms import DetEvalTransform, DetTrainTransform
from jaxvision.data.errors import DataError
from jaxvision.tasks import build_data
from jaxvision.data.shapes import KINDS, ShapesSource
from jaxvision.tasks import Detection, build_task
from jaxvision.cli import run_command as cli
from jaxvision.train.defaults import default_config
from jaxvision.train.loop import evaluate, train
from jaxvision.train.step import make_mesh
from test_data_coco import _ann, _img, _write
from test_segmentation_engine import seg_config



def painted(h=60, w=90):
    """An image whose two boxes are painted in pure colours on grey, and its example."""
    img = np.full((h, w, 3), 128, np.uint8)
    boxes = np.array([[10, 5, 40, 35], [50, 20, 86, 58]], np.float32)
    img[5:35, 10:40] = (255, 0, 0)
    img[20:58, 50:86] = (0, 0, 255)
    return {"image": img, "boxes": boxes, "classes": np.array([1, 2], np.int32),
            "num_boxes": np.int32(2)}


def colour_inside(out, box, channel):
    """Mean of ``channel`` over ``box`` shrunk by 2 px."""
    img = out["image"].astype(np.float32)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return img[y1 + 2:y2 - 2, x1 + 2:x2 - 2, channel].mean()


def test_train_transform_keeps_boxes_on_their_pixels_and_pads_statically():
    t = DetTrainTransform(48, 80, 96, scale_range=(0.6, 1.6), hflip=True, max_boxes=5)
    flips = set()
    for seed in range(12):
        out = t.random_map(painted(), np.random.default_rng(seed))
        assert out["image"].shape == (96, 96, 3) and out["boxes"].shape == (5, 4)
        assert out["image"].dtype == np.uint8
        n = int(out["num_boxes"])
        assert out["classes"][n:].tolist() == [0] * (5 - n)
        h, w = out["image_size"]
        assert h <= 96 and w <= 96
        for box, cls in zip(out["boxes"][:n], out["classes"][:n]):
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            if min(box[2] - box[0], box[3] - box[1]) > 8:  # a crop may leave a sliver
                red, blue = colour_inside(out, box, 0), colour_inside(out, box, 2)
                assert (red > 240 and blue < 15) if cls == 1 else (blue > 240 and red < 15)
        flips.add(bool(out["boxes"][0, 0] > w / 2) if n == 2 else None)
    assert {True, False} <= flips  # both flip states were drawn


def test_eval_transform_resizes_as_torchvision_and_records_the_scale():
    t = DetEvalTransform(40, 64, 64, max_boxes=3)
    out = t.map(painted(60, 90))
    # shorter side 60 -> 40 would make the longer 60: fine; scale = 40 / 60
    assert out["image_size"].tolist() == [40, 60]
    np.testing.assert_allclose(out["scale"], [40 / 60, 60 / 90], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][:2], painted()["boxes"] * 40 / 60, rtol=1e-5)
    assert int(out["num_boxes"]) == 2 and out["boxes"][2].tolist() == [0, 0, 0, 0]
    assert np.all(out["image"][40:] == 0) and np.all(out["image"][:, 60:] == 0)
    with pytest.raises(ValueError, match="canvas"):
        DetEvalTransform(50, 80, 64).map(painted(60, 90))  # 50x75


def test_task_gathers_every_valid_image_in_original_pixels_and_scores_perfect_boxes_1():
    task = Detection(num_classes=3)
    gt = np.array([[[4, 6, 20, 30], [0, 0, 0, 0]], [[10, 10, 50, 40], [2, 2, 12, 12]]],
                  np.float32)
    scale = np.array([[0.5, 0.5], [2.0, 1.0]], np.float32)
    batch = {"boxes": gt, "classes": np.array([[1, 0], [2, 1]], np.int32),
             "num_boxes": np.array([1, 2], np.int32), "scale": scale,
             "valid": np.array([True, True])}
    outputs = {"boxes": gt, "scores": np.array([[0.9, 0.0], [0.8, 0.7]], np.float32),
               "labels": batch["classes"], "count": np.array([1, 2], np.int32)}
    total = task.accumulate(None, task.eval_sums(outputs, batch))
    pad = {**batch, "valid": np.array([True, False])}  # a padded slot counts nothing
    total = task.accumulate(total, task.eval_sums(outputs, pad))
    assert len(total["gts"]) == 3
    np.testing.assert_allclose(total["gts"][1]["boxes"][0], [10, 5, 50, 20])  # x / 1, y / 2
    np.testing.assert_allclose(total["dets"][0]["boxes"][0], [8, 12, 40, 60])
    result = task.summary(total)
    assert result["val_ap"] == pytest.approx(1.0) and result["val_ap50"] == pytest.approx(1.0)
    assert result["val_count"] == 3
    assert set(task.details(total, ["bg", "a", "b"])["val_ap_per_class"]) == {"a", "b"}


def test_loss_is_the_sum_of_the_detectors_loss_dict():
    task = Detection(num_classes=3)
    out = {"classification": jnp.float32(1.5), "bbox_regression": jnp.float32(0.25)}
    loss, sums = task.loss(out, {"image": jnp.zeros((4, 8, 8, 3))})
    assert float(loss) == pytest.approx(1.75)
    assert task.train_summary({**jax.device_get(sums), "count": 4.0, "loss_sum": 7.0}) == {
        "classification": pytest.approx(1.5), "bbox_regression": pytest.approx(0.25)}


def det_config(**train_kw):
    c = default_config()
    c.task = "detection"
    c.model.name = "fcos_resnet50_fpn"
    c.model.kwargs = dict(backbone="resnet18", norm="batch", fpn_channels=32, head_convs=1,
                          trainable_backbone_layers=5, score_thresh=0.05,
                          detections_per_img=10)
    c.data.shapes.update(num_classes=3, num_train=48, num_val=12, image_size=48)
    c.data.update(image_size=48, batch_size=8, eval_batch_size=8)
    c.data.detection.update(max_size=48, canvas=64, scale_range=(0.8, 1.2), max_boxes=3)
    c.optimizer.update(name="adamw", lr=0.002, weight_decay=0.0)
    c.schedule.warmup.update(length=2, unit="step")
    c.train.update(steps=12, log_every=4, eval_every_epochs=100)  # eval at the end
    c.checkpoint.update(keep=1)
    c.logging.update(progress_bar=False, num_images=2)
    c.train.update(**train_kw)
    return c


def coco_config(root, **train_kw):
    """det_config() reading the COCO tree at ``root`` (train.json, val.json, img/)."""
    c = det_config(**train_kw)
    c.data.source = "coco"
    c.data.coco.update(root=str(root), train_ann="train.json", val_ann="val.json",
                       train_images="img", val_images="img")
    return c


def shapes_as_coco(root, c):
    """``c.data.shapes``' detection scenes written as a COCO tree at ``root``: the short run's
    data, as a user's files bring it (a root that can be moved away)."""
    s = c.data.shapes
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(KINDS[:s.num_classes])]
    (root / "img").mkdir(parents=True)
    first = 1
    for split, n, seed in (("train", s.num_train, s.seed), ("val", s.num_val, s.seed + 1)):
        src, images, anns = ShapesSource(n, s.num_classes, s.image_size, seed, 1), [], []
        for i in range(n):
            ex, iid = src[i], first + i
            images.append(_img(iid, s.image_size, s.image_size))
            Image.fromarray(ex["image"]).save(root / "img" / images[-1]["file_name"])
            x1, y1, x2, y2 = ex["boxes"][0].tolist()
            anns.append(_ann(iid, iid, int(ex["classes"][0]), [x1, y1, x2 - x1, y2 - y1]))
        (root / f"{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
        first += n


def _row_of_boxes(image_id, n):
    """``n`` disjoint 7x7 boxes side by side, classes 1, 2, 1, 2, ..."""
    return [_ann(10 * image_id + k, image_id, 1 + k % 2, [2 + 9 * k, 3, 7, 7]) for k in range(n)]


def test_eval_sees_every_box_whatever_max_boxes_and_training_says_what_it_drops(tmp_path):
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    for name, ids in (("train.json", (1, 2, 3)), ("val.json", (4, 5, 6))):
        _write(tmp_path, [_img(i) for i in ids],
               [a for i, n in zip(ids, (4, 2, 1)) for a in _row_of_boxes(i, n)], cats, name)
    task = Detection(num_classes=3)

    def first_box_found(variables, batch):  # finds each image's first box, misses the rest
        outputs = {"boxes": batch["boxes"][:, :1], "labels": batch["classes"][:, :1],
                   "scores": jnp.ones(batch["classes"][:, :1].shape),
                   "count": jnp.minimum(batch["num_boxes"], 1)}
        return task.eval_sums(outputs, batch)

    data, results, said = {}, {}, []
    for cap in (1, 100):
        c = coco_config(tmp_path)
        c.data.detection.max_boxes = cap
        data[cap] = build_data(c.data, c.model.name, "detection")
        results[cap] = evaluate(jax.jit(first_box_found), {}, data[cap], make_mesh(), task)
    # 3 of the 7 boxes found: scored against all 7, whatever max_boxes caps in training
    np.testing.assert_equal(results[1], results[100])  # NaN (undefined) equals NaN here
    assert results[100]["val_count"] == 3
    assert 0.2 < results[100]["val_ap"] < 0.5
    for cap in (1, 100):
        data[cap].check_targets(3, said.append)
    assert said == ["data.detection.max_boxes=1: training keeps the first 1 boxes of an image "
                    "and drops 4 of the 7 boxes, from 2 of the 3 train images (up to 4 boxes); "
                    "evaluation sees every box"]


def _nothing_written(workdir):
    return [p for p in ("config.json", "tb", "metrics.jsonl", "checkpoints")
            if os.path.exists(os.path.join(workdir, p))]


def test_a_head_smaller_than_the_data_is_refused_naming_the_ids(tmp_path):
    cats = [{"id": k, "name": f"digit{k}"} for k in range(1, 11)]
    _write(tmp_path, [_img(1)], _row_of_boxes(1, 2), cats, "train.json")
    _write(tmp_path, [_img(2)], _row_of_boxes(2, 2), cats, "val.json")
    c = coco_config(tmp_path)
    c.data.update(batch_size=1, eval_batch_size=1)  # one image would train
    c.model.num_classes = 5
    workdir = str(tmp_path / "det")
    with pytest.raises(DataError) as e:
        train(c, workdir, log=lambda *_: None)
    assert str(e.value) == (
        f"model.num_classes=5 is smaller than the data's 11 classes: class ids 5, 6, 7, 8, 9, 10 "
        f"of {tmp_path / 'train.json'} exceed a head of ids 0..4; set model.num_classes to 11 "
        "(0 takes the data's count)")
    assert _nothing_written(workdir) == []
    c = seg_config()
    c.data.shapes.num_classes = 6  # background + 6 shapes: 7 classes
    c.model.num_classes = 5
    workdir = str(tmp_path / "seg")
    with pytest.raises(DataError, match=r"smaller than the data's 7 classes: class ids 5, 6 of "
                                        r"data.shapes exceed a head of ids 0..4"):
        train(c, workdir, log=lambda *_: None)
    assert _nothing_written(workdir) == []


def test_empty_annotations_are_named_before_any_checkpoint(tmp_path):
    cats = [{"id": 1, "name": "a"}]
    _write(tmp_path, [_img(1)], [], cats, "train.json")
    _write(tmp_path, [_img(2)], _row_of_boxes(2, 1), cats, "val.json")
    workdir = str(tmp_path / "run")
    with pytest.raises(DataError) as e:
        train(coco_config(tmp_path), workdir, log=lambda *_: None)
    assert str(e.value) == (f"{tmp_path / 'train.json'}: holds no annotations to train on (its "
                            "'annotations' list is empty)")
    assert _nothing_written(workdir) == []
    _write(tmp_path, [_img(1)], _row_of_boxes(1, 1), cats, "train.json")
    _write(tmp_path, [_img(2)], [], cats, "val.json")
    with pytest.raises(DataError, match=r"val.json: holds no annotations to evaluate against"):
        build_data(coco_config(tmp_path).data, "fcos_resnet50_fpn", "detection")


@pytest.mark.slow
def test_short_run_trains_evaluates_and_predicts_with_coco_metrics(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = coco_config(tmp_path / "coco")
    shapes_as_coco(tmp_path / "coco", config)
    result = train(config, workdir, log=lambda *_: None)
    for k in ("val_ap", "val_ap50", "val_ap75", "val_ap_small", "val_ap_medium", "val_ap_large"):
        assert k in result and (np.isnan(result[k]) or 0.0 <= result[k] <= 1.0)
    assert result["val_count"] == 12 and result["step"] == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    logged = {k for r in rows for k in r}
    assert {"train/classification", "train/bbox_regression", "train/bbox_ctrness",
            "val/ap"} <= logged
    # 48 px scenes hold no box of COCO's large area range: its AP is undefined, not NaN
    assert "val/ap_large" not in logged and np.isnan(result["val_ap_large"])
    # eval prints the COCO metrics of the best checkpoint (chosen by val_ap)
    assert cli("eval", ["--workdir", workdir]) == 0
    printed = capsys.readouterr().out
    assert "val_ap50" in printed and "val_ap_per_class" in printed
    # predict draws the boxes on each image, from the run alone: the data may be gone
    os.rename(tmp_path / "coco", tmp_path / "elsewhere")
    (tmp_path / "a").mkdir()
    src = tmp_path / "a" / "in.png"
    Image.fromarray(painted(48, 72)["image"]).save(src)
    out_dir = tmp_path / "pred"
    assert cli("predict", ["--workdir", workdir, "--out", str(out_dir), str(src)]) == 0
    with Image.open(out_dir / "in.png") as pic:
        assert pic.size == (72, 48)
    assert str(src) in capsys.readouterr().out
    # two inputs of one name would write one file: refused, naming both, nothing overwritten
    (tmp_path / "b").mkdir()
    Image.fromarray(painted(60, 90)["image"]).save(tmp_path / "b" / "in.png")
    args = ["--workdir", workdir, "--out", str(out_dir), str(src), str(tmp_path / "b" / "in.png")]
    assert cli("predict", args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"jaxvision predict: error: {src} and {tmp_path / 'b' / 'in.png'} would "
                       f"both be written to {out_dir / 'in.png'}; predict them in separate runs "
                       "(--out) or rename one")
    assert "Traceback" not in "".join(err)
    with Image.open(out_dir / "in.png") as pic:
        assert pic.size == (72, 48)


def test_bad_detection_settings_are_named():
    c = det_config()
    c.data.detection.canvas = 32  # smaller than max_size 48
    data = build_data(c.data, c.model.name, "detection")
    with pytest.raises(DataError, match="canvas 32 is smaller than max_size 48"):
        data.eval_transform()
    c = det_config()
    c.data.source = "imagefolder"
    with pytest.raises(DataError, match="imagefolder' has no masks or boxes"):
        build_data(c.data, c.model.name, "detection")
    assert isinstance(build_task(det_config(), 4), Detection)


def test_pretrained_backbone_loads_torchvision_resnet_weights_into_the_detector(tmp_path):
    import torch
    import torchvision

    from jaxvision.train.loop import build_model, initial_variables

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    config = det_config()
    config.model.pretrained_backbone = str(path)
    model = build_model(config, 4)
    variables = initial_variables(config, model, 4, log=lambda *_: None)
    sd = torch.load(path)
    want = sd["layer2.0.conv1.weight"].numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    got = variables["params"]["backbone"]["body"]["layer2_0"]["conv1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(
        np.asarray(variables["batch_stats"]["backbone"]["body"]["bn1"]["mean"]),
        sd["bn1.running_mean"].numpy())
    # a ResNet-34 does not fit a ResNet-18 body: one error naming the file
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    config.model.pretrained_backbone = str(tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth does not fit fcos_resnet50_fpn's backbone"):
        initial_variables(config, model, 4, log=lambda *_: None)

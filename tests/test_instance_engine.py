"""Mask R-CNN on the detection engine: a tiny model trains on ``shapes`` with its instance masks
(loss_mask among the losses), its eval reports COCO mask AP beside box AP, ``jaxvision eval``
prints both, ``predict`` writes the masked image, and a mask model on data without masks is
refused naming the field."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision.tasks import build_data
from jaxvision.tasks import build_task, check_model
from jaxvision.tasks.coco_eval import instance_metrics
from jaxvision.cli import run_command as cli
from jaxvision.train.runs import load_task_run
from train_configs import tiny_config


def mask_config():
    c = tiny_config(steps=4, log_every=2, eval_every_epochs=100)  # eval at the end
    c.task = "detection"
    c.model.name = "maskrcnn_resnet50_fpn"
    c.model.kwargs = dict(backbone="resnet18", norm="batch", norm_eps=1e-5, fpn_channels=16,
                          representation_size=32, mask_layers=(16,),
                          trainable_backbone_layers=5, min_size=32, max_size=32,
                          rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32,
                          rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=16,
                          rpn_batch_size_per_image=32, box_batch_size_per_image=16,
                          box_detections_per_img=8, box_candidates_per_img=64,
                          box_score_thresh=0.0)
    c.data.shapes.update(num_train=16, num_val=8)
    c.data.update(batch_size=8, eval_batch_size=8)
    c.data.augment.update(random_resized_crop=False)
    c.data.detection.update(max_size=32, canvas=32, scale_range=(1.0, 1.0), max_boxes=3,
                            masks=True)
    c.optimizer.update(name="adamw", lr=0.001, weight_decay=0.0)
    c.checkpoint.update(keep=1)
    # no TensorBoard pictures: their eager forward pass would cost more than the run
    # (test_tensorboard_tile_puts_the_truths_masks_beside_the_predicted_ones draws them)
    c.logging.update(num_images=0)
    return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from jaxvision.train.loop import train

    workdir = str(tmp_path_factory.mktemp("mask") / "run")
    result = train(mask_config(), workdir, log=lambda *_: None)
    return workdir, result


def test_mask_model_trains_with_loss_mask_and_reports_mask_ap(run):
    workdir, result = run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    losses = [r["train/loss_mask"] for r in rows if "train/loss_mask" in r]
    assert losses and all(np.isfinite(losses)) and min(losses) > 0
    assert all(np.isfinite(r["train/loss_box_reg"]) for r in rows if "train/loss_box_reg" in r)
    for k in ("val_ap", "val_ap50", "val_mask_ap", "val_mask_ap50", "val_mask_ap75"):
        assert k in result and (np.isnan(result[k]) or 0.0 <= result[k] <= 1.0), k
    assert result["val_count"] == 8


def device_pasted_metrics(workdir):
    """instance_metrics of the best checkpoint's detections with the model's own on-device
    paste (at the canvas: here the original size, scale 1), thresholded by coco_eval."""
    from jaxvision.layers.normalize import normalize_batch

    config, _, _, model, variables, _ = load_task_run(workdir, log=lambda *_: None)
    data = build_data(config.data, config.model.name, "detection")
    apply = jax.jit(lambda v, x, s: model.apply(v, x, image_sizes=s))
    gts, dets = [], []
    for batch in data.eval_loader():
        b = normalize_batch(batch, (data.mean, data.std))
        out = jax.device_get(apply(variables, b["image"], b["image_size"]))
        for i in np.nonzero(batch["valid"])[0]:
            n, m = int(out["count"][i]), int(batch["num_boxes"][i])
            dets.append({"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n],
                         "labels": out["labels"][i, :n], "masks": out["masks"][i, :n]})
            gts.append({"boxes": batch["boxes"][i, :m], "labels": batch["classes"][i, :m],
                        "masks": batch["masks"][i, :m]})
    assert sum(len(d["boxes"]) for d in dets) > 0  # something to compare
    return instance_metrics(gts, dets)


def test_eval_box_and_mask_ap_are_pycocotools_on_the_models_own_masks(run):
    """The eval's box and mask AP (RLEs pasted on the host at the original size; ``jaxvision
    eval`` runs the same evaluation) equal pycocotools on the masks the model pastes itself."""
    workdir, result = run
    want = device_pasted_metrics(workdir)
    for k in ("ap", "ap50", "ap75", "mask_ap", "mask_ap50", "mask_ap75"):
        np.testing.assert_equal(result[f"val_{k}"], want[k], err_msg=k)


def test_predict_draws_the_masks(run, tmp_path, capsys):
    workdir, _ = run
    img = np.full((40, 56, 3), 128, np.uint8)
    img[8:30, 10:40] = (255, 0, 0)
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    assert cli("predict", ["--workdir", workdir, "--out", str(tmp_path / "pred"), str(src)]) == 0
    with Image.open(tmp_path / "pred" / "in.png") as pic:
        assert pic.size == (56, 40)
    assert str(src) in capsys.readouterr().out


def test_mask_model_without_masks_in_the_data_is_refused_naming_the_field():
    c = mask_config()
    check_model(c)  # the detection task trains Mask R-CNN
    assert build_task(c, 4).best_for(c) == "val_mask_ap"
    c.data.detection.masks = False
    with pytest.raises(ValueError, match=r"data.detection.masks is False: set "
                                         r"data.detection.masks=True"):
        build_task(c, 4)


def test_missing_masks_are_refused_at_config_time_before_the_workdir(tmp_path):
    from jaxvision.train.loop import train

    c = mask_config()
    c.data.detection.masks = False
    with pytest.raises(ValueError, match=r"data.detection.masks is False"):
        check_model(c)
    with pytest.raises(ValueError, match=r"data.detection.masks is False"):
        train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_keypoints_are_gathered_in_original_pixels_and_scored_as_keypoint_ap():
    """A Keypoint R-CNN's eval on the host: keypoints scale back by the transform's factors
    (crowd regions get none labelled), and a perfect prediction scores keypoint AP 1."""
    from jaxvision.tasks import Detection

    rng = np.random.default_rng(0)
    kps = np.concatenate([rng.uniform(10, 40, (1, 2, 17, 2)), np.full((1, 2, 17, 1), 2.0)], -1)
    boxes = np.array([[[5, 5, 45, 45], [8, 2, 44, 40]]], np.float32)
    scale = np.array([[0.5, 0.25]], np.float32)  # (y, x): the original is 2x taller, 4x wider
    sums = {"det_boxes": boxes, "det_scores": np.array([[0.9, 0.8]]),
            "det_labels": np.array([[1, 1]]), "det_count": np.array([2]),
            "gt_boxes": boxes, "gt_classes": np.array([[1, 1]]), "gt_count": np.array([2]),
            "scale": scale, "valid": np.array([True]), "crowd_boxes": boxes[:, :1],
            "crowd_classes": np.array([[1]]), "num_crowd": np.array([1]),
            "det_keypoints": kps.astype(np.float32), "gt_keypoints": kps.astype(np.float32)}
    task = Detection(2, branch="keypoints")
    total = task.accumulate(None, sums)
    gt, det = total["gts"][0], total["dets"][0]
    np.testing.assert_allclose(det["keypoints"][..., 0], kps[0, ..., 0] * 4, rtol=1e-6)
    np.testing.assert_allclose(det["keypoints"][..., 1], kps[0, ..., 1] * 2, rtol=1e-6)
    assert gt["keypoints"].shape == (3, 17, 3) and not gt["keypoints"][2].any()
    out = task.summary(total)
    assert out["val_kp_ap"] == 1.0 and out["val_ap"] == 1.0 and out["val_count"] == 1


def test_overlay_tints_the_mask_only():
    from jaxvision.tasks.instance import overlay

    pic = Image.fromarray(np.full((4, 6, 3), 100, np.uint8))
    mask = np.zeros((1, 4, 6), bool)
    mask[0, 1:3, 2:5] = True
    out = np.asarray(overlay(pic, mask, [(255, 0, 0)], alpha=0.5)).astype(int)
    np.testing.assert_array_equal(out[~mask[0]], 100)
    np.testing.assert_array_equal(out[mask[0]], [[178, 50, 50]] * 6)


def test_tensorboard_tile_puts_the_truths_masks_beside_the_predicted_ones():
    from jaxvision.tasks import Detection

    img = np.zeros((1, 32, 32, 3), np.uint8)
    truth = np.zeros((1, 1, 32, 32), np.uint8)
    truth[0, 0, 4:12, 4:12] = 1
    outputs = {"count": np.array([2]), "boxes": np.array([[[16, 16, 28, 28], [1, 1, 3, 3]]],
                                                          np.float32),
               "labels": np.array([[1, 2]]), "scores": np.array([[0.9, 0.1]]),
               "mask_probs": np.ones((1, 2, 28, 28), np.float32)}
    batch = {"num_boxes": np.array([1]), "boxes": np.array([[[4, 4, 12, 12]]], np.float32),
             "classes": np.array([[1]]), "masks": truth}
    tile = Detection(3, branch="masks").draw(img, batch, outputs, ["a", "b", "c"])[0]
    assert tile.shape == (128, 256, 3)  # 4x: the truth's 32 px beside the prediction's
    left, right = tile[:, :128].any(-1), tile[:, 128:].any(-1)
    assert left[32:44, 32:44].all() and not left[68:108, 68:108].any()
    assert right[68:108, 68:108].all() and not right[20:44, 20:44].any()

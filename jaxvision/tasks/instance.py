"""The mask and keypoint branches of the detection task: a Mask R-CNN or Keypoint R-CNN trains
on the batch's ``masks`` / ``keypoints``, its predictions are gathered on the host in the
original image's pixels (masks as pycocotools RLEs, one image at a time: a split's full-size
float masks would not fit in memory), and COCO segm / keypoint AP is reported beside box AP
(``val_mask_ap``, ``val_kp_ap``...)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxvision.heads.mask_rcnn import paste_masks_in_image
from jaxvision.ops.resize import to_original_pixels
from jaxvision.registry import get_spec

# registry family -> the branch's targets in a batch (data.detection.<branch>)
BRANCHES = {"mask_rcnn": "masks", "keypoint_rcnn": "keypoints"}
# the metric that picks the best checkpoint of each branch
BEST = {"masks": "val_mask_ap", "keypoints": "val_kp_ap"}
MASK_KEYS = ("mask_ap", "mask_ap50", "mask_ap75")
PASTE_BUCKET = 32  # original sizes round up to this for the paste: one compilation per bucket


def branch_of(model_name: str):
    """"masks", "keypoints" or None: what else than boxes ``model_name`` learns."""
    return BRANCHES.get(get_spec(model_name).family)


def check_data(config, branch) -> None:
    """A mask (keypoint) model needs the data's masks (keypoints): one error naming the field."""
    if branch and not config.data.detection.get(branch, False):
        raise ValueError(f"model.name={config.model.name!r} learns instance {branch}, but "
                         f"data.detection.{branch} is False: set data.detection.{branch}=True "
                         f"(data.source {config.data.source!r} must provide them)")


def train_targets(branch, batch) -> dict:
    """The loss's keyword for the branch's ground truth (``check_data`` made sure, at config
    time, that the data carries it)."""
    return {branch: batch[branch]} if branch else {}


def eval_model(model):
    """A Mask R-CNN that returns its 28 x 28 ``mask_probs`` only: the host pastes them at the
    original size (torchvision's postprocess); pasting into the padded canvas on the device as
    well would hold (batch, detections, canvas, canvas) floats for nothing."""
    return model.clone(paste_masks=False) if getattr(model, "paste_masks", False) else model


def eval_sums(branch, outputs, batch) -> dict:
    if branch == "masks":
        out = {"det_mask_probs": outputs["mask_probs"], "gt_masks": batch["masks"],
               "image_size": batch["image_size"]}
        if "crowd_masks" in batch:
            out["crowd_masks"] = batch["crowd_masks"]
        return out
    if branch == "keypoints":
        return {"det_keypoints": outputs["keypoints"], "gt_keypoints": batch["keypoints"]}
    return {}


_paste = jax.jit(lambda probs, boxes, size, shape: paste_masks_in_image(
    probs, boxes, shape, 1, size) > 0.5, static_argnums=3)


def paste_original(probs, boxes, hw) -> np.ndarray:
    """(n, H, W) bool: torchvision's ``paste_masks_in_image`` of ``probs`` (D, M, M) into an
    image of ``hw`` along the first n = len(boxes) ``boxes`` (in its pixels), thresholded at
    0.5 as torchvision's reference evaluation does."""
    n, (h, w) = len(boxes), (int(v) for v in hw)
    padded = np.zeros((len(probs), 4), np.float32)
    padded[:n] = boxes
    shape = tuple(-(-v // PASTE_BUCKET) * PASTE_BUCKET for v in (h, w))
    return np.asarray(_paste(jnp.asarray(probs), padded, np.array([h, w], np.int32),
                             shape))[:n, :h, :w]


def rles(masks) -> list:
    """pycocotools RLEs of (n, H, W) binary masks."""
    from pycocotools import mask as coco_mask

    m = np.asarray(masks, np.uint8)
    if not len(m):
        return []
    return coco_mask.encode(np.asfortranarray(m.transpose(1, 2, 0)))


def original_size(image_size, scale) -> tuple[int, int]:
    """The original image's (h, w) from the resized one and the transform's (y, x) factors."""
    return tuple(int(round(float(s) / float(f))) for s, f in zip(image_size, scale))


def gt_rles(masks, hw, orig) -> list:
    """The batch's ground-truth masks (n, canvas, canvas) of an image resized to ``hw``, back
    at the ``orig`` size (torch's nearest rule, the data's own) as RLEs."""
    from jaxvision.data.instance_ops import resize_masks

    m = np.asarray(masks)[:, :hw[0], :hw[1]]
    return rles(m if tuple(hw) == tuple(orig) else resize_masks(m, orig))


def add_predictions(branch, s, i, n, det, gt, crowd_count):
    """Adds example ``i``'s branch outputs to its host entries ``det`` and ``gt`` (n
    detections; ``det["boxes"]`` already in original pixels)."""
    scale = s["scale"][i]
    if branch == "masks":
        hw = tuple(int(v) for v in s["image_size"][i])
        orig = original_size(hw, scale)
        det["masks"] = rles(paste_original(s["det_mask_probs"][i], det["boxes"], orig))
        m = int(s["gt_count"][i])
        gt["masks"] = gt_rles(s["gt_masks"][i, :m], hw, orig)
        if crowd_count:
            gt["masks"] = list(gt["masks"]) + list(gt_rles(s["crowd_masks"][i, :crowd_count],
                                                           hw, orig))
    elif branch == "keypoints":
        det["keypoints"] = to_original_pixels(s["det_keypoints"][i, :n], scale)
        kps = to_original_pixels(s["gt_keypoints"][i, :int(s["gt_count"][i])], scale)
        # crowd regions carry no labelled keypoints
        gt["keypoints"] = np.concatenate([kps, np.zeros((crowd_count, *kps.shape[1:]),
                                                        np.float32)])


def summary(branch, gts, dets) -> dict:
    from jaxvision.tasks.coco_eval import instance_metrics

    got = instance_metrics(gts, dets, masks=branch == "masks", keypoints=branch == "keypoints")
    return {f"val_{k}": float(v) for k, v in got.items()}


def overlay(pic: Image.Image, masks, colours, alpha: float = 0.45) -> Image.Image:
    """``pic`` with each binary mask (n, H, W) of the picture's size tinted in its colour."""
    out = np.asarray(pic, np.float32).copy()
    for m, c in zip(masks, colours):
        m = np.asarray(m, bool)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(c, np.float32)
    return Image.fromarray(out.round().astype(np.uint8))

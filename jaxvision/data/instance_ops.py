"""Host-side geometry of instance masks ``(n, H, W)`` and keypoints ``(n, K, 3)`` (x, y, v in
pixels), moved with their image as ``box_ops`` moves boxes.

Masks resize by torch's ``interpolate(mode="nearest")``, as torchvision's detectors resize
their targets (``_resize_image_and_masks``), and keypoints by the size ratio
(``jaxvision.ops.resize.resize_keypoints``). A flip mirrors x and swaps left and right keypoints, and a keypoint
that is not labelled (v = 0) becomes all zeros, as the detection reference's
``_flip_coco_person_keypoints``.
"""
from __future__ import annotations

import numpy as np

# COCO's 17 person keypoints: nose, then (left, right) eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles; a horizontal flip swaps each pair (the reference's ``flip_inds``)
COCO_KEYPOINT_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """torch's nearest source index for each of ``dst`` outputs: float32 ``floor(i * src /
    dst)`` (the scale computed in float32, as ATen's ``compute_scales_value``), capped."""
    if src == dst:
        return np.arange(dst)
    scale = np.float32(src) / np.float32(dst)
    idx = np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, src - 1)


def resize_masks(masks: np.ndarray, dst_hw) -> np.ndarray:
    """``(n, h, w)`` masks resized to ``dst_hw`` by torch's nearest rule."""
    masks = np.asarray(masks)
    h, w = masks.shape[-2:]
    rows, cols = _nearest_index(h, int(dst_hw[0])), _nearest_index(w, int(dst_hw[1]))
    return masks[:, rows][:, :, cols]


def hflip_keypoints(keypoints: np.ndarray, width: float,
                    flip_index=COCO_KEYPOINT_FLIP) -> np.ndarray:
    """Keypoints of an image mirrored left-right: ``x' = width - x``, left and right swapped
    by ``flip_index``; unlabelled keypoints (v = 0) zeroed."""
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.shape[1] != len(flip_index):
        raise ValueError(f"hflip_keypoints: {keypoints.shape[1]} keypoints per instance, but "
                         f"the flip permutation has {len(flip_index)} (COCO's person layout)")
    out = keypoints[:, list(flip_index)].copy()
    out[..., 0] = width - out[..., 0]
    out[out[..., 2] == 0] = 0
    return out


def crop_keypoints(keypoints: np.ndarray, top: float, left: float, h: float,
                   w: float) -> np.ndarray:
    """Keypoints in the frame of the crop ``[top, top + h) x [left, left + w)``; those that
    fall outside it become unlabelled (all zeros)."""
    out = np.asarray(keypoints, np.float32) - np.array([left, top, 0], np.float32)
    outside = ((out[..., 0] < 0) | (out[..., 0] >= w) | (out[..., 1] < 0)
               | (out[..., 1] >= h))
    out[outside | (out[..., 2] == 0)] = 0
    return out

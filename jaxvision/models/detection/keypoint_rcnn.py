"""torchvision's Keypoint R-CNN (``models/detection/keypoint_rcnn.py``): Faster R-CNN plus the
keypoint branch of ``heads/keypoint_rcnn.py``, RoIs 14 x 14 from the four FPN levels,
``roi_heads.keypoint_head`` / ``roi_heads.keypoint_predictor`` as torchvision's keys.

``model.apply(v, x, image_sizes=...)`` -> Faster R-CNN's padded detections plus ``keypoints``
(N, D, K, 3) (x, y, 1 in ``x``'s pixels: ``transform.to_original`` scales them as
torchvision's ``resize_keypoints``) and ``keypoints_scores`` (N, D, K).  ``method="loss"`` adds
``loss_keypoint`` given ``keypoints`` (N, G, K, 3) of the ground truth.  torchvision trains at a
random min_size of (640, ..., 800) and tests at 800; here ``min_size`` is the one used (800).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.keypoint_rcnn import (KEYPOINT_LAYERS, NUM_KEYPOINTS,
                                           KeypointRCNNPredictor, heatmaps_to_keypoints,
                                           keypoint_rcnn_heads, keypointrcnn_loss)
from jaxvision.heads.roi_heads import RoIBoxHeads, positive_samples
from jaxvision.models.detection.faster_rcnn import FasterRCNN, _register


class _KeypointHead(nn.Module):
    """``keypoint_rcnn_heads`` as a child whose scope its owner shares (``roi_heads/
    keypoint_head_<2i>`` as torchvision's ``roi_heads.keypoint_head.<2i>``)."""
    layers: Sequence[int] = KEYPOINT_LAYERS
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        return keypoint_rcnn_heads(x, self.layers, "keypoint_head", dtype=self.dtype)


class KeypointRoIHeads(RoIBoxHeads):
    """torchvision's ``roi_heads`` with a keypoint branch: ``keypoints(pooled)`` -> heatmap
    logits (N, R, 56, 56, num_keypoints)."""
    num_keypoints: int = NUM_KEYPOINTS
    keypoint_layers: Sequence[int] = KEYPOINT_LAYERS

    def setup(self):
        super().setup()
        self.keypoint_head = _KeypointHead(tuple(self.keypoint_layers), self.dtype)
        nn.share_scope(self, self.keypoint_head)
        self.keypoint_predictor = KeypointRCNNPredictor(self.num_keypoints, self.dtype)

    def keypoints(self, pooled):
        return self.keypoint_predictor(self.keypoint_head(pooled))


class KeypointRCNN(FasterRCNN):
    num_keypoints: int = NUM_KEYPOINTS
    # smaller than torchvision's eight 512-channel convs: a CPU-sized keypoint head
    keypoint_layers: Sequence[int] = KEYPOINT_LAYERS

    def make_roi_heads(self):
        return KeypointRoIHeads(self.num_classes, "conv_fc" if self.variant == "v2" else "mlp",
                                self.representation_size, norm="batch", dtype=self.dtype,
                                num_keypoints=self.num_keypoints,
                                keypoint_layers=tuple(self.keypoint_layers))

    def __call__(self, x, train: bool = False, image_sizes=None):
        feats, _, dets = self.detect(x, train, image_sizes)
        valid = jnp.arange(dets["boxes"].shape[1]) < dets["count"][:, None]
        pooled = self.branch_roi_pool(feats, dets["boxes"], x.shape[1:3])
        # a detection's box lies in its image: x's padded size bounds every resized heatmap
        xy, scores = heatmaps_to_keypoints(self.roi_heads.keypoints(pooled), dets["boxes"],
                                           x.shape[1:3])
        dets["keypoints"] = jnp.where(valid[..., None, None], xy, 0.0)
        dets["keypoints_scores"] = jnp.where(valid[..., None], scores, 0.0)
        return dets

    def loss(self, x, boxes, labels, valid, train: bool = True, image_sizes=None,
             keypoints=None):
        """Faster R-CNN's losses and torchvision's ``loss_keypoint``; ``keypoints``
        (N, G, K, 3) the ground truth's (x, y, visibility) in ``x``'s pixels."""
        if keypoints is None or keypoints.shape[:2] != boxes.shape[:2]:
            raise ValueError(f"KeypointRCNN.loss: keypoints must be (N, G, "
                             f"{self.num_keypoints}, 3) with (N, G) = {boxes.shape[:2]} as the "
                             f"boxes, got {None if keypoints is None else keypoints.shape}")
        losses, feats, sample = self.box_losses(x, boxes, labels, valid, train, image_sizes)
        pos = positive_samples(sample, int(self.box_batch_size_per_image
                                           * self.box_positive_fraction))
        pooled = self.branch_roi_pool(feats, pos["boxes"], x.shape[1:3])
        losses["loss_keypoint"] = keypointrcnn_loss(self.roi_heads.keypoints(pooled),
                                                    pos["boxes"], keypoints,
                                                    pos["matched_idxs"], pos["valid"])
        return losses


_register("keypointrcnn_resnet50_fpn", "v1", 59_137_258, norm_eps=0.0, cls=KeypointRCNN,
          family="keypoint_rcnn", default_classes=2)

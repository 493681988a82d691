"""torchvision's Mask R-CNN (``models/detection/mask_rcnn.py``): Faster R-CNN plus the mask
branch of ``heads/mask_rcnn.py``, RoIs 14 x 14 from the four FPN levels (``branch_roi_pool``),
``roi_heads.mask_head`` / ``roi_heads.mask_predictor`` as torchvision's keys.

``model.apply(v, x, image_sizes=...)`` -> Faster R-CNN's padded detections plus
``mask_probs`` (N, D, 28, 28): each detection's mask probability in its box (torchvision's
``maskrcnn_inference``), and, with ``paste_masks`` (default), ``masks`` (N, D, H, W): those
probabilities pasted into the padded input (``x``'s H, W: the resized image, 0 past each image's
own size and for the padded detections).  torchvision pastes at the original image size instead;
``transform.to_original`` does that (threshold 0.5 is the caller's, as torchvision's).
``method="loss"`` adds ``loss_mask`` given ``masks`` (N, G, H, W) of the ground truth in ``x``'s
pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.heads.mask_rcnn import (MASK_LAYERS, MaskRCNNPredictor, mask_rcnn_heads,
                                       maskrcnn_inference, maskrcnn_loss, paste_masks_in_image)
from jaxvision.heads.roi_heads import RoIBoxHeads, positive_samples
from jaxvision.models.detection.faster_rcnn import FasterRCNN, _register


class _MaskHead(nn.Module):
    """``mask_rcnn_heads`` as a child whose scope its owner shares, so its convs sit at
    ``roi_heads/mask_head_<i>_<j>`` as torchvision's ``roi_heads.mask_head.<i>.<j>``."""
    layers: Sequence[int] = MASK_LAYERS
    norm: Optional[str] = None
    dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool = False, valid=None):
        return mask_rcnn_heads(x, train, self.layers, 1, "mask_head", norm=self.norm,
                               valid=valid, dtype=self.dtype)


class MaskRoIHeads(RoIBoxHeads):
    """torchvision's ``roi_heads`` with a mask branch: ``masks(pooled)`` -> mask logits
    (N, R, 28, 28, num_classes)."""
    mask_norm: Optional[str] = None
    mask_layers: Sequence[int] = MASK_LAYERS

    def setup(self):
        super().setup()
        self.mask_head = _MaskHead(tuple(self.mask_layers), self.mask_norm, self.dtype)
        nn.share_scope(self, self.mask_head)
        self.mask_predictor = MaskRCNNPredictor(self.num_classes, self.mask_layers[-1],
                                                self.dtype)

    def masks(self, pooled, train: bool = False, valid=None):
        return self.mask_predictor(self.mask_head(pooled, train, valid))


class MaskRCNN(FasterRCNN):
    paste_masks: bool = True
    # torchvision's four 256-channel convs (and a 256-channel transposed conv); narrower for a
    # CPU-sized mask head
    mask_layers: Sequence[int] = MASK_LAYERS

    def make_roi_heads(self):
        return MaskRoIHeads(self.num_classes, "conv_fc" if self.variant == "v2" else "mlp",
                            self.representation_size, norm="batch", dtype=self.dtype,
                            mask_norm="batch" if self.variant == "v2" else None,
                            mask_layers=tuple(self.mask_layers))

    def __call__(self, x, train: bool = False, image_sizes=None):
        feats, sizes, dets = self.detect(x, train, image_sizes)
        valid = jnp.arange(dets["boxes"].shape[1]) < dets["count"][:, None]
        pooled = self.branch_roi_pool(feats, dets["boxes"], x.shape[1:3])
        probs = maskrcnn_inference(self.roi_heads.masks(pooled, train, valid), dets["labels"])
        dets["mask_probs"] = jnp.where(valid[..., None, None], probs, 0.0)
        if self.paste_masks:
            pasted = paste_masks_in_image(probs, dets["boxes"], x.shape[1:3], 1, sizes)
            dets["masks"] = jnp.where(valid[..., None, None], pasted, 0.0)
        return dets

    def loss(self, x, boxes, labels, valid, train: bool = True, image_sizes=None, masks=None):
        """Faster R-CNN's losses and torchvision's ``loss_mask``; ``masks`` (N, G, H, W) the
        ground truth's masks in ``x``'s pixels (each image's beyond its ``image_sizes`` are
        outside it, as torchvision's unpadded masks)."""
        if masks is None or masks.ndim != 4 or masks.shape[:2] != boxes.shape[:2]:
            raise ValueError(f"MaskRCNN.loss: masks must be (N, G, H, W) with (N, G) = "
                             f"{boxes.shape[:2]} as the boxes, got "
                             f"{None if masks is None else masks.shape}")
        losses, feats, sample = self.box_losses(x, boxes, labels, valid, train, image_sizes)
        pos = positive_samples(sample, int(self.box_batch_size_per_image
                                           * self.box_positive_fraction))
        pooled = self.branch_roi_pool(feats, pos["boxes"], x.shape[1:3])
        logits = self.roi_heads.masks(pooled, train, pos["valid"])
        losses["loss_mask"] = maskrcnn_loss(logits, pos["boxes"], masks, labels,
                                            pos["matched_idxs"], pos["valid"],
                                            mask_sizes=self.image_sizes(x, image_sizes))
        return losses


_register("maskrcnn_resnet50_fpn", "v1", 44_401_393, norm_eps=0.0, cls=MaskRCNN,
          family="mask_rcnn")
_register("maskrcnn_resnet50_fpn_v2", "v2", 46_359_409, cls=MaskRCNN, family="mask_rcnn")

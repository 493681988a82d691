"""The box branch of torchvision's ``RoIHeads`` (``models/detection/roi_heads.py``), with static
shapes.

Training: :func:`select_training_samples` appends the ground truth to the RPN's proposals,
matches them (Matcher 0.5 / 0.5, no low-quality matches), samples 512 an image a quarter
positive (``BalancedPositiveNegativeSampler`` from a JAX key) and returns the sampled proposals
in torchvision's order (ascending index in proposals + ground truth), padded to a static count,
with their labels, matched ground truth and BoxCoder(10, 10, 5, 5) targets;
:func:`fastrcnn_loss` is torchvision's.  Inference: :func:`postprocess_detections` (softmax,
per-class boxes clipped to the image, score > 0.05, boxes under 1e-2 dropped, NMS 0.5 per class,
the 100 best) on padded proposals.  A mask or keypoint branch reuses both outputs: the sampled
proposals whose ``labels`` are > 0 (with ``matched_idxs`` into the ground truth) in training,
the final ``boxes``/``labels`` in inference.

The heads: :class:`TwoMLPHead` (v1), :class:`FastRCNNConvFCHead` (v2: 3x3 conv + norm + ReLU
blocks then fully connected layers, torchvision's names ``box_head.<i>.0/1`` and
``box_head.<j>`` at the RoI heads' level) and :class:`FastRCNNPredictor`.  Each flattens a
pooled (R, h, w, C) map in torch's (C, h, w) order, so the fully connected weights convert as
they are.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxvision import ops
from jaxvision.layers import Conv2d, Linear, kaiming_normal_fan_out, norm_factory
from jaxvision.ops.samplers import sample_labels

BOX_CODER = ops.BoxCoder((10.0, 10.0, 5.0, 5.0))


def _flatten_chw(x):
    """(R, h, w, C) -> (R, C * h * w) in torch's ``flatten(start_dim=1)`` order of NCHW."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


class TwoMLPHead(nn.Module):
    representation_size: int = 1024
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _flatten_chw(x)
        x = nn.relu(Linear(self.representation_size, x.shape[-1], self.dtype, name="fc6")(x))
        return nn.relu(Linear(self.representation_size, self.representation_size, self.dtype,
                              name="fc7")(x))


class FastRCNNConvFCHead(nn.Module):
    """torchvision's ``FastRCNNConvFCHead(input_size, conv_layers, fc_layers, norm_layer)``.
    Its layers are named ``{prefix}_{i}_0`` (conv), ``{prefix}_{i}_1`` (norm) and
    ``{prefix}_{j}`` (linear) as torchvision's Sequential indexes them; the owner shares its
    scope (``nn.share_scope``) so they sit where torchvision's keys put them."""
    conv_layers: Sequence[int] = (256, 256, 256, 256)
    fc_layers: Sequence[int] = (1024,)
    norm: str = "batch"
    prefix: str = "box_head"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = norm_factory(self.norm, self.dtype)
        for i, c in enumerate(self.conv_layers):
            x = Conv2d(c, 3, 1, 1, bias=False, dtype=self.dtype,
                       kernel_init=kaiming_normal_fan_out, name=f"{self.prefix}_{i}_0")(x)
            x = nn.relu(norm(name=f"{self.prefix}_{i}_1")(x, train))
        x = _flatten_chw(x)
        index = len(self.conv_layers) + 1  # after the Flatten
        for c in self.fc_layers:
            x = nn.relu(Linear(c, x.shape[-1], self.dtype, name=f"{self.prefix}_{index}")(x))
            index += 2  # each Linear is followed by its ReLU
        return x


class FastRCNNPredictor(nn.Module):
    num_classes: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        scores = Linear(self.num_classes, x.shape[-1], self.dtype, name="cls_score")(x)
        deltas = Linear(self.num_classes * 4, x.shape[-1], self.dtype, name="bbox_pred")(x)
        return scores, deltas


class RoIBoxHeads(nn.Module):
    """torchvision's ``roi_heads`` module (its box branch): ``box_head`` then ``box_predictor``
    on pooled RoIs (N, R, h, w, C) -> class logits (N, R, K) and box deltas (N, R, K * 4).
    ``head``: "mlp" (:class:`TwoMLPHead`) or "conv_fc" (:class:`FastRCNNConvFCHead`)."""
    num_classes: int
    head: str = "mlp"
    representation_size: int = 1024
    conv_layers: Sequence[int] = (256, 256, 256, 256)
    norm: str = "batch"
    dtype: Any = None

    def setup(self):
        if self.head == "mlp":
            self.box_head = TwoMLPHead(self.representation_size, self.dtype)
        elif self.head == "conv_fc":
            self.box_head = FastRCNNConvFCHead(self.conv_layers, (self.representation_size,),
                                               self.norm, "box_head", self.dtype)
            nn.share_scope(self, self.box_head)
        else:
            raise ValueError(f"RoIBoxHeads: head must be 'mlp' or 'conv_fc', got {self.head!r}")
        self.box_predictor = FastRCNNPredictor(self.num_classes, self.dtype)

    def __call__(self, pooled, train: bool = False):
        n, r = pooled.shape[:2]
        x = self.box_head(pooled.reshape(n * r, *pooled.shape[2:]), train)
        scores, deltas = self.box_predictor(x)
        return scores.reshape(n, r, -1), deltas.reshape(n, r, -1)


def select_training_samples(rng, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid,
                            fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                            batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                            coder: ops.BoxCoder = BOX_CODER):
    """torchvision's ``RoIHeads.select_training_samples`` on padded arrays.

    ``proposals`` (N, P, 4) with ``proposal_valid`` (N, P); ground truth ``gt_boxes`` (N, G, 4),
    ``gt_labels`` (N, G) (>= 1), ``gt_valid`` (N, G).  The candidates are the P proposal slots
    then the G ground-truth slots (padding is never sampled).  Returns a dict of (N, S[, 4])
    with S = min(batch_size_per_image, P + G): ``boxes``, ``valid`` (a sampled row), ``labels``
    (0 background), ``matched_idxs`` (into the ground truth; 0 for background), and
    ``regression_targets``; plus ``index`` (N, S) into the candidates and the sampler's
    ``positive``/``negative`` masks (N, P + G)."""
    candidates = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], 1)
    alive = jnp.concatenate([proposal_valid, gt_valid], 1)
    matcher = ops.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)

    def assign(boxes, ok, gtb, gtl, gtv):
        # padded candidates are zero boxes: their IoU is NaN or 0, and they are ignored anyway
        match = matcher(ops.box_iou(gtb, boxes), gtv)
        idx = jnp.maximum(match, 0)
        labels = jnp.where(match == ops.BELOW_LOW_THRESHOLD, 0,
                           jnp.where(match == ops.BETWEEN_THRESHOLDS, -1, gtl[idx]))
        return jnp.where(ok, labels, -1).astype(jnp.int32), idx

    labels, matched = jax.vmap(assign)(candidates, alive, gt_boxes, gt_labels, gt_valid)
    positive, negative = sample_labels(rng, labels, batch_size_per_image, positive_fraction)
    sampled = positive | negative
    s = min(batch_size_per_image, candidates.shape[1])
    # the sampled candidates first, in ascending index as torch.where gives them
    index = jnp.argsort(~sampled, axis=1, stable=True)[:, :s]
    take = lambda a: jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), 1)
    boxes, matched = take(candidates), take(matched)
    gt = jnp.take_along_axis(gt_boxes.astype(boxes.dtype), matched[..., None], 1)
    # an image without ground truth regresses to a zero box, as torchvision's
    gt = jnp.where(gt_valid.any(1)[:, None, None], gt, 0.0)
    return {"boxes": boxes, "valid": take(sampled), "labels": take(labels),
            "matched_idxs": matched, "regression_targets": coder.encode(gt, boxes),
            "index": index, "positive": positive, "negative": negative}


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets, valid):
    """torchvision's ``fastrcnn_loss`` over the sampled rows (``valid``) of all images: cross
    entropy averaged over them, and smooth-L1 (beta 1/9) of the positives' deltas of their own
    class summed and divided by the number of sampled rows.  Shapes (N, S, K), (N, S, K * 4),
    (N, S), (N, S, 4), (N, S)."""
    count = valid.sum()
    safe = jnp.maximum(labels, 0)
    logp = jax.nn.log_softmax(class_logits, -1)
    ce = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
    deltas = box_regression.reshape(*box_regression.shape[:-1], -1, 4)
    pred = jnp.take_along_axis(deltas, safe[..., None, None], -2)[..., 0, :]
    positive = valid & (labels > 0)
    diff = jnp.abs(pred - jnp.where(positive[..., None], regression_targets, 0.0))
    beta = 1.0 / 9
    smooth = jnp.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta)
    return {"loss_classifier": jnp.where(valid, ce, 0.0).sum() / count,
            "loss_box_reg": jnp.where(positive[..., None], smooth, 0.0).sum() / count}


def postprocess_detections(class_logits, box_regression, proposals, proposal_valid,
                           image_sizes, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                           detections_per_img: int = 100, candidates_per_img: int = 1000,
                           coder: ops.BoxCoder = BOX_CODER):
    """torchvision's ``RoIHeads.postprocess_detections`` on padded proposals (N, P, 4).

    Every (proposal, class) pair but the background's is a candidate; those above
    ``score_thresh`` and not thinner than 1e-2 go to NMS per class.  Static shapes need one
    bound torchvision does not have: the ``candidates_per_img`` best-scoring candidates enter
    NMS.  The result is torchvision's whenever at least ``detections_per_img`` of them survive
    NMS or no more than that many pass the threshold (greedy NMS decides each box from the
    better ones only).  Returns ``boxes`` (N, D, 4), ``scores``, ``labels``, ``count`` (N,)."""
    n, p, k = class_logits.shape
    boxes = coder.decode(box_regression.reshape(n, p, k, 4), proposals[:, :, None, :])
    scores = jax.nn.softmax(class_logits, -1)

    def one(boxes, scores, ok, size):
        boxes = ops.clip_boxes_to_image(boxes, (size[0], size[1]))[:, 1:].reshape(-1, 4)
        labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (p, k - 1)).reshape(-1)
        scores = scores[:, 1:].reshape(-1)
        keep = (jnp.repeat(ok, k - 1) & (scores > score_thresh)
                & ops.small_box_mask(boxes, 1e-2))
        top = min(candidates_per_img, scores.shape[0])
        # best first; ties keep the candidate order, as a stable sort
        _, idx = jax.lax.top_k(jnp.where(keep, scores, -1.0), top)
        b, s, l, v = boxes[idx], scores[idx], labels[idx], keep[idx]
        kept, count = ops.batched_nms(b, s, l, nms_thresh, detections_per_img, v)
        valid = jnp.arange(detections_per_img) < count
        safe = jnp.maximum(kept, 0)
        return (jnp.where(valid[:, None], b[safe], 0.0), jnp.where(valid, s[safe], 0.0),
                jnp.where(valid, l[safe], 0), count)

    out = jax.vmap(one)(boxes, scores, proposal_valid, jnp.asarray(image_sizes))
    return dict(zip(("boxes", "scores", "labels", "count"), out))


def positive_samples(sample: dict, bound: int):
    """The positive rows of a :func:`select_training_samples` sample, the training RoIs of a
    mask or keypoint branch (torchvision's ``torch.where(labels > 0)`` per image), in the
    sample's order, padded to the static ``bound`` (the sampler's most positives,
    ``int(batch_size_per_image * positive_fraction)``): ``boxes``, ``labels``,
    ``matched_idxs`` and ``valid``."""
    positive = sample["valid"] & (sample["labels"] > 0)
    bound = min(int(bound), positive.shape[1])
    index = jnp.argsort(~positive, axis=1, stable=True)[:, :bound]
    take = lambda a: jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), 1)
    return {"boxes": take(sample["boxes"]), "labels": take(sample["labels"]),
            "matched_idxs": take(sample["matched_idxs"]), "valid": take(positive)}

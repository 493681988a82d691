"""Box operations for detection, jittable with static shapes: IoU, coders, anchors, matching,
NMS (padded indices plus a count), RoIAlign / RoIPool / MultiScaleRoIAlign, the resize rule."""
from jaxvision.ops.anchors import AnchorGenerator
from jaxvision.ops.boxes import (box_area, box_convert, box_iou, clip_boxes_to_image,
                                 generalized_box_iou, small_box_mask)
from jaxvision.ops.coders import BoxCoder, BoxLinearCoder
from jaxvision.ops.default_boxes import DefaultBoxGenerator
from jaxvision.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss
from jaxvision.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher, SSDMatcher
from jaxvision.ops.nms import batched_nms, nms
from jaxvision.ops.poolers import MultiScaleRoIAlign
from jaxvision.ops.resize import resized_size
from jaxvision.ops.roi_align import roi_align
from jaxvision.ops.roi_pool import roi_pool
from jaxvision.ops.samplers import sample_labels

__all__ = [
    "AnchorGenerator", "box_area", "box_convert", "box_iou", "clip_boxes_to_image",
    "generalized_box_iou", "small_box_mask", "BoxCoder", "BoxLinearCoder",
    "BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "Matcher", "SSDMatcher", "batched_nms", "nms",
    "generalized_box_iou_loss", "sigmoid_focal_loss", "DefaultBoxGenerator", "resized_size",
    "roi_align", "roi_pool", "MultiScaleRoIAlign", "sample_labels",
]

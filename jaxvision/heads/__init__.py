"""Task heads: segmentation (FCN, DeepLabV3, DeepLabV3+, LR-ASPP), detection (RetinaNet,
FCOS, SSD, YOLO, EfficientDet, the RPN of two-stage detectors) and the mask and keypoint branches
of Mask and Keypoint R-CNN, each with its loss and post-processing where the head defines them."""
from jaxvision.heads.dense_prediction import DenseTower
from jaxvision.heads.efficientdet import EfficientDetHead
from jaxvision.heads.fcos import FCOSHead, fcos_loss, fcos_postprocess
from jaxvision.heads.keypoint_rcnn import (KeypointRCNNPredictor, heatmaps_to_keypoints,
                                           keypoint_rcnn_heads, keypointrcnn_loss,
                                           keypoints_to_heatmap)
from jaxvision.heads.mask_rcnn import (MaskRCNNPredictor, mask_rcnn_heads, maskrcnn_inference,
                                       maskrcnn_loss, paste_masks_in_image,
                                       project_masks_on_boxes)
from jaxvision.heads.retinanet import RetinaNetHead, retinanet_loss, retinanet_postprocess
from jaxvision.heads.rpn import RPNHead, rpn_loss, rpn_proposals, rpn_targets
from jaxvision.heads.segmentation import DeepLabV3PlusHead, LRASPPHead, deeplab_head, fcn_head
from jaxvision.heads.ssd import SSDHead, ssd_loss, ssd_postprocess
from jaxvision.heads.yolo import YOLOHead, yolo_loss, yolo_postprocess

__all__ = ["DeepLabV3PlusHead", "DenseTower", "EfficientDetHead", "FCOSHead",
           "KeypointRCNNPredictor", "LRASPPHead", "MaskRCNNPredictor", "RPNHead",
           "heatmaps_to_keypoints", "keypoint_rcnn_heads", "keypointrcnn_loss",
           "keypoints_to_heatmap", "mask_rcnn_heads", "maskrcnn_inference", "maskrcnn_loss",
           "paste_masks_in_image", "project_masks_on_boxes",
           "RetinaNetHead", "SSDHead", "YOLOHead", "deeplab_head", "fcn_head", "fcos_loss",
           "fcos_postprocess", "retinanet_loss", "retinanet_postprocess", "rpn_loss",
           "rpn_proposals", "rpn_targets", "ssd_loss", "ssd_postprocess", "yolo_loss",
           "yolo_postprocess"]

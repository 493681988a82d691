"""Mask R-CNN-ResNet50-FPN on COCO 2017, torchvision's reference recipe (references/detection):

    torchrun --nproc_per_node=8 train.py --dataset coco --model maskrcnn_resnet50_fpn \
        --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 --lr 0.02 \
        --weights-backbone ResNet50_Weights.IMAGENET1K_V1

The Faster R-CNN recipe (configs/coco_fasterrcnn_resnet50_fpn.py: SGD at lr 0.02 for a global
batch of 16, 1000 warm-up iterations, x0.1 at epochs 16 and 22, 26 epochs, flip, 800/1333,
trainable_backbone_layers 3) with the mask branch: the instance masks of the annotation files
(polygons and RLE, decoded by pycocotools) move with the image; val2017's crowd regions are
COCO's ignore regions; COCO box and segm AP over val2017 (val_ap, val_mask_ap...), the best
checkpoint by mask AP.  Predicted masks are pasted and encoded at each image's original size.

    jaxvision train --config configs/coco_maskrcnn_resnet50_fpn.py --workdir runs/coco_mask \
        --config.data.coco.root=/data/coco \
        --config.model.pretrained_backbone=resnet50-0676ba61.pth   # --weights-backbone

Differences to know, beside the Faster R-CNN recipe's (one padded canvas, no aspect-ratio
grouping): the ground-truth masks of an eval batch are those resized to the canvas, scaled back
to the original size by the nearest rule, not the file's own polygons.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from coco_fasterrcnn_resnet50_fpn import get_config as fasterrcnn_config  # noqa: E402


def get_config():
    c = fasterrcnn_config()
    c.model.name = "maskrcnn_resnet50_fpn"
    c.data.detection.update(masks=True, crowd=True)
    return c

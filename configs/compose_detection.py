"""A composed detector: FCOS on a VGG-11 (BatchNorm) + FPN, from scratch on the built-in `shapes`
boxes, sized for a 2-core CPU (the quickstart's data and schedule).  The backbone is any
registered classification model:

    jaxvision train --config configs/compose_detection.py --workdir runs/compdet
    jaxvision train --config configs/compose_detection.py --workdir runs/compdet2 \
        --config.model.kwargs.backbone=efficientnet_b0
    jaxvision eval --workdir runs/compdet            # COCO AP, AP50, ...

``model.name`` is the head (``fcos`` or ``retinanet``), ``model.kwargs`` the composition:
``backbone`` (its C3..C5, chosen from its feature_info), ``neck`` and their kwargs.
"""
import os

from jaxvision.train.config import load_config_file


def get_config():
    # the quickstart's data, optimiser and schedule; the model composed instead of a preset
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "detection_quickstart.py"))
    c.model.name = "fcos"
    # vgg11_bn: plain 3x3 stages with wide C3..C5 (256, 512, 512 channels) learn from scratch
    # within this budget; narrow bottleneck backbones (regnet_x_400mf, shufflenet_v2_x1_0) stay
    # near AP50 0.2 here (docs/performance.md, "The compose configs")
    # a 64-channel FPN and two convs per head tower: the CPU's budget; a lower score threshold
    # than torchvision's 0.2 so AP sees the whole curve
    c.model.kwargs = dict(backbone="vgg11_bn", neck="fpn",
                          neck_kwargs=dict(out_channels=64), head_kwargs=dict(num_convs=2),
                          score_thresh=0.05, detections_per_img=20)
    return c

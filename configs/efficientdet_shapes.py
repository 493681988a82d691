"""EfficientDet-D0 (efficientnet_b0 + BiFPN + EfficientDet's heads) from scratch on the built-in
`shapes` boxes: the detection quickstart's data, schedule and evaluation (4 shape kinds at
64 px, COCO box AP over the validation split) with this detector.

    jaxvision train --config configs/efficientdet_shapes.py --workdir runs/effdet
    jaxvision eval --workdir runs/effdet
"""
import os

from jaxvision.train.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(__file__), "detection_quickstart.py"))
    c.model.name = "efficientdet_d0"
    # a lower score threshold than 0.05 leaves AP the whole curve; 20 boxes cover 4 shapes
    c.model.kwargs = dict(score_thresh=0.01, detections_per_img=20)
    c.optimizer.lr = 0.002
    return c

"""A composed segmenter: DeepLabV3+ on a MobileNetV2 (its stride-4 map to the decoder, its
last map to the ASPP), from scratch on the built-in `shapes` masks, sized for a 2-core CPU
(the quickstart's data and optimiser, twice its epochs).  The backbone is any registered
classification model:

    jaxvision train --config configs/compose_segmentation.py --workdir runs/compseg
    jaxvision train --config configs/compose_segmentation.py --workdir runs/compseg2 \
        --config.model.kwargs.backbone=shufflenet_v2_x1_0
    jaxvision eval --workdir runs/compseg            # mean IoU, pixel accuracy, per class

``model.name`` is the head (``deeplabv3plus``, ``deeplabv3``, ``fcn``, ``lraspp``),
``model.kwargs`` the composition (``backbone``, ``output_stride`` where the family dilates).
"""
import os

from jaxvision.train.config import load_config_file


def get_config():
    # the quickstart's data and optimiser; the model composed instead of a preset
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "segmentation_quickstart.py"))
    c.model.name = "deeplabv3plus"
    c.model.kwargs = dict(backbone="mobilenet_v2",
                          head_kwargs=dict(head_channels=64, atrous_rates=(6, 12, 18)))
    # twice the quickstart's epochs: a MobileNetV2 from scratch learns the masks more slowly
    # than a ResNet-18 (docs/performance.md, "The compose configs")
    c.train.epochs = 6
    return c

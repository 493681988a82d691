"""Segmentation quickstart: DeepLabV3+ (ResNet-18) from scratch on the built-in `shapes` masks,
sized for a 2-core CPU (background + 4 shape kinds; mean IoU over the 5 classes).

    jaxvision train --config configs/segmentation_quickstart.py --workdir runs/segq
    jaxvision eval --workdir runs/segq
    jaxvision predict --workdir runs/segq img.png      # writes runs/segq/predictions/img.png
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.task = "segmentation"
    c.model.name = "deeplabv3plus_resnet18"
    c.model.kwargs = {"head_channels": 64}  # a narrow ASPP/decoder: the CPU's budget
    c.data.source = "shapes"
    c.data.shapes.update(num_classes=4, num_train=2048, num_val=256, image_size=64)
    c.data.image_size = 64  # the train crop
    c.data.resize_size = 64  # eval at the source size: every mask pixel as generated
    # mild scale jitter: a 0.5x shape at 64 px is a few pixels wide
    c.data.segmentation.update(scale_range=(0.75, 1.25), hflip=True)
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.data.num_workers = 1
    c.optimizer.update(name="adamw", lr=0.002, weight_decay=1e-4, wd_exclude_norm_bias=True)
    c.schedule.update(name="polynomial", power=0.9, unit="step")
    c.schedule.warmup.update(length=20, unit="step", method="linear", start_factor=0.1)
    c.train.update(epochs=3, log_every=16, eval_every_epochs=1)
    c.checkpoint.keep = 2
    return c

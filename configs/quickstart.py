"""Quickstart: resnet18 from scratch on the built-in `shapes` data, sized for a 2-core CPU.

    jaxvision train --config configs/quickstart.py --workdir runs/quickstart
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet18"
    c.data.source = "shapes"
    c.data.shapes.update(num_classes=4, num_train=2048, num_val=512, image_size=32)
    c.data.image_size = 32
    c.data.resize_size = 32
    # shapes are small at 32 px: a random crop can cut the shape out, so only flip
    c.data.augment.update(random_resized_crop=False, hflip=True)
    c.data.batch_size = 32
    c.data.eval_batch_size = 256
    # 32-px shapes are cheap to make: a worker process would only add its start-up before the
    # first step and win nothing over the run (docs/performance.md, "The quickstart")
    c.data.num_workers = 0
    c.optimizer.update(name="adamw", lr=0.002, weight_decay=1e-4, wd_exclude_norm_bias=True)
    c.schedule.update(name="cosine", unit="step")
    c.schedule.warmup.update(length=30, unit="step", method="linear", start_factor=0.1)
    c.train.update(epochs=6, log_every=16, eval_every_epochs=2)
    c.checkpoint.keep = 2
    return c

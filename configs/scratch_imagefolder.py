"""resnet18 from scratch on a small image folder: the recipe a plain torchvision script would use
(SGD momentum 0.9 + per-step cosine, batch 64, 15 epochs, flip only), nothing tuned for jaxvision.

    jaxvision train --config configs/scratch_imagefolder.py --workdir runs/scratch \\
        --config.data.imagefolder.root=DATA

DATA/train/<class>/*.png and DATA/val/<class>/*.png, images of image_size pixels (32 here).
scripts/scratch_vs_torchvision.py writes such a folder and times this config against the same
recipe written with torchvision.
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet18"  # num_classes 0: the folder's class count
    c.data.source = "imagefolder"
    c.data.image_size = 32
    c.data.resize_size = 32  # eval: Resize(32) + CenterCrop(32), the identity on 32-px images
    # at 32 px a random crop can cut a small object out: flip only
    c.data.augment.update(random_resized_crop=False, hflip=True)
    c.data.batch_size = 64
    c.data.eval_batch_size = 256
    c.data.num_workers = 0  # 32-px PNGs decode in microseconds: a worker would only add start-up
    # lr 0.1 stayed at chance (val top-1 0.18 after 15 epochs) on this 1,200-image folder
    c.optimizer.update(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4)
    c.schedule.update(name="cosine", unit="step")
    c.train.update(epochs=15, log_every=20, eval_every_epochs=1)
    c.checkpoint.keep = 2
    return c

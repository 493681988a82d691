"""Fine-tune a pretrained backbone on an image folder: new head, frozen stem and first stages.

    jaxvision convert resnet18 resnet18.pth --out weights/resnet18   # or pass the .pth itself
    jaxvision train --config configs/finetune_imagefolder.py --workdir runs/ft \\
        --config.model.pretrained=weights/resnet18 --config.data.imagefolder.root=DATA

DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg (or data.imagefolder.val_fraction=0.1).
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet18"
    c.model.pretrained_strict = False  # the new head is initialised, the rest loaded
    c.data.source = "imagefolder"
    c.data.image_size = 224
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.num_workers = 2
    c.data.augment.update(random_resized_crop=True, scale=(0.25, 1.0), hflip=True)
    # the pretrained stem and stages 1-2 stay fixed, their BatchNorm statistics too
    c.freeze.update(frozen_stages=2, norm_eval=True)
    c.optimizer.update(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    c.schedule.update(name="cosine", unit="step")
    c.schedule.warmup.update(length=1, unit="epoch", method="linear", start_factor=0.1)
    c.train.update(epochs=10, label_smoothing=0.1, log_every=20, eval_every_epochs=1)
    c.checkpoint.keep = 2
    return c

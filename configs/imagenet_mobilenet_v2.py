"""MobileNetV2 on ImageNet-1k: torchvision's recipe (IMAGENET1K_V1, 71.88 top-1).

    jaxvision train --config configs/imagenet_mobilenet_v2.py --workdir runs/mbv2 \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification, 8 GPUs x 32 images = 256 a step:
    train.py --model mobilenet_v2 --epochs 300 --lr 0.045 --wd 0.00004 \
        --lr-step-size 1 --lr-gamma 0.98
The lr 0.045 belongs to that global batch of 256; scale it linearly if data.batch_size changes.
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.update(name="mobilenet_v2", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=224, resize_size=256, interpolation="bilinear",
                  batch_size=256, eval_batch_size=256)
    c.data.augment.update(random_resized_crop=True, scale=(0.08, 1.0), hflip=True)
    c.optimizer.update(name="sgd", lr=0.045, momentum=0.9, weight_decay=4e-5,
                       wd_exclude_norm_bias=False)
    c.schedule.update(name="step", unit="epoch", step_size=1, gamma=0.98)
    c.schedule.warmup.length = 0
    c.train.epochs = 300
    return c

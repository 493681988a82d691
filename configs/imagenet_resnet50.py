"""ResNet-50 on ImageNet-1k: torchvision's V1 recipe (IMAGENET1K_V1, 76.13 top-1).

    jaxvision train --config configs/imagenet_resnet50.py --workdir runs/r50 \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification (8 GPUs x 32 images):
    train.py --model resnet50   # SGD lr 0.1, momentum 0.9, wd 1e-4, 90 epochs, StepLR 30 x 0.1
It reads ImageNet through tfds ("imagenet2012", prepared beforehand: nothing downloads here).

The V2 recipe (IMAGENET1K_V2, 80.86 top-1) adds what this trainer does not have yet: 600
epochs, batch 1024, lr 0.5 cosine after 5 linear warm-up epochs (start 0.01), label smoothing
0.1, wd 2e-5 without norm decay (optimizer.wd_exclude_norm_bias), EMA, and mixup 0.2 / cutmix
1.0 / TrivialAugmentWide / random erasing 0.1 / repeated-augment sampling / train crop 176 with
eval resize 232 -- the augmentations are not supported.
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.update(name="resnet50", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=224, resize_size=256, interpolation="bilinear",
                  batch_size=256, eval_batch_size=256)
    c.data.augment.update(random_resized_crop=True, scale=(0.08, 1.0), hflip=True)
    c.optimizer.update(name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                       wd_exclude_norm_bias=False)
    c.schedule.update(name="step", unit="epoch", step_size=30, gamma=0.1)
    c.schedule.warmup.length = 0
    c.train.epochs = 90
    return c

"""MobileNetV3-Large on ImageNet-1k: torchvision's recipe (IMAGENET1K_V1, 74.042 top-1).

    jaxvision train --config configs/imagenet_mobilenet_v3_large.py --workdir runs/mbv3l \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification (8 GPUs x 128 images, a global batch of 1024):
    train.py --model mobilenet_v3_large --epochs 600 --opt rmsprop --batch-size 128 \
        --lr 0.064 --wd 0.00001 --lr-step-size 2 --lr-gamma 0.973 --auto-augment imagenet \
        --random-erase 0.2

    torchvision flag                 this config
    --batch-size 128 (x 8 GPUs)      data.batch_size = 1024 (global)
    --opt rmsprop (train.py: eps     optimizer: "rmsprop", eps = 0.0316, alpha = 0.9,
      0.0316, alpha 0.9), momentum     momentum = 0.9 (the script's default)
    --lr 0.064, --wd 0.00001         optimizer.lr = 0.064, weight_decay = 1e-5 (all params)
    --lr-step-size 2 --lr-gamma 0.973 schedule: "step", unit "epoch", step_size 2, gamma 0.973
    --epochs 600                     train.epochs = 600
    --auto-augment imagenet          data.augment.policy = "autoaugment", its policy
                                     "imagenet" (bilinear: the presets pass --interpolation)
    --random-erase 0.2               data.augment.random_erasing = 0.2
    crop 224, resize 256 (defaults)  data.image_size = 224, resize_size = 256
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.update(name="mobilenet_v3_large", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=224, resize_size=256, interpolation="bilinear",
                  batch_size=1024, eval_batch_size=1024)
    c.data.augment.update(random_resized_crop=True, scale=(0.08, 1.0), hflip=True,
                          policy="autoaugment", random_erasing=0.2)
    c.data.augment.autoaugment.policy = "imagenet"
    c.optimizer.update(name="rmsprop", lr=0.064, momentum=0.9, eps=0.0316, alpha=0.9,
                       weight_decay=1e-5, wd_exclude_norm_bias=False)
    c.schedule.update(name="step", unit="epoch", step_size=2, gamma=0.973)
    c.schedule.warmup.length = 0
    c.train.epochs = 600
    return c

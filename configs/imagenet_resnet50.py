"""ResNet-50 on ImageNet-1k: torchvision's V2 recipe (IMAGENET1K_V2, 80.858 top-1).

    jaxvision train --config configs/imagenet_resnet50.py --workdir runs/r50 \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

It reads ImageNet through tfds ("imagenet2012", prepared beforehand: nothing downloads here).
torchvision references/classification (8 GPUs x 128 images, a global batch of 1024):
    train.py --model resnet50 --batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr \
        --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment ta_wide --epochs 600 \
        --random-erase 0.1 --weight-decay 0.00002 --norm-weight-decay 0.0 \
        --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --train-crop-size 176 \
        --model-ema --val-resize-size 232 --ra-sampler --ra-reps 4

    torchvision flag                 this config (jaxvision.train.recipes.torchvision_v2_recipe
                                     sets the flags the V2 recipes share)
    --batch-size 128 (x 8 GPUs)      data.batch_size = 1024 (global)
    --lr 0.5, --opt sgd, --momentum  optimizer.lr = 0.5, name = "sgd", momentum = 0.9
    --lr-scheduler cosineannealinglr schedule.name = "cosine", unit = "epoch" (stepped per epoch;
                                     T_max = epochs - warm-up, schedule.total = None)
    --lr-warmup-epochs 5, linear     schedule.warmup: length = 5, unit = "epoch", "linear"
    --lr-warmup-decay 0.01 (default) schedule.warmup.start_factor = 0.01
    --epochs 600                     train.epochs = 600
    --weight-decay 0.00002           optimizer.weight_decay = 2e-5
    --norm-weight-decay 0.0          optimizer.wd_exclude_norm_bias = True (also spares
                                     fc.bias, which torchvision decays: the one deviation)
    --label-smoothing 0.1            train.label_smoothing = 0.1
    --mixup-alpha 0.2                train.mixup_alpha = 0.2
    --cutmix-alpha 1.0               train.cutmix_alpha = 1.0
    --auto-augment ta_wide           data.augment.policy = "trivialaugment" (31 bins, bilinear:
                                     the presets pass --interpolation to the policy)
    --random-erase 0.1               data.augment.random_erasing = 0.1 (value 0, after
                                     normalising)
    --train-crop-size 176            data.image_size = 176
    --val-resize-size 232            data.resize_size = 232
    --val-crop-size 224 (default)    data.eval_image_size = 224
    --interpolation bilinear         data.interpolation = "bilinear"
    --model-ema (decay 0.99998,      train.ema_decay = 0.99998, ema_steps = 32,
      --model-ema-steps 32)          ema_reference = True (decay adjusted, warm-up copies)
    --ra-sampler --ra-reps 4         data.repeated_augment = 4

The V1 recipe (76.13): SGD lr 0.1, wd 1e-4, StepLR 30 x 0.1, 90 epochs, batch 256, 224 crop,
256 resize, no policy, mixup, cutmix, erasing, EMA or repeated sampling.
"""
from jaxvision.train.defaults import default_config
from jaxvision.train.recipes import torchvision_v2_recipe


def get_config():
    c = torchvision_v2_recipe(default_config())
    c.model.update(name="resnet50", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=176, resize_size=232, eval_image_size=224, batch_size=1024,
                  eval_batch_size=1024)
    c.optimizer.update(name="sgd", lr=0.5, momentum=0.9, nesterov=False, weight_decay=2e-5)
    return c

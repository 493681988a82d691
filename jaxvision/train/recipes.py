"""Flags that several of torchvision's published recipes share, for configs/*.py to start from."""


def torchvision_v2_recipe(c):
    """``c`` with the flags common to torchvision's "V2" recipes (ResNet-50 IMAGENET1K_V2,
    EfficientNetV2, ConvNeXt): ``--lr-scheduler cosineannealinglr --lr-warmup-epochs 5
    --lr-warmup-method linear`` (start 0.01), ``--auto-augment ta_wide --random-erase 0.1
    --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --norm-weight-decay 0.0
    --model-ema`` (0.99998 every 32 steps) ``--ra-sampler --ra-reps 4 --epochs 600``. The
    optimizer, lr, weight decay and sizes stay in each config."""
    c.data.repeated_augment = 4
    c.data.interpolation = "bilinear"
    c.data.augment.update(random_resized_crop=True, hflip=True, policy="trivialaugment",
                          random_erasing=0.1)
    c.data.augment.trivialaugment.num_magnitude_bins = 31
    c.optimizer.wd_exclude_norm_bias = True
    c.schedule.update(name="cosine", unit="epoch", eta_min=0.0)
    c.schedule.warmup.update(length=5, unit="epoch", method="linear", start_factor=0.01)
    c.train.update(epochs=600, label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0,
                   ema_decay=0.99998, ema_steps=32, ema_reference=True)
    return c

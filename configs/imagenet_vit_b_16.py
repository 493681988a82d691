"""ViT-B/16 on ImageNet-1k: torchvision's recipe (IMAGENET1K_V1, 81.07 top-1).

    jaxvision train --config configs/imagenet_vit_b_16.py --workdir runs/vit_b_16 \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification (the published weights: 8 nodes x 8 GPUs x 64 images,
a global batch of 4096; the README's single-node command shows --batch-size 512 for 8 GPUs):
    train.py --model vit_b_16 --epochs 300 --batch-size 64 --opt adamw --lr 0.003 --wd 0.3 \
        --lr-scheduler cosineannealinglr --lr-warmup-method linear --lr-warmup-epochs 30 \
        --lr-warmup-decay 0.033 --amp --label-smoothing 0.11 --mixup-alpha 0.2 \
        --auto-augment ra --clip-grad-norm 1 --ra-sampler --cutmix-alpha 1.0 --model-ema

    torchvision flag                 this config
    --batch-size 64 (x 64 GPUs)      data.batch_size = 4096 (global)
    --opt adamw --lr 0.003 --wd 0.3  optimizer: adamw, lr 0.003, weight_decay 0.3
    --clip-grad-norm 1               optimizer.clip_grad_norm = 1.0
    --lr-scheduler cosineannealinglr schedule.name = "cosine", unit = "epoch"
    --lr-warmup-epochs 30, linear,   schedule.warmup: 30 epochs, "linear",
      --lr-warmup-decay 0.033          start_factor = 0.033
    --epochs 300                     train.epochs = 300
    --label-smoothing 0.11           train.label_smoothing = 0.11
    --mixup-alpha 0.2                train.mixup_alpha = 0.2
    --cutmix-alpha 1.0               train.cutmix_alpha = 1.0
    --auto-augment ra                data.augment.policy = "randaugment" (2 ops, magnitude 9
                                     of 31 bins, bilinear: --ra-magnitude's default)
    --ra-sampler (--ra-reps 3)       data.repeated_augment = 3
    --model-ema (0.99998, steps 32)  train.ema_decay = 0.99998, ema_steps = 32,
                                     ema_reference = True
    --amp                            model.dtype = "bfloat16" (float32 params)
    --val-resize-size 256, crop 224  data.resize_size = 256, image_size = 224 (defaults)
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.model.update(name="vit_b_16", num_classes=1000, dtype="bfloat16")
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=224, resize_size=256, interpolation="bilinear",
                  batch_size=4096, eval_batch_size=1024)
    c.data.augment.update(random_resized_crop=True, scale=(0.08, 1.0), hflip=True)
    c.optimizer.update(name="adamw", lr=0.003, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.3,
                       wd_exclude_norm_bias=False, clip_grad_norm=1.0)
    c.schedule.update(name="cosine", unit="epoch", eta_min=0.0)
    c.schedule.warmup.update(length=30, unit="epoch", method="linear", start_factor=0.033)
    c.data.repeated_augment = 3
    c.data.augment.update(policy="randaugment")
    c.data.augment.randaugment.update(num_ops=2, magnitude=9, num_magnitude_bins=31)
    c.train.update(epochs=300, label_smoothing=0.11, mixup_alpha=0.2, cutmix_alpha=1.0,
                   ema_decay=0.99998, ema_steps=32, ema_reference=True)
    return c

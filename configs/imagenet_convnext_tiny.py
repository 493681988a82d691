"""ConvNeXt-Tiny on ImageNet-1k: torchvision's recipe (IMAGENET1K_V1, 82.52 top-1).

    jaxvision train --config configs/imagenet_convnext_tiny.py --workdir runs/convnext_t \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification (the README's command: 8 GPUs x 128 images):
    train.py --model convnext_tiny --batch-size 128 --opt adamw --lr 1e-3 \
        --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear \
        --auto-augment ta_wide --epochs 600 --random-erase 0.1 --label-smoothing 0.1 \
        --mixup-alpha 0.2 --cutmix-alpha 1.0 --weight-decay 0.05 --norm-weight-decay 0.0 \
        --train-crop-size 176 --model-ema --val-resize-size 232 --ra-sampler --ra-reps 4
and the published weights' val resize tuned afterwards to 236 (their transforms).

The flags map as in configs/imagenet_resnet50.py (same recipe family); the differences:
    --opt adamw --lr 1e-3            optimizer: "adamw", lr 1e-3 (betas, eps: torch's defaults)
    --weight-decay 0.05              optimizer.weight_decay = 0.05
    val resize 236 (the weights')    data.resize_size = 236, eval_image_size = 224
--norm-weight-decay 0.0 maps to optimizer.wd_exclude_norm_bias, which also spares the biases
of the convolutions and linear layers that torchvision decays (the one deviation).
"""
from jaxvision.train.defaults import default_config
from jaxvision.train.recipes import torchvision_v2_recipe


def get_config():
    c = torchvision_v2_recipe(default_config())
    c.model.update(name="convnext_tiny", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=176, eval_image_size=224, resize_size=236, batch_size=1024,
                  eval_batch_size=1024)
    c.optimizer.update(name="adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    return c

"""EfficientNetV2-S on ImageNet-1k: torchvision's recipe (IMAGENET1K_V1, 84.228 top-1).

    jaxvision train --config configs/imagenet_efficientnet_v2_s.py --workdir runs/effv2s \
        --config.data.tfds.data_dir=/path/to/tensorflow_datasets

torchvision references/classification (the README's command: 8 GPUs x 128 images):
    train.py --model efficientnet_v2_s --batch-size 128 --lr 0.5 \
        --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear \
        --auto-augment ta_wide --epochs 600 --random-erase 0.1 --label-smoothing 0.1 \
        --mixup-alpha 0.2 --cutmix-alpha 1.0 --weight-decay 0.00002 --norm-weight-decay 0.0 \
        --train-crop-size 300 --model-ema --val-crop-size 384 --val-resize-size 384 \
        --ra-sampler --ra-reps 4

The flags map as in configs/imagenet_resnet50.py (same recipe family); the differences:
    --train-crop-size 300            data.image_size = 300
    --val-crop-size 384              data.eval_image_size = 384
    --val-resize-size 384            data.resize_size = 384
--norm-weight-decay 0.0 maps to optimizer.wd_exclude_norm_bias, which also spares the biases
of the convolutions and linear layers that torchvision decays (the one deviation).
"""
from jaxvision.train.defaults import default_config
from jaxvision.train.recipes import torchvision_v2_recipe


def get_config():
    c = torchvision_v2_recipe(default_config())
    c.model.update(name="efficientnet_v2_s", num_classes=1000)
    c.data.source = "tfds"
    c.data.tfds.update(name="imagenet2012", train_split="train", val_split="validation")
    c.data.update(image_size=300, eval_image_size=384, resize_size=384, batch_size=1024,
                  eval_batch_size=512)
    c.optimizer.update(name="sgd", lr=0.5, momentum=0.9, weight_decay=2e-5)
    return c

"""DeepLabV3-ResNet50 on PASCAL VOC, torchvision's reference recipe (references/segmentation):

    torchrun --nproc_per_node=8 train.py --model deeplabv3_resnet50 --aux-loss --lr 0.02 -b 4 \
        --epochs 30 --weights-backbone ResNet50_Weights.IMAGENET1K_V1

SGD (momentum 0.9, weight decay 1e-4) at lr 0.02 for a global batch of 32 (4 per GPU x 8), the
aux FCN head at 0.5 loss weight and 10x the lr, PolynomialLR(power 0.9) stepped every iteration;
train: random resize of the shorter side to [260, 1040], flip, random 480 crop (padded: image 0,
mask 255); eval: shorter side 520.

    jaxvision train --config configs/voc_deeplabv3_resnet50.py --workdir runs/voc \
        --config.data.voc.root=/data/VOCdevkit/VOC2012

torchvision starts from ImageNet backbone weights (``--weights-backbone``): give torchvision's
ResNet-50 state_dict as ``--config.model.pretrained_backbone=resnet50-0676ba61.pth``
(``model.pretrained`` loads a whole segmenter instead).
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.task = "segmentation"
    c.model.name = "deeplabv3_resnet50"
    c.segmentation.update(aux_loss=True, aux_weight=0.5, aux_lr_mult=10.0)
    c.data.source = "voc"
    c.data.voc.update(root="", train_split="train", val_split="val", num_classes=21)
    c.data.image_size = 480  # the train crop
    c.data.resize_size = 520  # the base size: eval resizes the shorter side to it
    c.data.segmentation.update(scale_range=(0.5, 2.0), hflip=True,
                               eval_size=800)  # VOC's 500x375 at shorter side 520: 693x520
    c.data.batch_size = 32
    c.data.eval_batch_size = 16
    c.data.num_workers = 16
    c.optimizer.update(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4)
    c.schedule.update(name="polynomial", power=0.9, unit="step")
    c.schedule.warmup.update(length=0)
    c.train.update(epochs=30, log_every=20, eval_every_epochs=1)
    c.checkpoint.keep = 2
    return c

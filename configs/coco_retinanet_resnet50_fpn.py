"""RetinaNet-ResNet50-FPN on COCO 2017, torchvision's reference recipe (references/detection):

    torchrun --nproc_per_node=8 train.py --dataset coco --model retinanet_resnet50_fpn \
        --epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 --lr 0.01 \
        --weights-backbone ResNet50_Weights.IMAGENET1K_V1

SGD (momentum 0.9, weight decay 1e-4) at lr 0.01 for a global batch of 16 (2 per GPU x 8),
linear warm-up from 0.001x over the first 1000 iterations, x0.1 at epochs 16 and 22, 26 epochs;
train: horizontal flip; the model resizes the shorter side to 800 (longer at most 1333);
conv1 + layer1 frozen (trainable_backbone_layers 3), FrozenBatchNorm in the backbone; the best
checkpoint by COCO box AP on val2017.

    jaxvision train --config configs/coco_retinanet_resnet50_fpn.py --workdir runs/coco \
        --config.data.coco.root=/data/coco

Differences to know: batches are padded to one 1344x1344 canvas (jit needs one shape; torch
pads each batch to its own largest image), so a step costs more than torchvision's; there is
no aspect-ratio grouping. torchvision starts from ImageNet backbone weights
(``--weights-backbone``): give torchvision's ResNet-50 state_dict as
``--config.model.pretrained_backbone=resnet50-0676ba61.pth`` (``model.pretrained`` loads a whole
detector instead: a torchvision retinanet state_dict or a jaxvision checkpoint).
"""
from jaxvision.train.defaults import default_config


def get_config():
    c = default_config()
    c.task = "detection"
    c.model.name = "retinanet_resnet50_fpn"
    # FrozenBatchNorm with eps 1e-5: the default's eps 0 is that of the published COCO weights,
    # not of the ImageNet backbone this recipe starts from
    c.model.kwargs = dict(trainable_backbone_layers=3, norm_eps=1e-5)
    c.data.source = "coco"
    c.data.coco.update(root="", train_ann="annotations/instances_train2017.json",
                       train_images="train2017", val_ann="annotations/instances_val2017.json",
                       val_images="val2017")
    c.data.image_size = 800  # min_size
    c.data.detection.update(max_size=1333, canvas=1344, scale_range=(1.0, 1.0), hflip=True,
                            max_boxes=100)
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.data.num_workers = 16
    c.optimizer.update(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    # torchvision's warm-up runs per step inside epoch 0 and MultiStepLR per epoch; here both
    # are per step, milestones counted after the warm-up (SequentialLR): epochs 16 and 22 of
    # train2017's 117,266 annotated images (the reference drops the unannotated) at batch 16
    steps_per_epoch = 117_266 // 16
    c.schedule.update(name="multistep", unit="step", gamma=0.1,
                      milestones=(16 * steps_per_epoch - 1000, 22 * steps_per_epoch - 1000))
    c.schedule.warmup.update(length=1000, unit="step", method="linear", start_factor=0.001)
    c.train.update(epochs=26, log_every=20, eval_every_epochs=1)
    c.checkpoint.keep = 2
    return c

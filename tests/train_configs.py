"""Small training configs for the tests (resnet18 on 32-px shapes, a few steps)."""
from jaxvision.train.defaults import default_config


def tiny_config(**train):
    c = default_config()
    c.model.name = "resnet18"
    c.data.shapes.update(num_classes=3, num_train=128, num_val=40, image_size=32)
    c.data.update(image_size=32, resize_size=32, batch_size=8, eval_batch_size=16)
    c.data.augment.update(random_resized_crop=True, scale=(0.5, 1.0))
    c.optimizer.update(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4)
    c.schedule.update(name="cosine", unit="step")
    c.schedule.warmup.update(length=2, unit="step")
    c.train.update(steps=12, log_every=4, eval_every_epochs=1)
    c.checkpoint.update(keep=2, save_every_steps=4)
    c.logging.update(progress_bar=False, num_images=4)
    c.train.update(**train)
    return c


RESNET18_CONVS = 20  # the stem, sixteen 3x3s, three 1x1 shortcuts


def fast_path(chosen) -> bool:
    """Whether each resnet18 trace at 32 px in ``chosen`` took the CPU rewrites: its 1x1
    shortcuts as GEMMs, the 3x3s on the 2x2 and 1x1 maps of layer3 and layer4 by im2col (on
    any CPU class)."""
    traces = [chosen[i:i + RESNET18_CONVS] for i in range(0, len(chosen), RESNET18_CONVS)]
    return bool(traces) and len(chosen) % RESNET18_CONVS == 0 and all(
        t.count("einsum") == 3 and t.count("im2col") >= 8 for t in traces)


# the smallest Faster R-CNN the engine trains: resnet18 under a 16-channel FPN, a 32-wide box
# head, a handful of proposals and sampled RoIs for 32-px images
TINY_RCNN = dict(backbone="resnet18", norm="batch", norm_eps=1e-5, fpn_channels=16,
                 representation_size=32, trainable_backbone_layers=5, min_size=32, max_size=32,
                 rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=16,
                 rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=16,
                 rpn_batch_size_per_image=32, box_batch_size_per_image=16,
                 box_detections_per_img=4, box_candidates_per_img=32)


def tiny_rcnn_config(**train):
    """Faster R-CNN on 32-px shapes, trained through the detection task; a checkpoint every 2
    steps, one evaluation (of two images) at the end, no pictures."""
    c = default_config()
    c.task = "detection"
    c.model.name = "fasterrcnn_resnet50_fpn"
    c.model.kwargs = dict(TINY_RCNN)
    c.data.shapes.update(num_classes=2, num_train=64, num_val=2, image_size=32)
    c.data.update(image_size=32, batch_size=2, eval_batch_size=2, num_workers=0)
    c.data.detection.update(max_size=32, canvas=32, scale_range=(0.75, 1.0), max_boxes=2)
    c.optimizer.update(name="adamw", lr=0.001, weight_decay=0.0)
    c.schedule.warmup.update(length=2, unit="step")
    c.train.update(steps=12, log_every=4, eval_every_epochs=100)
    c.checkpoint.update(keep=1, save_every_steps=2)
    c.logging.update(progress_bar=False, num_images=0, tensorboard=False)
    c.train.update(**train)
    return c

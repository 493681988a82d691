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

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

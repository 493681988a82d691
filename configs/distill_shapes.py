"""Distillation on `shapes`: a small student learns from the quickstart's resnet18.

    jaxvision train --config configs/quickstart.py --workdir runs/quickstart      # the teacher
    jaxvision train --config configs/distill_shapes.py --workdir runs/distill \\
        --config.teacher.pretrained=runs/quickstart
    # the same student, steps and seed without the teacher (task classification):
    jaxvision train --config configs/distill_shapes.py:baseline --workdir runs/distill_baseline

The data, augmentation, optimizer and seed are the quickstart's; only the model, the schedule's
length and the task differ between the two arms (docs/performance.md has no part in it: the
numbers are in the README).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from quickstart import get_config as quickstart  # noqa: E402


def get_config(arm: str = "distill"):
    if arm not in ("distill", "baseline"):
        raise ValueError(f"configs/distill_shapes.py:{arm}: expected :distill or :baseline")
    c = quickstart()
    c.model.name = "shufflenet_v2_x0_5"
    c.train.update(epochs=18, eval_every_epochs=6)
    if arm == "distill":
        c.task = "distillation"
        c.teacher.update(name="resnet18", pretrained="runs/quickstart")
        c.distill.update(temperature=4.0, alpha=0.5)
    return c

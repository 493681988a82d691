"""Knowledge distillation with a softmax temperature (Hinton, Vinyals and Dean, 2015):
``task = "distillation"``.

A student classifier (``model``) learns from a frozen teacher's softened distribution as well
as from the labels: ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) *
CE(s, labels)`` (``distill.temperature``, ``distill.alpha``). The teacher (``teacher.name``
with ``teacher.pretrained``; train/teacher.py loads it) runs in eval mode inside the jitted
train step and hands its logits to the loss in the batch. Everything else, the data, the
augmentations and the eval sums, is classification's.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import optax

from jaxvision.tasks.classification import Classification, split_outputs


def kd_loss(student_logits, teacher_logits, temperature: float):
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch: what
    ``F.kl_div(F.log_softmax(s / T), F.softmax(t / T), reduction="batchmean") * T * T`` gives.

    Dividing the logits by ``T`` scales the soft targets' gradient by ``1 / T^2``; the ``T^2``
    factor keeps its size comparable to the hard-label term's as ``T`` changes (Hinton et al.,
    section 2), so ``alpha`` means the same at every temperature. No gradient reaches the
    teacher's logits."""
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    kl = optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(s, -1),
                                                     jax.nn.log_softmax(t, -1))
    return kl.mean() * temperature ** 2


def distill_loss(student_logits, teacher_logits, hard_loss, temperature: float, alpha: float):
    """``alpha * kd_loss + (1 - alpha) * hard_loss`` (``hard_loss``: the labels' cross-entropy)."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard_loss


class Distillation(Classification):
    name = "distillation"
    # a resume must find the teacher it started with (its name and weights' digest)
    meta_keys = ("model", "num_classes", "task", "teacher")

    def __init__(self, num_classes: int, *classification, temperature: float = 4.0,
                 alpha: float = 0.5, **kw):
        super().__init__(num_classes, *classification, **kw)
        self.temperature, self.alpha = float(temperature), float(alpha)

    @classmethod
    def from_config(cls, config, num_classes):
        task = super().from_config(config, num_classes)
        task.temperature = float(config.distill.temperature)
        task.alpha = float(config.distill.alpha)
        return task

    def loss(self, outputs, batch):
        """Classification's loss (cross-entropy, aux heads, MixUp/CutMix targets) as the hard
        term, mixed with the KD term of ``batch["teacher_logits"]``, the teacher's logits on the
        same (augmented, mixed) images."""
        if "teacher_logits" not in batch:
            raise ValueError("distillation: the batch holds no teacher_logits; the train step "
                             "must be built with the teacher (make_train_step(teacher=...))")
        hard, sums = super().loss(outputs, batch)
        loss = distill_loss(split_outputs(outputs)[0], batch["teacher_logits"], hard,
                            self.temperature, self.alpha)
        return loss, sums


def _number(field, value, ok, expected):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{field} must be {expected}, got {value!r}")


def check_distill(config) -> None:
    """Refuses, before anything is written, a distillation that cannot run: an unknown or
    non-classifier teacher, no weights, a temperature <= 0, an alpha outside [0, 1]; and a
    teacher set for another task (it would be silently unused). The class counts are compared
    once the teacher is loaded."""
    from jaxvision.registry import get_spec, list_models
    from jaxvision.tasks import model_task, task_name

    teacher = config.get("teacher")
    name = task_name(config)
    if name != "distillation":
        if teacher is not None and (teacher.name or teacher.pretrained):
            raise ValueError(f"teacher.name / teacher.pretrained are set but task is {name!r}: "
                             "a teacher is only used with task='distillation'")
        return
    if teacher is None or not teacher.name:
        raise ValueError("task='distillation' needs teacher.name (a registered classifier) and "
                         "teacher.pretrained (its weights)")
    if teacher.name not in list_models():
        raise ValueError(f"teacher.name: unknown model {teacher.name!r} (jaxvision list shows "
                         "the registered ones)")
    kind = model_task(get_spec(teacher.name).family)
    if kind != "classification":
        raise ValueError(f"teacher.name: {teacher.name!r} is a {kind} model; the teacher must "
                         "be a classifier")
    d = config.distill
    _number("distill.temperature", d.temperature, lambda t: math.isfinite(t) and t > 0,
            "a number > 0")
    _number("distill.alpha", d.alpha, lambda a: 0.0 <= a <= 1.0, "in [0, 1]")
    if not teacher.pretrained:
        raise ValueError("teacher.pretrained is empty: the teacher needs its trained weights "
                         "(a torchvision .pth, a 'jaxvision convert' directory or a jaxvision "
                         "train workdir)")
    if not os.path.exists(teacher.pretrained):
        raise FileNotFoundError(f"teacher.pretrained: {teacher.pretrained}: no such file or "
                                "directory")

"""Knowledge distillation with a softmax temperature (Hinton, Vinyals and Dean, 2015).

The student learns from a frozen teacher's softened distribution as well as from the labels:
``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)``.
The teacher (``train.distill``) runs in eval mode inside the jitted train step (train/teacher.py
loads it); this module holds the loss and the checks of the config's values.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import optax


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


def check_distill(config) -> None:
    """Refuses, before anything is written, a ``train.distill`` that cannot run: an unknown or
    non-classifier teacher, no weights, a temperature <= 0, an alpha outside [0, 1], a task
    other than classification. The class counts are compared once the teacher is loaded."""
    from jaxvision.registry import get_spec, list_models
    from jaxvision.tasks import model_task, task_name

    d = config.train.get("distill")
    if d is None or not d.teacher:
        return
    if d.teacher not in list_models():
        raise ValueError(f"train.distill.teacher: unknown model {d.teacher!r} (jaxvision list "
                         "shows the registered ones)")
    family = get_spec(d.teacher).family
    if model_task(family) != "classification":
        raise ValueError(f"train.distill.teacher: {d.teacher!r} is a {model_task(family)} model; "
                         "the teacher must be a classifier")
    if task_name(config) != "classification":
        raise ValueError(f"train.distill.teacher is set: distillation trains classifiers, "
                         f"task is {task_name(config)!r}")
    t = d.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"train.distill.temperature must be a number > 0, got {t!r}")
    a = d.alpha
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
        raise ValueError(f"train.distill.alpha must be in [0, 1], got {a!r}")
    if not d.teacher_weights:
        raise ValueError("train.distill.teacher_weights is empty: the teacher needs its trained "
                         "weights (a torchvision .pth, a 'jaxvision convert' directory or a "
                         "jaxvision train workdir)")
    if not os.path.exists(d.teacher_weights):
        raise FileNotFoundError(f"train.distill.teacher_weights: {d.teacher_weights}: no such "
                                "file or directory")

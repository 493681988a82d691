"""Tasks: what the engine trains (``config.task``). The engine calls a task; it never names a
task's metric."""
from __future__ import annotations

from jaxvision.tasks.base import Task
from jaxvision.tasks.classification import Classification
from jaxvision.tasks.detection import Detection
from jaxvision.tasks.distill import Distillation
from jaxvision.tasks.segmentation import Segmentation

TASKS = {"classification": Classification, "segmentation": Segmentation,
         "detection": Detection, "distillation": Distillation}


def task_name(config) -> str:
    """``config.task``; configs written before tasks existed are classification."""
    name = config.get("task", "classification")
    if name not in TASKS:
        raise ValueError(f"task must be one of {'|'.join(TASKS)}, got {name!r}")
    return name


def data_task(config) -> str:
    """The kind of data ``config.task`` reads (labels, masks, boxes): distillation trains on
    classification's."""
    return TASKS[task_name(config)].data_task


def model_task(family: str) -> str:
    """The task that trains models of a registry ``family``: the one declaring it, else
    classification."""
    return next((n for n, t in TASKS.items() if family in t.model_families), "classification")


def check_model(config) -> None:
    """Refuses, in one line, a ``model.name`` that ``config.task`` cannot train (a classifier
    has no detection loss, a detector no per-pixel logits), or data it cannot train that model
    on (``Task.check_config``); before anything is written."""
    from jaxvision.registry import get_spec, list_models

    name, model = task_name(config), config.model.name
    family = get_spec(model).family
    kind, wants = model_task(family), TASKS[name].data_task
    if kind != wants:
        takes = [m for m in list_models() if model_task(get_spec(m).family) == wants]
        raise ValueError(f"task={name!r} cannot train model.name={model!r}: a {kind} model "
                         f"(family {family}); {name} takes e.g. {', '.join(takes[:3])}")
    TASKS[name].check_config(config)


def build_task(config, num_classes: int) -> Task:
    name = task_name(config)
    if TASKS[name].data_task != "classification":
        t, a = config.train, config.data.augment
        used = {"train.mixup_alpha": t.get("mixup_alpha", 0.0),
                "train.cutmix_alpha": t.get("cutmix_alpha", 0.0),
                "data.augment.policy": a.get("policy"),
                "data.augment.random_erasing": a.get("random_erasing", 0.0),
                "data.repeated_augment": config.data.get("repeated_augment", 0)}
        for field, value in used.items():
            if value:
                raise ValueError(f"{field}={value!r} is a classification augmentation; task "
                                 f"{name!r} does not use it (set it to 0 / None)")
    return TASKS[name].from_config(config, num_classes)


__all__ = ["TASKS", "Task", "Classification", "Detection", "Distillation", "Segmentation",
           "build_task", "check_model", "data_task", "model_task", "task_name"]

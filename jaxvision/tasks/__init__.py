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
    task_class(name)
    return name


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"task must be one of {'|'.join(TASKS)}, got {name!r}")
    return TASKS[name]


def build_data(data_config, model_name: str | None = None, task: str = "classification"):
    """The ``jaxvision.data.Data`` of ``data_config`` for ``task`` (a name of ``TASKS``): sources
    yielding the targets the task trains on, loaded with the task's transforms."""
    from jaxvision.data.loader import make_data  # grain only where data is loaded

    return make_data(data_config, model_name, task_class(task))


def predict_data(data_config, model_name: str | None, task: str, class_names):
    """A ``Data`` without sources: the preprocessing, transforms and class names a model
    trained for ``task`` predicts with, on a machine that need not hold the dataset."""
    from jaxvision.data.loader import predict_data as sourceless

    return sourceless(data_config, model_name, class_names, task_class(task))


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
           "build_data", "build_task", "check_model", "model_task", "predict_data",
           "task_class", "task_name"]

"""A finished (or interrupted) run, back from its workdir: eval, predict, extract; and predict
with a converted or exported weights directory."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxvision.layers import lowering
from jaxvision.train import checkpoint
from jaxvision.train.state import eval_weights
from jaxvision.layers.normalize import normalize


def load_run(workdir: str, log=None):
    """(config, meta, model, eval variables, step) of the best checkpoint, else the latest."""
    config, meta, _, model, variables, step = load_task_run(workdir, log)
    return config, meta, model, variables, step


def load_task_run(workdir: str, log=None):
    """(config, meta, task, model, eval variables, step) of the best checkpoint, else the
    latest; the eval variables are the EMA weights when the best metric is an EMA one
    (``val_top1_ema``, the default of a run with EMA), else the live ones.

    ``log`` (stderr by default) hears which step was taken and why; a step that cannot be read
    is named and the next one back is taken.
    """
    from jaxvision.tasks import TASKS, build_task, task_name
    from jaxvision.train.loop import best_metric, build_model

    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a jaxvision train workdir?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    # the best metric is a class attribute of the task: no class count needed yet
    metric, mode = best_metric(config, TASKS[task_name(config)])
    mgr = checkpoint.manager(workdir, config.checkpoint.keep, metric, mode, read_only=True)
    step, why = checkpoint.best_or_latest(mgr)
    if step is None:
        raise FileNotFoundError(f"{mgr.directory}: holds no checkpoint yet")
    candidates = [step] + sorted((s for s in mgr.all_steps() if s != step), reverse=True)
    for i, s in enumerate(candidates):
        try:
            out = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
        except Exception as e:  # a truncated or missing file: say which, take the next one back
            bad = checkpoint.corrupt(mgr, s, e)
            if i == len(candidates) - 1:
                raise bad from None
            log(f"{bad}; taking step {candidates[i + 1]} instead")
            why = "the newest intact checkpoint"
            continue
        log(f"{workdir}: using checkpoint step {s}, {why}")
        step = s
        break
    mgr.close()
    state, meta = out["state"], out["meta"]
    task = build_task(config, meta["num_classes"])
    model = build_model(config, meta["num_classes"], task)
    # the weights the best metric measured: the EMA's for a ``*_ema`` metric, else the live ones
    variables = eval_weights(state, ema=metric.endswith("_ema"))
    return config, meta, task, model, variables, step


def _data(config):
    from jaxvision.tasks import build_data, task_name

    return build_data(config.data, config.model.name, task_name(config))


def evaluate_run(workdir: str) -> dict:
    """The task's metrics over the whole val split, plus its details (per-class IoU...)."""
    from jaxvision.train.loop import evaluate
    from jaxvision.train.step import jit_eval, make_eval_step, make_mesh

    config, meta, task, model, variables, step = load_task_run(workdir)
    data = _data(config)
    mesh = make_mesh()
    # jitted as the training loop jits it: the same program, so the run's compilation cache
    # already holds it
    eval_step = jit_eval(mesh, make_eval_step(model, task, norm=(data.mean, data.std)),
                         config.get("conv_lowering"))
    result, sums = evaluate(eval_step, variables, data, mesh, task, return_sums=True)
    return {**result, **task.details(sums, meta["class_names"]), "step": step}


def predict(workdir: str, paths, topk: int = 5, out_dir: str | None = None,
            temperature: float = 1.0) -> list[str]:
    """A printable line per image, as the task predicts (classification: the top-k classes,
    probabilities ``softmax(logits / temperature)``; segmentation: writes an overlay PNG per
    image under ``out_dir``, default WORKDIR/predictions)."""
    from jaxvision.tasks import predict_data

    config, meta, task, model, variables, _ = load_task_run(workdir)
    # the run's own record, not the dataset: predict works where the data is not
    data = predict_data(config.data, config.model.name, task.name,
                        meta["class_names"])
    return task.predict(model, variables, paths, data, topk=topk, temperature=temperature,
                        out_dir=out_dir or os.path.join(workdir, "predictions"),
                        conv_lowering=config.get("conv_lowering"))


def predict_weights(weights_dir, paths, topk: int = 5, temperature: float = 1.0):
    """Top-k (name, probability) per image with a converted/exported weights directory, using
    the preprocessing and category names it records; probabilities ``softmax(logits / T)``."""
    import jaxvision as jv
    from jaxvision.convert import store
    from jaxvision.convert.preprocess import spec_preprocessing
    from jaxvision.tasks.classification import top_classes

    meta = store.read_meta(weights_dir)
    model, variables = jv.create_model(meta["model"], pretrained=weights_dir)
    p = meta.get("preprocessing") or spec_preprocessing(jv.model_info(meta["model"]))
    return top_classes(model, variables, paths, p, meta.get("categories"), topk, temperature)


def extract(workdir: str, split: str, out: str) -> int:
    """Pooled backbone embeddings (the model with ``num_classes=0``) and labels to ``out``."""
    config, meta, task, model, variables, _ = load_task_run(workdir)
    if task.data_task != "classification":
        raise ValueError(f"jaxvision extract: pooled embeddings are defined for classification "
                         f"runs; {workdir} is a {task.name} run")
    data = _data(config)
    backbone = model.clone(num_classes=0)
    if split == "train":  # every training example once, without augmentation
        data = dataclasses.replace(data, train_source=data.val_source,
                                   val_source=data.train_source)
    mean, std = data.mean, data.std
    fwd = lowering.jit(lambda v, x: backbone.apply(v, normalize(x, mean, std), train=False),
                       config.get("conv_lowering"))
    feats, labels = [], []
    for batch in data.eval_loader():
        keep = batch["valid"]
        feats.append(np.asarray(fwd(variables, batch["image"]))[keep])
        labels.append(batch["label"][keep])
    emb, lab = np.concatenate(feats), np.concatenate(labels)
    np.savez(out, embeddings=emb, labels=lab, class_names=np.array(meta["class_names"]))
    return len(lab)

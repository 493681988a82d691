"""A finished (or interrupted) run, back from its workdir: eval, predict, extract."""
from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from jaxvision.data import build_data
from jaxvision.data.transforms import eval_image
from jaxvision.train import checkpoint


def load_run(workdir: str, log=None):
    """(config, meta, model, eval variables, step) of the best checkpoint, else the latest.

    ``log`` (stderr by default) hears which step was taken and why; a step that cannot be read
    is named and the next one back is taken.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a jaxvision train workdir?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    ck = config.checkpoint
    mgr = checkpoint.manager(workdir, ck.keep, ck.best_metric, ck.get("best_mode") or None,
                             read_only=True)
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
    from jaxvision.train.loop import build_model

    model = build_model(config, meta["num_classes"])
    ema = state.get("ema_params") is not None
    variables = {"params": state["ema_params" if ema else "params"],
                 "batch_stats": state["ema_batch_stats" if ema else "batch_stats"]}
    return config, meta, model, variables, step


def evaluate_run(workdir: str) -> dict:
    from jaxvision.train.loop import evaluate
    from jaxvision.train.step import make_eval_step, make_mesh

    config, meta, model, variables, step = load_run(workdir)
    data = build_data(config.data, config.model.name)
    mesh = make_mesh()
    eval_step = jax.jit(make_eval_step(model, meta["num_classes"]))
    return {**evaluate(eval_step, variables, data, mesh), "step": step}


def predict(workdir: str, paths, topk: int = 5):
    config, meta, model, variables, _ = load_run(workdir)
    data = build_data(config.data, config.model.name)
    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                images.append(eval_image(img, config.data.image_size, data.resize_size,
                                         data.mean, data.std, config.data.interpolation))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{p}: not a readable image ({e})") from e
    logits = model.apply(variables, jnp.asarray(np.stack(images)), train=False)
    probs = np.asarray(jax.nn.softmax(logits, -1))
    names = meta["class_names"]
    k = min(topk, probs.shape[-1])
    return [[(names[i], float(row[i])) for i in np.argsort(-row)[:k]] for row in probs]


def extract(workdir: str, split: str, out: str) -> int:
    """Pooled backbone embeddings (the model with ``num_classes=0``) and labels to ``out``."""
    config, meta, model, variables, _ = load_run(workdir)
    data = build_data(config.data, config.model.name)
    backbone = model.clone(num_classes=0)
    if split == "train":  # every training example once, without augmentation
        data = data.__class__(data.val_source, data.train_source, data.class_names, data.cfg,
                              data.mean, data.std, data.resize_size)
    fwd = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    feats, labels = [], []
    for batch in data.eval_loader():
        keep = batch["mask"]
        feats.append(np.asarray(fwd(variables, batch["image"]))[keep])
        labels.append(batch["label"][keep])
    emb, lab = np.concatenate(feats), np.concatenate(labels)
    np.savez(out, embeddings=emb, labels=lab, class_names=np.array(meta["class_names"]))
    return len(lab)

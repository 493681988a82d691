"""Orbax checkpoints of a run: train state, data-iterator position and metadata.

Orbax writes each step under a temporary name and renames it when complete, so a run killed at
any moment leaves only whole checkpoints.  The last ``keep`` steps and the best by the chosen
metric are kept.
"""
from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class WorkdirError(ValueError):
    pass


def manager(workdir: str, keep: int = 3, best_metric: str | None = "val_top1",
            best_mode: str = "max"):
    if best_mode not in ("max", "min"):
        raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    policies = [cm.LatestN(keep)]
    if best_metric:
        # BestN keeps the last of the sorted list: descending order keeps the smallest
        policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                                 reverse=best_mode == "min",
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies), create=True,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, item_names=("state", "data", "meta"))


def save(mgr, step: int, state, data_state: bytes, meta: dict, metrics: dict | None = None):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(json.loads(data_state)),
                              meta=ocp.args.JsonSave(meta))
    mgr.save(step, args=args, metrics=metrics, force=True)
    mgr.wait_until_finished()


def read_meta(mgr, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_workdir(mgr, meta: dict, keys=("model", "num_classes")):
    """Refuse a workdir whose checkpoints belong to another model, head or task (``keys``)."""
    step = mgr.latest_step()
    if step is None:
        return None
    saved = read_meta(mgr, step)
    for key in keys:
        if saved.get(key) != meta.get(key):
            raise WorkdirError(
                f"{mgr.directory}: holds checkpoints of {key}={saved.get(key)!r}, this run has "
                f"{key}={meta.get(key)!r}; use another --workdir (nothing was overwritten)")
    return step


def restore(mgr, step: int, abstract_state):
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out["state"], json.dumps(out["data"]).encode(), out["meta"]


def best_or_latest(mgr):
    return mgr.best_step() or mgr.latest_step()

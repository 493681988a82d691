"""Orbax checkpoints of a run: train state, data-iterator position and metadata.

Orbax writes each step under a temporary name and renames it when complete, so a run killed at
any moment leaves only whole checkpoints.  The last ``keep`` steps and the best by the chosen
metric are kept: Orbax's own ``best_fn``/``best_mode`` rank the steps by the metrics stored in
each step (so the ranking survives a restart) and a ``BestN`` policy preserves the best.

A step is saved before it is evaluated (an evaluation that fails on a bad val file, or is
killed, must not cost the steps just trained); ``record_metrics`` then adds the evaluation to
the saved step.  Until the next save, the previous best stays on disk beside a new best.

Nothing non-finite is saved (``guards.all_finite`` before every save), a write that fails names
the path and the cause in one line, a step that cannot be read is named with its file, and a
resume whose state no longer fits the checkpoint names the config keys that changed.
"""
from __future__ import annotations

import errno
import gc
import json
import logging
import math
import os
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm
from orbax.checkpoint import checkpoint_manager as orbax_manager

from jaxvision.train import guards


class WorkdirError(ValueError):
    pass


class CheckpointWriteError(OSError):
    """A checkpoint (or a run file) could not be written: disk full, read-only, no permission."""

    def __str__(self):  # the message alone: it names the path and the cause already
        return self.strerror or super().__str__()


class CorruptCheckpoint(WorkdirError):
    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


def infer_best_mode(metric: str) -> str:
    """A loss is minimised, everything else (top-1, mIoU, AP) maximised."""
    return "min" if metric.lower().endswith("loss") else "max"


def _best_fn(metric: str, mode: str):
    worst = -math.inf if mode == "max" else math.inf

    def fn(metrics):
        # a missing or non-finite metric ranks last: a NaN must never be "the best"
        value = (metrics or {}).get(metric)
        return float(value) if value is not None and math.isfinite(value) else worst

    fn.metric = metric  # for the "which step and why" line
    return fn


class _OrbaxWarningsThatDoNotApply(logging.Filter):
    """Orbax warnings this module's use of the manager would print at every save:
    - every step is saved before its evaluation, so a save of a manager tracking the best
      comes without metrics;
    - ``save(wait=True)`` waits for its own files, and Orbax adds that wait to the next save's
      "waiting for the previous save" (its TODO b/448361885), warned past 1 s."""

    MESSAGES = ("did not provide metrics", "Waiting for previous save to complete took")

    def filter(self, record):
        return not any(m in record.getMessage() for m in self.MESSAGES)


_ORBAX_WARNINGS = _OrbaxWarningsThatDoNotApply()


def manager(workdir: str, keep: int = 3, best_metric: str | None = "val_top1",
            best_mode: str | None = None, read_only: bool = False):
    best_mode = best_mode or (infer_best_mode(best_metric) if best_metric else "max")
    if best_mode not in ("min", "max"):
        raise WorkdirError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
    policies = [cm.LatestN(keep)]
    best_fn = None
    if best_metric:
        best_fn = _best_fn(best_metric, best_mode)
        # BestN sorts ascending and keeps the tail: reverse for "min" keeps the smallest
        policies.append(cm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies), create=not read_only,
        read_only=read_only, best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=True,  # save(wait=True) waits
        # a step a killed run was writing: removed now (the trainer holds the workdir's lock)
        # rather than with a warning when the same step is saved again, or never if it is not
        cleanup_tmp_directories=not read_only)
    # item handlers (not just names) so item_metadata can describe a saved state's structure
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    logging.getLogger("absl").addFilter(_ORBAX_WARNINGS)  # Orbax logs through absl
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    except OSError as e:
        raise write_error(e, directory, "cannot create the checkpoint directory") from None


def _os_error(exc):
    """The OSError under an exception (Orbax wraps them in asyncio and tensorstore errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(exc, path, what, note="") -> CheckpointWriteError:
    os_err = _os_error(exc) or exc
    cause = (os.strerror(os_err.errno) if getattr(os_err, "errno", None) in errno.errorcode
             else str(os_err).splitlines()[0] if str(os_err) else type(os_err).__name__)
    where = getattr(os_err, "filename", None) or path
    return CheckpointWriteError(getattr(os_err, "errno", None) or errno.EIO,
                                f"{where}: {what}: {cause}{note}")


def save(mgr, step: int, state, data_state: bytes, meta: dict, metrics: dict | None = None,
         wait: bool = True):
    """Saves ``step``; ``wait=False`` returns once Orbax holds its own copy of the arrays and
    writes the files in the background, and returns ``finish()``, which waits for them (a
    failed write raises there, as it does here): call it before the step is read or given
    metrics, and before a step that donates ``state``'s buffers runs."""
    if not guards.all_finite(state):
        bad, total = guards.count_nonfinite_leaves(state)
        raise guards.NonFiniteLoss(
            f"step {step}: {bad} of {total} state arrays hold NaN/Inf; not saved: the last good "
            f"checkpoint in {mgr.directory} stays (step {mgr.latest_step()})")
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(_data_states(data_state)),
                              meta=ocp.args.JsonSave(meta))
    previous = mgr.latest_step()

    def failed(e):
        if _os_error(e) is None:
            raise  # not an I/O failure: an internal bug keeps its traceback
        kept = f"; the previous checkpoint (step {previous}) is intact" if previous else ""
        # `from None`: the asyncio/tensorstore chain under it is hundreds of lines of noise
        raise write_error(e, os.path.join(str(mgr.directory), str(step)),
                          f"cannot write checkpoint step {step}", kept) from None

    def finish():
        try:
            mgr.wait_until_finished()
        except Exception as e:
            failed(e)

    try:
        mgr.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:
        failed(e)
    if not wait:
        return finish
    finish()
    return None


def record_metrics(mgr, step: int, metrics: dict):
    """Adds the evaluation of ``step`` (saved before it ran) to the step, where Orbax reads each
    step's metrics, and lets the manager rank it.  The file is replaced whole (a temporary name,
    then a rename): a kill mid-write leaves the step without metrics, never with half a file."""
    directory = os.path.join(str(mgr.directory), str(step), orbax_manager.METRIC_ITEM_NAME)
    path = os.path.join(directory, orbax_manager.METRIC_ITEM_NAME)
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(metrics, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(e, path, f"cannot record the evaluation of step {step}") from None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxvision record_metrics {step}")
    mgr.reload()


def _data_states(data_state: bytes) -> dict:
    """Every process's data-iterator position (each reads its own shard), gathered: Orbax
    writes a JSON item from the primary process only."""
    if jax.process_count() == 1:
        return {"process_0": json.loads(data_state)}
    from jax.experimental import multihost_utils

    buf = np.frombuffer(data_state, np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(buf))))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(buf)] = buf
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return {f"process_{i}": json.loads(bytes(rows[i][:n])) for i, n in enumerate(lengths)}


def _own_data_state(saved: dict, step: int) -> bytes:
    if "process_0" not in saved:  # written before positions were kept per process
        return json.dumps(saved).encode()
    key = f"process_{jax.process_index()}"
    if len(saved) != jax.process_count() or key not in saved:
        raise WorkdirError(f"checkpoint step {step} was written by {len(saved)} processes, this "
                           f"run has {jax.process_count()}: the data positions do not map")
    return json.dumps(saved[key]).encode()


def read_meta(mgr, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_workdir(mgr, meta: dict, keys=("model", "num_classes")):
    """Refuse a workdir whose checkpoints belong to another model, head or task (``keys``)."""
    step = mgr.latest_step()
    if step is None:
        return None
    try:
        saved = read_meta(mgr, step)
    except Exception as e:
        raise corrupt(mgr, step, e) from None
    for key in keys:
        if saved.get(key) != meta.get(key):
            raise WorkdirError(
                f"{mgr.directory}: holds checkpoints of {key}={saved.get(key)!r}, this run has "
                f"{key}={meta.get(key)!r}; use another --workdir (nothing was overwritten)")
    return step


def _name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return ".".join(parts)


def saved_shapes(mgr, step: int) -> dict:
    tree = mgr.item_metadata(step)["state"]
    return {_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(tree)}


def state_mismatch(mgr, step: int, abstract_state) -> list[str]:
    """Arrays that differ between the saved state and this run's: [] when they fit."""
    saved = saved_shapes(mgr, step)
    new = {_name(p): tuple(a.shape)
           for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)}
    out = [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - new.keys())]
    out += [f"{k}: only in this run" for k in sorted(new.keys() - saved.keys())]
    out += [f"{k}: shape {saved[k]} saved, {new[k]} now" for k in sorted(saved.keys() & new.keys())
            if saved[k] != new[k]]
    return out


def corrupt(mgr, step: int, exc) -> CorruptCheckpoint:
    """Name the step and, where the reader says so, the array and the truncated file."""
    detail = ""
    e = exc
    while e is not None:  # the innermost message names the array and the database
        detail = str(e).splitlines()[0] if str(e) else detail
        e = e.__cause__ or e.__context__
    step_dir = os.path.join(str(mgr.directory), str(step))
    files = []
    size = re.search(r"value of size (\d+)", detail)
    if size:  # a truncated data file: the one of exactly that many bytes
        for root, _, names in os.walk(step_dir):
            files += [os.path.join(root, n) for n in names
                      if os.path.getsize(os.path.join(root, n)) == int(size.group(1))]
    where = f"file {files[0]}" if len(files) == 1 else f"directory {step_dir}"
    return CorruptCheckpoint(f"checkpoint step {step} is corrupt ({where}): {detail}", step)


def _echo_of_aborted_read(unraisable) -> bool:
    if isinstance(unraisable.exc_value, RuntimeError) and unraisable.object is None:
        return str(unraisable.exc_value) == "Event loop is closed"
    code = getattr(unraisable.object, "cr_code", None)  # an Orbax read coroutine, closed
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _FailedReadEchoes(logging.Filter):
    """Orbax reads a step's arrays concurrently; when one read fails, the others end after its
    event loop has closed, and each prints a traceback ("Event loop is closed", "Exception
    ignored in: <coroutine ...>", "Future exception was never retrieved") around the one line
    that names the broken file.  They are echoes of that error: dropped (only they) while a
    restore runs, and for the rest of the process once one failed, as its last reads end later.
    """

    # asyncio names the future's class: Future, Task, _GatheringFuture (of an asyncio.gather)
    ECHO = re.compile(r"\w+ exception was never retrieved(\n|$)")

    def __init__(self):
        self.previous = sys.unraisablehook
        sys.unraisablehook = self.unraisable
        logging.getLogger("asyncio").addFilter(self)

    def unraisable(self, unraisable):
        if not _echo_of_aborted_read(unraisable):
            self.previous(unraisable)

    def filter(self, record):
        return not self.ECHO.match(record.getMessage())

    def remove(self):
        if sys.unraisablehook == self.unraisable:
            sys.unraisablehook = self.previous
        logging.getLogger("asyncio").removeFilter(self)


def restore(mgr, step: int, abstract_state):
    echoes = _FailedReadEchoes()
    try:
        out = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
    except Exception as e:
        error = corrupt(mgr, step, e)
    else:
        echoes.remove()
        return out["state"], _own_data_state(out["data"], step), out["meta"]
    gc.collect()  # out of the except block the failed reads are garbage: their echoes come now
    raise error


def best_or_latest(mgr) -> tuple[int | None, str]:
    """(step, why): the best by the tracked metric, else the latest."""
    latest = mgr.latest_step()
    best = mgr.best_step() if mgr._options.best_fn else None
    metrics = mgr.metrics(best) if best is not None else None
    name = mgr._options.best_fn.metric if metrics else None
    value = metrics.get(name) if metrics else None
    if value is not None and math.isfinite(value):
        return best, (f"the best by {name} ({mgr._options.best_mode}): {name}="
                      f"{value}; the latest is step {latest}")
    if latest is None:
        return None, ""
    if metrics:  # ranked "best" only because every step's value is undefined
        return latest, f"the latest (no checkpoint has a finite {name} to rank by)"
    return latest, "the latest (no evaluated checkpoint to rank)"


# config sections whose values decide the train state's structure (optimizer state, EMA copies,
# frozen/trainable split, the model's own arrays)
STRUCTURAL = ("model.", "optimizer.", "freeze.", "train.ema_decay")


def check_resume(mgr, step: int, abstract_state, config, workdir: str):
    """Before anything is restored or written: does this run's state fit the checkpoint?"""
    from jaxvision.train.config import diff_configs

    try:
        mismatch = state_mismatch(mgr, step, abstract_state)
    except Exception as e:
        raise corrupt(mgr, step, e) from None
    if not mismatch:
        return
    path = os.path.join(workdir, "config.json")
    changed = []
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [f"{k}: {old!r} saved, {new!r} now" for k, old, new in diff_configs(saved, config)
                   if k.startswith(STRUCTURAL)]
    keys = ("; ".join(changed) if changed
            else "no config key differs from config.json; the arrays do")
    raise WorkdirError(
        f"{mgr.directory}: checkpoint step {step} does not fit this config ({keys}). "
        f"{len(mismatch)} state arrays differ, e.g. {mismatch[0]}. Resume with the saved values "
        "or use another --workdir (nothing was overwritten)")


def make_workdir(workdir: str):
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise write_error(e, workdir, "cannot create the workdir") from None


def write_run_file(writer, config, path: str):
    """config.json and friends (process 0 only): a failed write is one line naming the path and
    the cause."""
    if jax.process_index() != 0:
        return
    try:
        writer(config, path)
    except OSError as e:
        raise write_error(e, path, "cannot write") from None


def restore_for_train(mgr, step: int, abstract_state, workdir: str):
    """Resume from ``step``; a corrupt step is refused, never skipped or overwritten silently.

    The safe behaviour: training stops and says which step and file are broken and which intact
    step it would resume from once the broken one is moved aside (a resume that skipped it would
    later collide with its step number, and deleting a user's file is not ours to do).
    """
    try:
        return restore(mgr, step, abstract_state)
    except CorruptCheckpoint as e:
        earlier = [s for s in mgr.all_steps() if s < step]
        step_dir = os.path.join(str(mgr.directory), str(step))
        hint = (f"move it aside (mv {step_dir} {os.path.join(workdir, f'corrupt-step-{step}')}) "
                f"to resume from step {max(earlier)}" if earlier
                else "no earlier checkpoint remains; use another --workdir")
        raise CorruptCheckpoint(f"{e}; {hint}", step) from None

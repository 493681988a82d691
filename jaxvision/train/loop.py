"""The training loop: data -> jitted step over a Mesh -> metrics, TensorBoard, Orbax checkpoints."""
from __future__ import annotations

import contextlib
import gc
import math
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxvision as jv
from jaxvision.data import workers
from jaxvision.data.errors import DataError
from jaxvision.layers import lowering, rng_lowering
from jaxvision.tasks import build_data, build_task, task_name
from jaxvision.train import checkpoint, freeze, optim, workdir_lock
from jaxvision.train import teacher as teachers
from jaxvision.train.config import check_config, save_config
from jaxvision.train.ema import EmaRule
from jaxvision.train.guards import NonFiniteLoss  # noqa: F401  (re-exported: cli, tests)
from jaxvision.train.metrics_log import Logger
from jaxvision.train.prefetch import DevicePrefetch
from jaxvision.train.preempt import StopSignal
from jaxvision.train.state import TrainState
from jaxvision.train.step import (add_metrics, jit_eval, jit_steps, make_eval_step, make_mesh,
                                  make_predict_step, make_train_step, shard_batch)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config, num_classes: int, task=None):
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    task = task or build_task(config, num_classes)
    return task.build_model(config, DTYPES[m.dtype], **freeze.model_overrides(config.freeze))


def best_metric(config, task) -> tuple[str, str]:
    """(metric, mode) that picks the best checkpoint: the config's, else the task's (its EMA
    weights' version, ``val_top1_ema``, when EMA is on)."""
    c = config.checkpoint
    ema = "_ema" if config.train.get("ema_decay") is not None else ""
    return (c.get("best_metric") or task.best_for(config) + ema,
            c.get("best_mode") or task.best_mode)


def initial_variables(config, model, num_classes, log=print, task=None):
    m = config.model
    if m.pretrained:
        if not os.path.exists(m.pretrained):
            raise FileNotFoundError(f"model.pretrained: {m.pretrained}: no such file or directory")
        if os.path.isdir(m.pretrained):
            extra = task.model_kwargs() if task is not None else {}
            _, variables = jv.create_model(
                m.name, num_classes=num_classes, pretrained=m.pretrained,
                strict=m.pretrained_strict, dtype=DTYPES[m.dtype],
                **{**m.kwargs.to_dict(), **freeze.model_overrides(config.freeze), **extra})
            return variables
        from jaxvision.convert import torchvision as tv

        # a new head does not fit the checkpoint's: the report says what was kept from init
        variables, report = jv.load_pretrained(m.name, tv.load_state_dict(m.pretrained),
                                               m.pretrained_strict, model=model,
                                               return_report=True)
        log(f"{m.pretrained}: {report}" + ("" if report.ok else "\n" + report.problems()))
        return variables
    if m.pretrained_backbone and not os.path.isfile(m.pretrained_backbone):
        raise FileNotFoundError(f"model.pretrained_backbone: {m.pretrained_backbone}: no such "
                                "file")
    size = config.data.image_size
    variables = rng_lowering.call(lowering.jit(
        lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False),
        config.get("conv_lowering")), jax.random.key(config.train.seed))
    return backbone_variables(m, model, variables, log) if m.pretrained_backbone else variables


def backbone_variables(m, model, variables, log=print):
    """``variables`` with the model's backbone from ``m.pretrained_backbone`` (a torchvision
    classification state_dict or a converted directory of the backbone's model; its classifier
    is left out), strictly: :func:`jaxvision.pretrained_backbone`."""
    path = m.pretrained_backbone
    try:
        variables, report = jv.pretrained_backbone(model, variables, path, return_report=True)
    except ValueError as e:
        raise ValueError(f"model.pretrained_backbone: {path} does not fit {m.name}'s backbone "
                         f"({e})") from None
    log(f"{path}: backbone {report}".split("\n")[0])
    return variables


def evaluate(eval_step, variables, data, mesh, task, return_sums: bool = False):
    """The task's summary of its eval sums over every example of the split once.

    The task adds the sums up on the host (``Task.accumulate``); fetching batch i-1's sums
    after dispatching batch i keeps the device busy meanwhile, and batch i+1 is on its way to
    the device then."""
    total, pending = None, None
    batches = DevicePrefetch(iter(data.eval_loader(jax.process_index(), jax.process_count())),
                             lambda b: shard_batch(mesh, b), track_state=False)
    for batch in batches:
        nxt = eval_step(variables, batch)
        if pending is not None:
            total = task.accumulate(total, pending)
        pending = nxt
    if pending is not None:
        total = task.accumulate(total, pending)
    return (task.summary(total), total) if return_sums else task.summary(total)


def evaluate_state(eval_step, state, data, mesh, task) -> dict:
    """The live weights' summary; with EMA on, the EMA weights' too, each key with ``_ema``
    (torchvision's reference evaluates and prints both)."""
    results = evaluate(eval_step, state.live_variables(), data, mesh, task)
    if state.ema_params is not None:
        ema = evaluate(eval_step, state.eval_variables(), data, mesh, task)
        results.update({f"{k}_ema": v for k, v in ema.items() if k != "val_count"})
    return results


def evaluate_teacher(teacher, variables, data, mesh, task, conv_lowering=None) -> dict:
    """The distillation teacher's summary on the val split, each key ``val_teacher_*``: what the
    student is measured against."""
    step = jit_eval(mesh, make_eval_step(teacher, task, norm=(data.mean, data.std)), conv_lowering)
    results = evaluate(step, variables, data, mesh, task)
    return {f"val_teacher_{k[4:]}": v for k, v in results.items() if k != "val_count"}


def ema_rule(config, steps_per_epoch: int):
    """The EMA rule of ``config.train`` (None: no EMA); torchvision's reference copies during
    the schedule's warm-up, counted in epochs."""
    t, w = config.train, config.schedule.warmup
    if t.ema_decay is None:
        return None
    warm = w.length if w.unit == "epoch" else w.length / max(steps_per_epoch, 1)
    return EmaRule.from_config(t, config.data.batch_size, steps_per_epoch, warm)


def train(config, workdir: str, log=print) -> dict:
    """Trains ``config`` in ``workdir`` (resuming what is there); the final metrics."""
    with contextlib.ExitStack() as run:
        return _train(config, workdir, log, run)


def _train(config, workdir: str, log, run: contextlib.ExitStack) -> dict:
    """``run`` holds what the run must let go of however it ends (lock, workers, manager)."""
    check_config(config)
    checkpoint.make_workdir(workdir)
    # before anything in the workdir is read or written: one trainer per workdir
    run.enter_context(workdir_lock.hold(workdir))
    removed, nbytes, pids = workers.remove_dead_runs_segments()
    if removed:
        log(f"removed {removed} shared memory segments ({nbytes / 1e6:.1f} MB) left in "
            f"{workers.SHM_DIR} by killed runs (pids {', '.join(map(str, pids))})")
    data = build_data(config.data, config.model.name, task_name(config))
    num_classes = config.model.num_classes or data.num_classes
    data.check_targets(num_classes, log)
    task = build_task(config, num_classes)
    model = build_model(config, num_classes, task)
    teacher, teacher_vars = teachers.load_teacher(config, num_classes,
                                                  DTYPES[config.model.dtype], log)
    meta = {"model": config.model.name, "num_classes": num_classes, "task": task.name,
            "class_names": list(data.class_names)}
    if teacher is not None:
        meta["teacher"] = f"{config.teacher.name} sha256:{teachers.digest(teacher_vars)}"
    mgr = checkpoint.manager(workdir, config.checkpoint.keep, *best_metric(config, task))
    run.callback(mgr.close)
    start = checkpoint.check_workdir(mgr, meta, task.meta_keys) or 0  # before anything is written

    t = config.train
    steps_per_epoch = data.num_train // config.data.batch_size
    total = t.steps if t.steps else t.epochs * steps_per_epoch
    schedule = optim.build_schedule(config.schedule, config.optimizer.lr, steps_per_epoch, total)
    variables = initial_variables(config, model, num_classes, log, task)
    trainable = freeze.trainable_mask(variables["params"], config.freeze, config.model.name,
                                      model)
    tx = optim.build_optimizer(config.optimizer, schedule, variables["params"], trainable,
                               task.lr_multipliers(variables["params"]))
    state = TrainState.create(variables, tx, t.seed, t.ema_decay is not None)

    mesh = make_mesh()
    train_step, eval_step = jit_steps(
        mesh, make_train_step(model, tx, task, ema_decay=ema_rule(config, steps_per_epoch),
                              accum_steps=t.grad_accum_steps, norm=(data.mean, data.std),
                              teacher=teacher),
        make_eval_step(model, task, norm=(data.mean, data.std)), config.get("conv_lowering"),
        teacher=teacher is not None)
    # the sample images' forward: jitted once, not op by op at every evaluation
    predict = lowering.jit(make_predict_step(model, task, norm=(data.mean, data.std)),
                           config.get("conv_lowering"))
    if teacher is not None:
        teacher_vars = jax.device_put(teacher_vars, NamedSharding(mesh, P()))
        train_step = teachers.bind(train_step, mesh, teacher_vars)
    loader_it = workers.Received(iter(data.train_loader(config.data.seed, jax.process_index(),
                                                        jax.process_count())))
    run.callback(loader_it.close)
    if start:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        checkpoint.check_resume(mgr, start, abstract, config, workdir)
        state, data_state, _ = checkpoint.restore_for_train(mgr, start, abstract, workdir)
        loader_it.set_state(data_state)
        log(f"resumed from step {start} in {workdir}")
    # set_state first: the prefetch pulls its first batches from the restored position
    it = DevicePrefetch(loader_it, lambda b: shard_batch(mesh, b))
    # only now is the run known to start: a refused resume leaves the old config.json
    checkpoint.write_run_file(save_config, config, os.path.join(workdir, "config.json"))
    state = jax.device_put(state, NamedSharding(mesh, P()))

    logger = Logger(workdir, config, total, start, data.class_names, data.mean, data.std)
    results, acc, last_log, t0 = {}, None, start, time.perf_counter()
    teacher_results = {}  # the teacher's val metrics: evaluated once, at the run's first eval

    def save(step, wait=True):
        return checkpoint.save(mgr, step, state, it.get_state(), meta, wait=wait)

    def is_eval_point(done):
        epoch = math.ceil(done / steps_per_epoch)
        end_of_epoch = done % steps_per_epoch == 0 or done == total
        return end_of_epoch and (epoch % t.eval_every_epochs == 0 or done == total)

    def run_eval(done, saving=None):
        """Evaluates saved step ``done`` and records the result in it; ``saving``: the wait
        for its files still being written (``checkpoint.save(wait=False)``)."""
        finish = saving or (lambda: None)
        try:
            results = evaluate_state(eval_step, state, data, mesh, task)
            if teacher is not None and not teacher_results:  # it does not change: once
                teacher_results.update(evaluate_teacher(teacher, teacher_vars, data, mesh, task,
                                                        config.get("conv_lowering")))
                results.update(teacher_results)
        except DataError as e:
            finish()
            raise DataError(f"{e} (evaluating step {done}; the trained state is saved: a rerun "
                            f"on {workdir} resumes from step {done} and evaluates it first)"
                            ) from None
        except Exception:
            finish()
            log(f"evaluation of step {done} failed; the trained state is saved: a rerun on "
                f"{workdir} resumes from step {done} and evaluates it first")
            raise
        finish()
        checkpoint.record_metrics(mgr, done, results)
        logger.scalars(done, {f"val/{k[4:]}": v for k, v in results.items()})
        logger.samples(done, predict, state.eval_variables(), data, task)
        log(f"step {done} epoch {math.ceil(done / steps_per_epoch)}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in results.items() if k != "val_count"))
        return results

    with StopSignal(t.log_every) as stop, logger:
        if start and is_eval_point(start) and mgr.metrics(start) is None:
            results = run_eval(start)  # saved before an evaluation that did not end
        for step in range(start, total):
            state, metrics = train_step(state, next(it))
            if step == start:  # compile (or a compile-cache read) + the first batch: one wait
                jax.block_until_ready(metrics)
                first = time.perf_counter() - t0
                # what importing, tracing and compiling made lives as long as the run: out of
                # the way of the collector's full passes (0.8 s of a 44-s run, 0.5 s frozen)
                gc.collect()
                gc.freeze()
                run.callback(gc.unfreeze)
                log(f"first train step done {first:.1f} s after the loop started (compilation "
                    "or compile-cache read included)")
            # on device, summed with the metrics: a NaN at any step is seen at the next log point
            acc = add_metrics(acc, metrics)
            done = step + 1
            stopping = stop.now(done)  # agreed by every process
            want_eval = is_eval_point(done)
            want_save = want_eval or stopping or (
                config.checkpoint.save_every_steps and done % config.checkpoint.save_every_steps == 0)
            if done % t.log_every == 0 or want_save or done == total:
                m = jax.device_get(acc)
                loss = float(m["loss_sum"]) / float(m["count"])
                if not math.isfinite(loss) or float(m["nonfinite"]):
                    raise NonFiniteLoss(
                        f"non-finite training loss or gradients (mean loss {loss:.4g}, "
                        f"{int(m['nonfinite'])} non-finite steps) between steps {last_log + 1} "
                        f"and {done}; stopped without saving: the last good checkpoint in "
                        f"{mgr.directory} stays (step {mgr.latest_step()})")
                elapsed = time.perf_counter() - t0
                logger.scalars(done, {
                    "train/loss": loss,
                    **{f"train/{k}": v for k, v in task.train_summary(m).items()},
                    "train/grad_norm": float(m["grad_norm"]) / float(m["steps"]),
                    "train/lr": float(schedule(done - 1)),
                    "train/images_per_s": float(m["count"]) / elapsed})
                if not logger.bar_visible:  # e.g. a batch job: the bar's line as text
                    log(logger.text_line(done))
                acc, last_log, t0 = None, done, time.perf_counter()
            logger.advance(done)
            saving = None
            if want_save:  # before the evaluation: a bad val file must not cost these steps
                # written while the evaluation runs; the next step (which donates the state's
                # buffers) starts after run_eval has waited for the files
                saving = save(done, wait=not (want_eval and not stopping))
            if want_eval and not stopping:  # a stopped run's resume evaluates it first
                results = run_eval(done, saving)
            if stopping:
                log(f"stopped by signal at step {done}; checkpoint saved in {mgr.directory}")
                results["preempted"] = True
                break
    return {**results, **teacher_results, "step": int(jax.device_get(state.step))}

"""The training loop: data -> jitted step over a Mesh -> metrics, TensorBoard, Orbax checkpoints."""
from __future__ import annotations

import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxvision as jv
from jaxvision.data import build_data
from jaxvision.tasks import build_task, task_name
from jaxvision.train import checkpoint, freeze, optim
from jaxvision.train.config import save_config
from jaxvision.train.metrics_log import Logger
from jaxvision.train.state import TrainState
from jaxvision.train.step import (add_metrics, jit_steps, make_eval_step, make_mesh,
                                  make_train_step, shard_batch)


class NonFiniteLoss(RuntimeError):
    pass


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config, num_classes: int, task=None):
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    task = task or build_task(config, num_classes)
    return task.build_model(config, DTYPES[m.dtype])


def best_metric(config, task) -> tuple[str, str]:
    """(metric, mode) that picks the best checkpoint: the config's, else the task's."""
    c = config.checkpoint
    return c.get("best_metric") or task.best_metric, c.get("best_mode") or task.best_mode


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
    size = config.data.image_size
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.key(config.train.seed))


def evaluate(eval_step, variables, data, mesh, task, return_sums: bool = False):
    """The task's summary of its eval sums over every example of the split once.

    Sums are added on the host in 64 bits (a confusion matrix over a large split outgrows
    float32's exact integers); fetching batch i-1's sums after dispatching batch i keeps the
    device busy meanwhile."""
    total, pending = None, None
    for batch in data.eval_loader(jax.process_index(), jax.process_count()):
        nxt = eval_step(variables, shard_batch(mesh, batch))
        if pending is not None:
            total = _add_host(total, pending)
        pending = nxt
    if pending is not None:
        total = _add_host(total, pending)
    return (task.summary(total), total) if return_sums else task.summary(total)


def _add_host(total, sums):
    sums = {k: np.asarray(v, np.int64 if np.issubdtype(np.asarray(v).dtype, np.integer)
                          else np.float64) for k, v in jax.device_get(sums).items()}
    return sums if total is None else {k: total[k] + v for k, v in sums.items()}


class _Stop:
    """SIGTERM / SIGINT ask the loop to save and leave after the current step."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(config, workdir: str, log=print) -> dict:
    os.makedirs(workdir, exist_ok=True)
    data = build_data(config.data, config.model.name, task_name(config))
    num_classes = config.model.num_classes or data.num_classes
    task = build_task(config, num_classes)
    model = build_model(config, num_classes, task)
    meta = {"model": config.model.name, "num_classes": num_classes, "task": task.name,
            "class_names": list(data.class_names)}
    mgr = checkpoint.manager(workdir, config.checkpoint.keep, *best_metric(config, task))
    start = checkpoint.check_workdir(mgr, meta, task.meta_keys) or 0  # before anything is written
    save_config(config, os.path.join(workdir, "config.json"))

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
        mesh, make_train_step(model, tx, task, ema_decay=t.ema_decay,
                              accum_steps=t.grad_accum_steps),
        make_eval_step(model, task))
    it = iter(data.train_loader(config.data.seed, jax.process_index(), jax.process_count()))
    if start:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        state, data_state, _ = checkpoint.restore(mgr, start, abstract)
        it.set_state(data_state)
        log(f"resumed from step {start} in {workdir}")
    state = jax.device_put(state, NamedSharding(mesh, P()))

    logger = Logger(workdir, config, total, start, data.class_names, data.mean, data.std)
    results, acc, last_log, t0 = {}, None, start, time.perf_counter()

    def save(step, metrics=None):
        checkpoint.save(mgr, step, state, it.get_state(), meta, metrics)

    with _Stop() as stop, logger:
        for step in range(start, total):
            state, metrics = train_step(state, shard_batch(mesh, next(it)))
            acc = add_metrics(acc, metrics)
            done = step + 1
            end_of_epoch = done % steps_per_epoch == 0 or done == total
            epoch = math.ceil(done / steps_per_epoch)
            want_eval = end_of_epoch and (epoch % t.eval_every_epochs == 0 or done == total)
            want_save = want_eval or stop.requested or (
                config.checkpoint.save_every_steps and done % config.checkpoint.save_every_steps == 0)
            if done % t.log_every == 0 or want_save or done == total:
                m = jax.device_get(acc)
                loss = float(m["loss_sum"]) / float(m["count"])
                if not math.isfinite(loss):
                    raise NonFiniteLoss(
                        f"non-finite training loss ({loss}) between steps {last_log + 1} and "
                        f"{done}; stopped without saving: the last good checkpoint in "
                        f"{mgr.directory} stays (step {mgr.latest_step()})")
                elapsed = time.perf_counter() - t0
                logger.scalars(done, {
                    "train/loss": loss,
                    **{f"train/{k}": v for k, v in task.train_summary(m).items()},
                    "train/grad_norm": float(m["grad_norm"]) / float(m["steps"]),
                    "train/lr": float(schedule(done - 1)),
                    "train/images_per_s": float(m["count"]) / elapsed})
                if not config.logging.progress_bar:  # e.g. a batch job: the bar's line as text
                    log(f"step {done}: train_loss={loss:.4f} lr={float(schedule(done - 1)):.4g}")
                acc, last_log, t0 = None, done, time.perf_counter()
            logger.advance(done)
            if want_eval:
                results = evaluate(eval_step, state.eval_variables(), data, mesh, task)
                logger.scalars(done, {f"val/{k[4:]}": v for k, v in results.items()})
                logger.samples(done, model, state.eval_variables(), data, task)
                log(f"step {done} epoch {epoch}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in results.items() if k != "val_count"))
            if want_save:
                save(done, {k: v for k, v in results.items()} if want_eval else None)
            if stop.requested:
                log(f"stopped by signal at step {done}; checkpoint saved in {mgr.directory}")
                results["preempted"] = True
                break
    mgr.close()
    return {**results, "step": int(jax.device_get(state.step))}

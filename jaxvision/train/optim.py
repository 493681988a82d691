"""Optimizers and learning-rate schedules built from optax, with torch.optim's semantics.

The schedules reproduce torchvision's reference ``train.py`` (references/classification): a main
scheduler (CosineAnnealingLR / StepLR / ExponentialLR, plus MultiStepLR and PolynomialLR here),
optionally preceded by a LinearLR / ConstantLR warm-up through SequentialLR, stepped once an epoch
(``unit="epoch"``) or once a step (``unit="step"``). SequentialLR restarts the main scheduler's
clock at the warm-up's end, which is exactly ``optax.join_schedules``; so ``step_size``,
``milestones`` and ``total`` count from the end of the warm-up, as in torch.
"""
from __future__ import annotations

import math

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw", "rmsprop", "lars")
SCHEDULES = ("cosine", "step", "multistep", "exponential", "polynomial", "constant")
UNITS = ("epoch", "step")


def default_optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
        wd_exclude_norm_bias=False, betas=(0.9, 0.999), eps=1e-8,
        alpha=0.99,  # rmsprop's smoothing constant (torch's name)
        trust_coefficient=0.001,  # lars
        clip_grad_norm=ml_collections.FieldReference(None, field_type=float)))


def default_schedule_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="cosine", unit="step",
        step_size=30, gamma=0.1, milestones=(30, 60, 80), power=1.0, eta_min=0.0,
        # None: the run's length less the warm-up (torchvision: T_max = epochs - warmup_epochs)
        total=ml_collections.FieldReference(None, field_type=int),
        warmup=dict(length=0, unit="epoch", method="linear", start_factor=0.01)))


def _choice(field: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"{field} must be one of {'|'.join(allowed)}, got {value!r}")


def _in_units(length: int, unit: str, sched_unit: str, steps_per_epoch: int, field: str) -> int:
    if unit == sched_unit:
        return int(length)
    if unit == "epoch":  # epochs in a per-step schedule
        return int(length) * steps_per_epoch
    if length % steps_per_epoch:  # steps in a per-epoch schedule: must be whole epochs
        raise ValueError(f"{field}={length} steps is not a whole number of epochs "
                         f"({steps_per_epoch} steps each) while schedule.unit='epoch'")
    return int(length) // steps_per_epoch


def build_schedule(cfg, base_lr: float, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """step -> lr. With ``unit="epoch"`` the lr of a step is that of the epoch holding it, as
    torchvision's scripts call ``lr_scheduler.step()`` once an epoch."""
    _choice("schedule.name", cfg.name, SCHEDULES)
    _choice("schedule.unit", cfg.unit, UNITS)
    _choice("schedule.warmup.unit", cfg.warmup.unit, UNITS)
    _choice("schedule.warmup.method", cfg.warmup.method, ("linear", "constant"))
    if steps_per_epoch < 1 or total_steps < 1:
        raise ValueError(f"build_schedule: steps_per_epoch={steps_per_epoch} (data.num_train // "
                         f"data.batch_size) and total_steps={total_steps} must be >= 1")
    per = steps_per_epoch if cfg.unit == "epoch" else 1
    warm = _in_units(cfg.warmup.length, cfg.warmup.unit, cfg.unit, steps_per_epoch,
                     "schedule.warmup.length")
    run = math.ceil(total_steps / per)
    main_len = cfg.total if cfg.total is not None else run - warm
    if cfg.name in ("cosine", "polynomial") and main_len < 1:
        raise ValueError(f"schedule.total: the {cfg.name} phase has {main_len} {cfg.unit}s "
                         f"(run {run}, warm-up {warm}); it needs at least 1")

    if cfg.name == "cosine":  # CosineAnnealingLR(T_max=main_len, eta_min)
        alpha = cfg.eta_min / base_lr if base_lr else 0.0
        main = optax.cosine_decay_schedule(base_lr, main_len, alpha=alpha)
    elif cfg.name == "step":  # StepLR
        if cfg.step_size < 1:
            raise ValueError(f"schedule.step_size must be >= 1, got {cfg.step_size}")
        main = optax.exponential_decay(base_lr, cfg.step_size, cfg.gamma, staircase=True)
    elif cfg.name == "multistep":  # MultiStepLR
        ms = [int(m) for m in cfg.milestones]
        if ms != sorted(set(ms)) or (ms and ms[0] < 1):
            raise ValueError(f"schedule.milestones must be increasing positive ints, got {ms}")
        main = optax.piecewise_constant_schedule(base_lr, {m: cfg.gamma for m in ms})
    elif cfg.name == "exponential":  # ExponentialLR
        main = optax.exponential_decay(base_lr, 1, cfg.gamma)
    elif cfg.name == "polynomial":  # PolynomialLR(total_iters=main_len, power)
        main = optax.polynomial_schedule(base_lr, 0.0, cfg.power, main_len)
    else:
        main = optax.constant_schedule(base_lr)

    if warm > 0:
        sf = cfg.warmup.start_factor
        if not 0 < sf <= 1:
            raise ValueError(f"schedule.warmup.start_factor must be in (0, 1], got {sf}")
        if cfg.warmup.method == "linear":  # LinearLR(start_factor, total_iters=warm)
            first = optax.linear_schedule(base_lr * sf, base_lr, warm)
        else:  # ConstantLR(factor, total_iters=warm)
            first = optax.constant_schedule(base_lr * sf)
        main = optax.join_schedules([first, main], [warm])
    if per == 1:
        return main
    return lambda step: main(step // per)


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def is_norm_or_bias(path: str) -> bool:
    """torchvision's ``set_weight_decay`` groups: every norm-layer param (flax ``scale`` and its
    ``bias``) and every param whose name ends in ``bias`` (``in_proj_bias`` included)."""
    leaf = path.rsplit("/", 1)[-1]
    return leaf == "scale" or leaf.endswith("bias")


def decay_mask(params):
    """True where weight decay applies when norm and bias params are excluded."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not is_norm_or_bias(_path(p)), params)


def _core(cfg, schedule, mask):
    wd = float(cfg.weight_decay)
    momentum = float(cfg.momentum) if cfg.momentum else None
    # torch adds ``wd * param`` to the gradient before momentum (SGD, RMSprop, coupled decay)
    coupled = optax.add_decayed_weights(wd, mask) if wd else optax.identity()
    if cfg.name == "sgd":
        if cfg.nesterov and not momentum:
            raise ValueError("optimizer.nesterov needs optimizer.momentum > 0 (as torch.optim.SGD)")
        return optax.chain(coupled, optax.sgd(schedule, momentum, bool(cfg.nesterov)))
    if cfg.name == "adamw":
        b1, b2 = (float(b) for b in cfg.betas)
        return optax.adamw(schedule, b1, b2, eps=float(cfg.eps), weight_decay=wd, mask=mask)
    if cfg.name == "rmsprop":
        # Not optax.rmsprop: it scales by the lr *before* its momentum trace, whereas torch keeps
        # an lr-free buffer and multiplies by the current lr; the two differ once the lr changes.
        return optax.chain(
            coupled,
            optax.scale_by_rms(decay=float(cfg.alpha), eps=float(cfg.eps), initial_scale=0.0,
                               eps_in_sqrt=False),  # torch: g / (sqrt(v) + eps)
            optax.trace(momentum, bool(cfg.nesterov)) if momentum else optax.identity(),
            optax.scale_by_learning_rate(schedule))
    return optax.lars(schedule, weight_decay=wd, weight_decay_mask=mask if mask else True,
                      trust_coefficient=float(cfg.trust_coefficient),
                      trust_ratio_mask=mask if mask else True,
                      momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov))


def build_optimizer(cfg, schedule, params, trainable=None,
                    lr_mult=None) -> optax.GradientTransformation:
    """The optimizer of ``cfg`` over ``params``.

    Leaves with ``trainable`` False go through ``optax.set_to_zero``: no update, no weight decay
    and no optimizer state. Gradient clipping sees the trainable gradients only (torch's
    ``clip_grad_norm_`` over the parameters that have a grad). ``lr_mult``, a pytree of floats
    shaped like ``params``, scales each leaf's update: a torch param group with ``lr * mult``
    (exact for sgd, rmsprop and adamw, whose updates are linear in the lr, weight decay included;
    lars' trust ratio is not)."""
    _choice("optimizer.name", cfg.name, OPTIMIZERS)
    mask = decay_mask if cfg.wd_exclude_norm_bias else None
    tx = _core(cfg, schedule, mask)
    if cfg.clip_grad_norm is not None:
        if cfg.clip_grad_norm <= 0:
            raise ValueError(f"optimizer.clip_grad_norm must be > 0 or None, "
                             f"got {cfg.clip_grad_norm}")
        tx = optax.chain(optax.clip_by_global_norm(float(cfg.clip_grad_norm)), tx)
    if trainable is not None:
        if jax.tree.structure(trainable) != jax.tree.structure(params):
            raise ValueError("build_optimizer: `trainable` must be a pytree of bools shaped like "
                             "`params` (from freeze.trainable_mask)")
        labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if lr_mult is None:
        return tx
    if jax.tree.structure(lr_mult) != jax.tree.structure(params):
        raise ValueError("build_optimizer: `lr_mult` must be a pytree of floats shaped like "
                         "`params`")
    # outermost, after the frozen leaves' zeros: one optax.masked(scale) per distinct factor
    factors = sorted({float(m) for m in jax.tree.leaves(lr_mult)} - {1.0})
    return optax.chain(tx, *[optax.masked(optax.scale(f), jax.tree.map(lambda m: m == f, lr_mult))
                             for f in factors])


__all__ = ["build_schedule", "build_optimizer", "default_optimizer_config",
           "default_schedule_config", "decay_mask", "is_norm_or_bias"]

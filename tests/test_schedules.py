"""Schedules against torch.optim.lr_scheduler stepping a real torch optimizer, over a whole run.

torch's schedulers are combined as torchvision's references/classification/train.py does: the
main scheduler, and when there is a warm-up, SequentialLR([warm-up, main], milestones=[warm]).
"""
import jax
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as L

from jaxvision.train import optim

BASE = 0.4


def _torch_lrs(make_main, n_units, warm=0, method="linear", start_factor=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    main = make_main(opt) if make_main else None
    if warm:
        cls = L.LinearLR if method == "linear" else L.ConstantLR
        kw = ({"start_factor": start_factor} if method == "linear" else {"factor": start_factor})
        first = cls(opt, total_iters=warm, **kw)
        sched = L.SequentialLR(opt, [first, main], milestones=[warm]) if main else first
    else:
        sched = main
    lrs = []
    for _ in range(n_units):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(lrs)


def _cfg(**kw):
    c = optim.default_schedule_config()
    warmup = kw.pop("warmup", {})
    c.update(kw)
    c.warmup.update(warmup)
    return c


def _jax_lrs(cfg, steps_per_epoch, total_steps):
    # float64: the schedule's formula is what is compared; float32 rounding is checked below
    with jax.enable_x64(True):
        sched = optim.build_schedule(cfg, BASE, steps_per_epoch, total_steps)
        return np.array([float(sched(np.int64(s))) for s in range(total_steps)])


def _close(ours, theirs):
    # 1e-7 relative; the absolute floor only matters where torch's recursive forms reach ~0
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-12)


EPOCHS, SPE = 14, 3  # per-epoch schedules: the torch lr of epoch e is the lr of its 3 steps

CASES = {
    "cosine+linear_warmup": (dict(name="cosine", eta_min=0.003,
                                  warmup=dict(length=4, method="linear", start_factor=0.033)),
                             lambda o: L.CosineAnnealingLR(o, T_max=EPOCHS - 4, eta_min=0.003), 4,
                             "linear", 0.033),
    "cosine": (dict(name="cosine"), lambda o: L.CosineAnnealingLR(o, T_max=EPOCHS), 0, "", 0),
    "step+constant_warmup": (dict(name="step", step_size=3, gamma=0.5,
                                  warmup=dict(length=2, method="constant", start_factor=0.25)),
                             lambda o: L.StepLR(o, step_size=3, gamma=0.5), 2, "constant", 0.25),
    "multistep+linear_warmup": (dict(name="multistep", milestones=(3, 7), gamma=0.1,
                                     warmup=dict(length=2, start_factor=0.1)),
                                lambda o: L.MultiStepLR(o, milestones=[3, 7], gamma=0.1), 2,
                                "linear", 0.1),
    "exponential": (dict(name="exponential", gamma=0.9),
                    lambda o: L.ExponentialLR(o, gamma=0.9), 0, "", 0),
    "polynomial+warmup": (dict(name="polynomial", power=2.0, warmup=dict(length=3, start_factor=0.2)),
                          lambda o: L.PolynomialLR(o, total_iters=EPOCHS - 3, power=2.0), 3,
                          "linear", 0.2),
    "linear_warmup_alone": (dict(name="constant", warmup=dict(length=5, start_factor=0.01)),
                            None, 5, "linear", 0.01),
    "constant_warmup_alone": (dict(name="constant", warmup=dict(length=5, method="constant",
                                                                start_factor=0.3)),
                              None, 5, "constant", 0.3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_epoch_schedule_matches_torch(case):
    cfg_kw, make_main, warm, method, sf = CASES[case]
    cfg = _cfg(unit="epoch", **cfg_kw)
    cfg.warmup.unit = "epoch"
    theirs = _torch_lrs(make_main, EPOCHS, warm, method, sf)
    ours = _jax_lrs(cfg, SPE, EPOCHS * SPE)
    _close(ours, np.repeat(theirs, SPE))  # constant within an epoch


def test_per_step_cosine_with_warmup_in_epochs_matches_torch():
    # warm-up given in epochs while the schedule steps every step: 2 epochs * 5 steps = 10 steps
    cfg = _cfg(name="cosine", unit="step", eta_min=0.0,
               warmup=dict(length=2, unit="epoch", start_factor=0.033))
    total = 40
    theirs = _torch_lrs(lambda o: L.CosineAnnealingLR(o, T_max=total - 10), total, 10,
                        "linear", 0.033)
    _close(_jax_lrs(cfg, 5, total), theirs)


def test_float32_schedule_is_within_float32_rounding():
    # In the jitted train step the schedule runs in float32, where optax's interpolations
    # (init + (end - init) * t, eta_min + ...) round at the scale of the base lr: measured max
    # abs. error 1.64e-8 = 4.1e-8 * base lr (1.3e-6 relative at the smallest lr, 0.0132).
    cfg = _cfg(**CASES["cosine+linear_warmup"][0], unit="epoch")
    sched = jax.jit(optim.build_schedule(cfg, BASE, SPE, EPOCHS * SPE))
    ours = np.array([sched(s) for s in range(EPOCHS * SPE)])
    _, make_main, warm, method, sf = CASES["cosine+linear_warmup"]
    theirs = np.repeat(_torch_lrs(make_main, EPOCHS, warm, method, sf), SPE)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7 * BASE)


@pytest.mark.parametrize("kw,match", [
    (dict(name="onecycle"), "schedule.name"),
    (dict(unit="iteration"), "schedule.unit"),
    (dict(warmup=dict(method="cosine", length=1)), "schedule.warmup.method"),
    (dict(unit="epoch", warmup=dict(unit="step", length=4)), "schedule.warmup.length"),
    (dict(name="cosine", warmup=dict(length=30, unit="step")), "schedule.total"),
    (dict(name="multistep", milestones=(5, 3)), "schedule.milestones"),
    (dict(warmup=dict(length=2, unit="step", start_factor=0.0)), "start_factor"),
])
def test_bad_schedule_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        optim.build_schedule(_cfg(**kw), BASE, 3, 30)


# ---- the ImageNet recipes -------------------------------------------------------------------

IMAGENET_TRAIN = 1281167


def _has_tfds_section():
    from jaxvision.data.config import default_data_config
    return "tfds" in default_data_config()


# The recipes set data.tfds.*, a section of the data contract not in default_data_config() yet;
# until it lands they can only fail on that missing key (strict: an unexpected pass is reported).
pending_tfds = pytest.mark.xfail(not _has_tfds_section(), raises=AttributeError, strict=True,
                                 reason="jaxvision.data.config has no data.tfds section yet")


def _recipe(name):
    from jaxvision.train.config import load_config_file
    return load_config_file(f"configs/imagenet_{name}.py")


@pytest.mark.parametrize("name,epoch_lrs", [
    # torchvision's V2: LinearLR(0.01, 5) then CosineAnnealingLR(T_max=595) from 0.5
    ("resnet50", {0: 0.5 * 0.01, 2: 0.5 * (0.01 + 0.99 * 2 / 5), 5: 0.5,
                  300: 0.5 * (1 + np.cos(np.pi * 295 / 595)) / 2,
                  599: 0.5 * (1 + np.cos(np.pi * 594 / 595)) / 2}),
    # StepLR(1, 0.98) from 0.045
    ("mobilenet_v2", {0: 0.045, 1: 0.045 * 0.98, 299: 0.045 * 0.98 ** 299}),
    # StepLR(2, 0.973) from 0.064
    ("mobilenet_v3_large", {0: 0.064, 1: 0.064, 2: 0.064 * 0.973, 599: 0.064 * 0.973 ** 299}),
    # the V2 family: LinearLR(0.01, 5) then CosineAnnealingLR(T_max=595)
    ("efficientnet_v2_s", {0: 0.005, 5: 0.5, 599: 0.5 * (1 + np.cos(np.pi * 594 / 595)) / 2}),
    ("convnext_tiny", {0: 1e-5, 5: 1e-3, 599: 1e-3 * (1 + np.cos(np.pi * 594 / 595)) / 2}),
    # LinearLR(0.033, 30) then CosineAnnealingLR(T_max=270) from 0.003
    ("vit_b_16", {0: 0.003 * 0.033, 15: 0.003 * (0.033 + 0.967 * 0.5), 30: 0.003,
                  165: 0.0015, 299: 0.003 * (1 + np.cos(np.pi * 269 / 270)) / 2}),
])
@pending_tfds
def test_imagenet_recipes_load_and_follow_torchvision(name, epoch_lrs):
    c = _recipe(name)
    assert c.model.name == name and c.data.source == "tfds"
    assert c.data.tfds.name == "imagenet2012"
    spe = IMAGENET_TRAIN // c.data.batch_size
    with jax.enable_x64(True):
        sched = optim.build_schedule(c.schedule, c.optimizer.lr, spe, c.train.epochs * spe)
        for epoch, lr in epoch_lrs.items():
            for step in (epoch * spe, (epoch + 1) * spe - 1):  # constant within the epoch
                np.testing.assert_allclose(float(sched(np.int64(step))), lr, rtol=1e-7)
    params = {"w": np.zeros((2, 2), np.float32)}
    tx = optim.build_optimizer(c.optimizer, sched, params)
    tx.init(params)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_v2_s", "convnext_tiny",
                                  "vit_b_16"])
@pending_tfds
def test_recipes_build_their_transforms(name):
    from jaxvision.tasks import build_data

    d = _recipe(name).data
    d.source = "shapes"
    d.shapes.num_train = 512
    transform = build_data(d, name).train_transform()
    assert transform.policy.interpolation == "bilinear"


@pending_tfds
def test_resnet50_recipe_carries_torchvisions_v2_flags():
    from jaxvision.tasks import build_data
    from jaxvision.train.loop import ema_rule

    c = _recipe("resnet50")
    d, a, t = c.data, c.data.augment, c.train
    assert (d.batch_size, d.image_size, d.resize_size, d.eval_image_size) == (1024, 176, 232, 224)
    assert (a.policy, a.random_erasing, d.repeated_augment) == ("trivialaugment", 0.1, 4)
    assert (t.mixup_alpha, t.cutmix_alpha, t.label_smoothing, t.epochs) == (0.2, 1.0, 0.1, 600)
    assert (c.optimizer.weight_decay, c.optimizer.wd_exclude_norm_bias) == (2e-5, True)
    rule = ema_rule(c, IMAGENET_TRAIN // d.batch_size)
    assert rule.reference and rule.every == 32 and rule.warmup_epochs == 5
    # the policy and erasing build from these fields (shapes stand in for ImageNet)
    d.source = "shapes"
    d.shapes.num_train = 512
    transform = build_data(d, "resnet50").train_transform()
    assert type(transform.policy).__name__ == "TrivialAugmentWide"
    assert transform.policy.interpolation == "bilinear" and transform.erasing.p == 0.1

"""The EMA rules against torch: torchvision's reference ExponentialMovingAverage (an
AveragedModel with use_buffers=True) driven by its train loop's schedule of updates."""
import jax
import ml_collections
import numpy as np
import pytest
import torch

from jaxvision.train.ema import EmaRule


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """references/classification/utils.py, verbatim but for the device argument."""

    def __init__(self, model, decay):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, "cpu", ema_avg, use_buffers=True)


def _torch_reference(seq, decay, every, epochs, spe, warmup_epochs, global_batch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    _load(model, seq[0])
    # references/classification/train.py: the decay adjustment, then the loop's updates
    alpha = min(1.0, (1.0 - decay) * global_batch * every / epochs)
    ema = ExponentialMovingAverage(model, decay=1.0 - alpha)
    step = 0
    for epoch in range(epochs):
        for i in range(spe):
            step += 1
            _load(model, seq[step])  # the weights after the optimizer step
            if i % every == 0:
                ema.update_parameters(model)
                if epoch < warmup_epochs:
                    ema.n_averaged.fill_(0)
    sd = ema.module.state_dict()
    return {k: sd[k].numpy() for k in seq[0]}


def _load(model, values):
    sd = model.state_dict()
    model.load_state_dict({**sd, **{k: torch.tensor(v) for k, v in values.items()}})


@pytest.mark.parametrize("every,warmup", [(3, 2), (1, 0), (4, 0.5)])
def test_reference_rule_equals_torchvision_over_100_steps(every, warmup):
    epochs, spe, decay, batch = 10, 10, 0.99, 8
    rng = np.random.default_rng(every)
    names = {"0.weight": (2, 3), "0.bias": (2,), "1.weight": (2,), "1.bias": (2,),
             "1.running_mean": (2,), "1.running_var": (2,)}
    seq = [{k: rng.normal(size=s).astype(np.float32) for k, s in names.items()}
           for _ in range(epochs * spe + 1)]
    want = _torch_reference(seq, decay, every, epochs, spe, warmup, batch)
    train = ml_collections.ConfigDict(dict(ema_decay=decay, ema_steps=every,
                                           ema_reference=True, epochs=epochs))
    rule = EmaRule.from_config(train, batch, spe, warmup)
    update = jax.jit(rule.update)
    ema = seq[0]
    for step in range(epochs * spe):
        ema = update(step, ema, seq[step + 1])
    for k in names:
        np.testing.assert_allclose(np.asarray(ema[k]), want[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_plain_rule_and_bad_values():
    rule = EmaRule(0.5, every=2, steps_per_epoch=10)
    e = rule.update(0, {"w": np.float32(0)}, {"w": np.float32(4)})
    e = rule.update(1, e, {"w": np.float32(8)})  # not an update step
    assert float(e["w"]) == 2.0
    bad = ml_collections.ConfigDict(dict(ema_decay=1.5, ema_steps=1, ema_reference=False,
                                         epochs=1))
    with pytest.raises(ValueError, match="train.ema_decay must be in"):
        EmaRule.from_config(bad, 8, 10, 0)
    bad.update(ema_decay=0.9, ema_steps=0)
    with pytest.raises(ValueError, match="train.ema_steps must be >= 1"):
        EmaRule.from_config(bad, 8, 10, 0)


def test_run_rule_from_config_is_torchvisions_resnet50_v2():
    from jaxvision.train.defaults import default_config
    from jaxvision.train.loop import ema_rule

    c = default_config()
    assert ema_rule(c, 100) is None
    c.data.batch_size = 1024
    c.train.update(ema_decay=0.99998, ema_steps=32, ema_reference=True, epochs=600)
    c.schedule.warmup.update(length=5, unit="epoch")
    rule = ema_rule(c, 1251)
    # train.py: adjust = world_size * batch_size * model_ema_steps / epochs
    assert rule.decay == 1.0 - min(1.0, (1.0 - 0.99998) * 1024 * 32 / 600)
    assert (rule.every, rule.steps_per_epoch, rule.warmup_epochs) == (32, 1251, 5.0)
    c.schedule.warmup.update(length=2502, unit="step")
    assert ema_rule(c, 1251).warmup_epochs == 2.0


def test_live_and_ema_weights_are_both_evaluated_and_the_best_metric_picks_the_weights(tmp_path):
    import json
    import os

    from jaxvision.train.loop import train
    from jaxvision.train.runs import evaluate_run
    from train_configs import tiny_config

    workdir = str(tmp_path / "run")
    result = train(tiny_config(ema_decay=0.5), workdir, log=lambda *a: None)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        val = [r for r in map(json.loads, f) if "val/top1" in r]
    assert len(val) == 1 and {"val/top1_ema", "val/loss_ema", "val/top5_ema"} <= val[0].keys()
    assert result["val_loss"] != result["val_loss_ema"]  # two sets of weights were evaluated
    # the default best metric of an EMA run is the EMA's, and eval takes the EMA weights
    assert evaluate_run(workdir)["val_loss"] == pytest.approx(result["val_loss_ema"], rel=1e-5)
    # a config naming the live metric: the live weights
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["checkpoint"]["best_metric"] = "val_top1"
    with open(path, "w") as f:
        json.dump(saved, f)
    assert evaluate_run(workdir)["val_loss"] == pytest.approx(result["val_loss"], rel=1e-5)

"""The training engine end to end: resume, preemption, refusal, non-finite loss, freezing."""
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxvision.train import checkpoint
from jaxvision.cli import run_command as train_cli
from jaxvision.train.config import ConfigError, apply_overrides
from jaxvision.train.loop import NonFiniteLoss, train
from train_configs import RESNET18_CONVS, fast_path, tiny_config

HERE = os.path.dirname(__file__)


def final_state(workdir):
    mgr = checkpoint.manager(workdir)
    step = mgr.latest_step()
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    return step, out


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))


def check_resumed(resumed, interrupted_at, straight_dir, killed_dir, steps):
    """The ``resumed`` process (of the run killed after step ``interrupted_at``) ends where the
    uninterrupted run did, bitwise."""
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from step {interrupted_at}" in out
    step_a, a = final_state(straight_dir)
    step_b, b = final_state(killed_dir)
    assert step_a == step_b == steps
    assert_trees_equal(a, b)


RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from train_configs import tiny_config
    from jaxvision.train.loop import train
    train(tiny_config(steps={steps}), sys.argv[1], log=lambda *a: print(*a, flush=True))
""")


def run_script(workdir, steps):
    code = RUNNER.format(here=HERE, steps=steps)
    return subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    steps = 16
    straight = run_script(tmp_path / "straight", steps)
    killed_dir = tmp_path / "killed"
    victim = run_script(killed_dir, steps)
    ckpts = killed_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "4").is_dir():
        time.sleep(0.2)
    assert (ckpts / "4").is_dir(), victim.communicate()[0]
    time.sleep(0.5)  # let it get somewhere past the checkpoint
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    interrupted_at = max(int(p) for p in os.listdir(ckpts) if p.isdigit())
    assert interrupted_at < steps, "the victim finished before it was killed"
    check_resumed(run_script(killed_dir, steps), interrupted_at, tmp_path / "straight",
                  killed_dir, steps)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = run_script(tmp_path, 400)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "checkpoints" / "4").is_dir():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "stopped by signal at step" in out
    step, _ = final_state(tmp_path)
    assert 4 <= step < 400


@pytest.mark.default_lowering
def tensorboard_images(tb_dir) -> list[tuple[int, str]]:
    """(step, tag) of each image in the event files of ``tb_dir`` (TFRecord: length, its CRC,
    an Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for name in sorted(os.listdir(tb_dir)):
        with open(os.path.join(tb_dir, name), "rb") as f:
            while header := f.read(12):
                event = Event.FromString(f.read(int.from_bytes(header[:8], "little")))
                f.read(4)
                found += [(event.step, v.tag) for v in event.summary.value if v.HasField("image")]
    return found


@pytest.mark.default_lowering
def test_run_writes_config_checkpoints_tensorboard_and_evaluates_every_example(tmp_path,
                                                                               conv_choices):
    config = tiny_config(steps=8)
    config.data.shapes.num_train = 32  # 4 steps an epoch: evaluated at steps 4 and 8
    del config["conv_lowering"]  # a config written without the field
    frozen = []  # the objects the collector skips while the run trains, then none again

    def log(line):
        if line.startswith("first train step done"):
            frozen.append(gc.get_freeze_count())

    result = train(config, str(tmp_path), log=log)
    assert frozen[0] > 10_000 and gc.get_freeze_count() == 0, frozen
    # init, the train and eval steps and the TensorBoard samples: all took the CPU rewrites, each
    # traced once, the samples' forward too (jitted: not op by op at every evaluation)
    assert len(conv_choices) == 4 * RESNET18_CONVS and fast_path(conv_choices), conv_choices
    assert result["val_count"] == 40  # 40 examples, batches of 16: padded, none dropped
    assert json.load(open(tmp_path / "config.json"))["model"]["name"] == "resnet18"
    assert tensorboard_images(tmp_path / "tb") == [(4, "val/predictions"), (8, "val/predictions")]
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    assert steps == [4, 8]


def test_workdir_of_another_model_is_refused(tmp_path, capsys):
    train(tiny_config(steps=4), str(tmp_path), log=lambda *a: None)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    other = tiny_config(steps=4)
    other.model.name = "resnet34"
    with pytest.raises(checkpoint.WorkdirError, match="model='resnet18'.*model='resnet34'"):
        train(other, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert json.load(open(tmp_path / "config.json"))["model"]["name"] == "resnet18"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    train(tiny_config(steps=4), str(tmp_path), log=lambda *a: None)
    _, good = final_state(tmp_path)
    bad = tiny_config(steps=12)
    bad.optimizer.lr = 1e30
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        train(bad, str(tmp_path), log=lambda *a: None)
    assert gc.get_freeze_count() == 0  # unfrozen on the way out of a failed run too
    step, kept = final_state(tmp_path)
    assert step == 4
    assert_trees_equal(good, kept)


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.lrr'"):
        apply_overrides(tiny_config(), ["--config.optimizer.lrr=0.1"])
    c = apply_overrides(tiny_config(), ["--config.optimizer.lr=0.5", "--config.data.augment.scale=0.2,1.0",
                                        "--config.train.ema_decay=0.9"])
    assert c.optimizer.lr == 0.5 and tuple(c.data.augment.scale) == (0.2, 1.0)
    assert c.train.ema_decay == 0.9
    cfg = tmp_path / "c.py"
    cfg.write_text("from train_configs import tiny_config\ndef get_config():\n    return tiny_config()\n")
    sys.path.insert(0, HERE)
    assert train_cli("train", ["--config", str(cfg), "--workdir", str(tmp_path / "w"),
                               "--config.model.nmae=x"]) == 2
    assert "unknown config key 'model.nmae'" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_model_kwargs_take_new_keys_and_a_mistyped_one_is_named():
    from jaxvision.train.loop import build_model
    from jaxvision.tasks import build_task

    c = apply_overrides(tiny_config(), ["--config.model.kwargs.zero_init_residual=true",
                                        "--config.model.kwargs.replace_stride_with_dilation="
                                        "False,True,True"])
    assert c.model.kwargs.to_dict() == {"zero_init_residual": True,
                                        "replace_stride_with_dilation": (False, True, True)}
    assert build_model(c, 3, build_task(c, 3)).replace_stride_with_dilation == (False, True, True)
    with pytest.raises(ConfigError, match="unknown config key 'model.kwarg.x'"):
        apply_overrides(tiny_config(), ["--config.model.kwarg.x=1"])
    c = apply_overrides(tiny_config(), ["--config.model.kwargs.zero_init_residul=true"])
    with pytest.raises(ValueError, match="config key 'model.kwargs.zero_init_residul': resnet18"):
        build_model(c, 3, build_task(c, 3))

"""Issue 7: never lose a good checkpoint; a user's mistake is one line, never a traceback.

One short run (resnet18, 32 px, 3 evaluations) is shared: each test copies its workdir and
attacks the copy (NaN resume, corrupt step, changed optimizer, full disk).
"""
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxvision.train import checkpoint
from jaxvision.cli import run_command as train_cli
from jaxvision.train.loop import NonFiniteLoss, train
from jaxvision.train.runs import evaluate_run
from train_configs import tiny_config


def base_config(steps=12):
    # 32 train images, batch 8: an epoch is 4 steps, so steps 4, 8, 12 are evaluated and saved
    # (keep=2: 8 and 12 stay); lr 0.2 keeps the run far from converged
    c = tiny_config(steps=steps)
    c.data.shapes.num_train = 32
    c.optimizer.lr = 0.2
    return c

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "reliability_config.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "jaxvision.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """The shared run, as a batch job runs it: the CLI with stdout a pipe, the bar left on."""
    workdir = tmp_path_factory.mktemp("base")
    proc = cli("train", "--config", CONFIG_FILE, "--workdir", str(workdir),
               "--config.logging.progress_bar=true")
    out, err = proc.communicate(timeout=1500)  # minutes on a loaded 2-core machine
    assert proc.returncode == 0, err[-3000:]
    (workdir / "stdout.txt").write_text(out)
    return workdir


def copy_of(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "w")
    return tmp_path / "w"


def demote_latest(workdir):
    """Records the latest step's val_top1 below every other step's, so that the best step is not
    the latest. Which epoch of this high-lr run scores best follows the float rounding of the
    machine (the second on one CPU, the last on another), so the tests that need the two apart
    set it in the record that checkpoint selection reads."""
    ckpts = workdir / "checkpoints"
    files = {int(p): ckpts / p / "metrics" / "metrics" for p in os.listdir(ckpts) if p.isdigit()}
    records = {s: json.loads(f.read_text()) for s, f in files.items()}
    latest = max(records)
    records[latest]["val_top1"] = min(r["val_top1"] for r in records.values()) - 0.125
    files[latest].write_text(json.dumps(records[latest]))
    return latest


def saved_states(workdir):
    mgr = checkpoint.manager(str(workdir), read_only=True)
    out = {s: mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
           for s in mgr.all_steps()}
    mgr.close()
    return out


def test_best_checkpoint_is_evaluated_not_the_latest(base_run, tmp_path, capsys):
    workdir = copy_of(base_run, tmp_path)
    demote_latest(workdir)
    mgr = checkpoint.manager(str(workdir), read_only=True)
    top1 = {s: mgr.metrics(s)["val_top1"] for s in mgr.all_steps() if mgr.metrics(s)}
    mgr.close()
    best = max(sorted(top1), key=lambda s: top1[s])
    assert best != max(top1), f"precondition: the best epoch is not the last one ({top1})"
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's, the run's too (conftest)
    before = set(os.listdir(cache))
    result = evaluate_run(str(workdir))
    assert result["step"] == best
    assert abs(result["val_top1"] - top1[best]) < 1e-6
    assert f"using checkpoint step {best}, the best by val_top1 (max)" in capsys.readouterr().err
    # the eval step is jitted as the training run jitted it: read from the run's compilation
    # cache, not compiled (and written) again
    assert not [k for k in set(os.listdir(cache)) - before if k.startswith("jit_step-")]


def test_val_loss_keeps_the_minimum_across_restarts(tmp_path):
    # Orbax writes each step's metrics only with a best_fn; without them a restarted manager
    # ranked nothing and the best was deleted at the next save
    state = {"w": np.ones(3, np.float32)}
    losses = {1: 0.9, 2: 0.3, 3: float("nan"), 4: 0.8, 5: 0.7}
    for step, loss in losses.items():
        mgr = checkpoint.manager(str(tmp_path), keep=1, best_metric="val_loss")  # a restart each
        checkpoint.save(mgr, step, state, b"{}", {}, {"val_loss": loss})
        mgr.close()
    mgr = checkpoint.manager(str(tmp_path), keep=1, best_metric="val_loss")
    assert mgr.best_step() == 2 and mgr.all_steps() == [2, 5]
    assert checkpoint.infer_best_mode("val_loss") == "min"
    assert checkpoint.infer_best_mode("val_miou") == "max"


def test_nan_resume_saves_nothing_non_finite(base_run, tmp_path):
    # the reproduction: resume a finished run with a huge learning rate; the loss at a
    # save point is still finite while the gradients are already NaN
    workdir = copy_of(base_run, tmp_path)
    c = base_config(steps=24)
    c.optimizer.lr = 1e6
    c.train.log_every = 1
    c.checkpoint.save_every_steps = 1
    # caught by the step's guard (a non-finite loss or gradient) or, where the gradients are
    # still finite but the update has overflowed the state, by the check before each save
    with pytest.raises(NonFiniteLoss, match="non-finite training loss|state arrays hold NaN/Inf"):
        train(c, str(workdir), log=lambda *a: None)
    states = saved_states(workdir)
    assert max(states) > 12, "the resume saved nothing before diverging"
    for step, state in states.items():
        for leaf in jax.tree.leaves(state):
            assert np.isfinite(np.asarray(leaf)).all(), f"step {step} holds NaN/Inf"
    result = evaluate_run(str(workdir))
    assert np.isfinite(result["val_loss"])


def test_changed_optimizer_or_ema_is_named_before_anything_is_written(base_run, tmp_path, capsys):
    workdir = copy_of(base_run, tmp_path)
    before = (workdir / "config.json").read_text()
    c = base_config(steps=16)
    c.optimizer.name = "adamw"
    c.train.ema_decay = 0.99
    with pytest.raises(checkpoint.WorkdirError) as e:
        train(c, str(workdir), log=lambda *a: None)
    msg = str(e.value)
    assert "optimizer.name: 'sgd' saved, 'adamw' now" in msg
    assert "train.ema_decay: None saved, 0.99 now" in msg
    assert len(msg) < 2000 and "\n" not in msg
    assert (workdir / "config.json").read_text() == before


def test_corrupt_latest_step_is_named_eval_falls_back_train_refuses(base_run, tmp_path, capsys):
    workdir = copy_of(base_run, tmp_path)
    assert demote_latest(workdir) == 12
    data_files = [os.path.join(r, n) for r, _, ns in os.walk(workdir / "checkpoints" / "12")
                  for n in ns if os.sep + "d" + os.sep in os.path.join(r, n)]
    victim = max(data_files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(1000)
    mgr = checkpoint.manager(str(workdir), read_only=True)
    best, steps = mgr.best_step(), mgr.all_steps()
    mgr.close()
    # the run's best by val_top1 is not the latest (demote_latest): eval takes the intact best;
    # break it too, so the fallback is exercised
    assert best is not None and best != 12, (best, steps)
    assert evaluate_run(str(workdir))["step"] == best
    data_best = [os.path.join(r, n) for r, _, ns in os.walk(workdir / "checkpoints" / str(best))
                 for n in ns if os.sep + "d" + os.sep in os.path.join(r, n)]
    with open(max(data_best, key=os.path.getsize), "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    intact = [s for s in steps if s not in (best, 12)]
    if intact:
        assert evaluate_run(str(workdir))["step"] == max(intact)
        err = capsys.readouterr().err
        assert f"checkpoint step {best} is corrupt" in err
    code = train_cli("train", ["--config", CONFIG_FILE, "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"checkpoint step 12 is corrupt (file {victim})" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1



def test_full_disk_is_one_line_and_the_previous_checkpoint_stays(base_run, tmp_path, capsys,
                                                                  monkeypatch):
    workdir = copy_of(base_run, tmp_path)
    before = saved_states(workdir)

    def full(self, step, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "checkpoints"))

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    code = train_cli("train", ["--config", str(CONFIG_FILE), "--workdir", str(workdir),
                               "--config.train.steps=14", "--config.checkpoint.save_every_steps=1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == [
        f"jaxvision train: error: {workdir / 'checkpoints'}: cannot write checkpoint step 13: "
        "No space left on device; the previous checkpoint (step 12) is intact"]
    monkeypatch.undo()
    after = saved_states(workdir)
    assert sorted(after) == sorted(before)
    for step in before:
        jax.tree.map(np.testing.assert_array_equal, before[step], after[step])
    # a workdir that is a file: the path and the cause, no traceback
    (tmp_path / "file").write_text("")
    code = train_cli("train", ["--config", str(CONFIG_FILE), "--workdir",
                               str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(tmp_path / "file") in err


def test_user_mistakes_are_one_line_not_a_traceback(base_run, tmp_path, capsys, monkeypatch):
    import jax.numpy as jnp
    from PIL import Image

    import jaxvision as jv

    def fails(args, *expected):
        try:
            code = train_cli(args[0], args[1:])
        except SystemExit as e:  # argparse: usage + one error line
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "Traceback" not in err and err.strip(), (args, err)
        for text in expected:
            assert text in err, (args, err)

    train_args = ["train", "--config", CONFIG_FILE, "--workdir", str(tmp_path / "w")]
    fails(train_args + ["--config.data.batch_size=0"], "data.batch_size", "expected an int >= 1")
    fails(train_args + ["--config.model.num_classes=-5"], "model.num_classes")
    fails(train_args + ['--config.model.num_classes="10"'], "model.num_classes")
    (tmp_path / "bad.py").write_text("def get_config(:\n    pass\n")
    fails(["train", "--config", str(tmp_path / "bad.py"), "--workdir", str(tmp_path / "w")],
          f"{tmp_path / 'bad.py'}:1: syntax error")
    assert not (tmp_path / "w" / "checkpoints").exists()
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32)).save(image)
    for k in ("0", "-1"):
        fails(["predict", "--workdir", str(base_run), "--topk", k, str(image)], "--topk")
    # a decompression bomb (PIL's limit lowered so a 32x32 image is one: no 14000x14000 needed)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    fails(["predict", "--workdir", str(base_run), str(image)], str(image), "decompression bomb")
    for bad in (-5, "10"):
        with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
            jv.create_model("resnet18", num_classes=bad)
    model = jv.create_model("resnet18", num_classes=3)
    with pytest.raises(ValueError, match=r"expected NHWC .*\(2, 3, 32, 32\).*NCHW"):
        model.init(jax.random.key(0), jnp.zeros((2, 3, 32, 32)))


def test_a_model_the_task_cannot_train_is_one_line_before_the_workdir_is_written(tmp_path,
                                                                               capsys):
    workdir = tmp_path / "w"
    for task in ("detection", "segmentation"):
        code = train_cli("train", ["--config", CONFIG_FILE, "--workdir", str(workdir),
                                   f"--config.task={task}"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(
            f"jaxvision train: error: task={task!r} cannot train model.name='resnet18': a "
            f"classification model (family resnet); {task} takes e.g. "), err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not workdir.exists() or os.listdir(workdir) == []


def test_best_checkpoint_is_never_chosen_by_nan(tmp_path, capsys):
    state = {"w": np.ones(3, np.float32)}
    mgr = checkpoint.manager(str(tmp_path), keep=3, best_metric="val_ap")
    for step in (1, 2):
        checkpoint.save(mgr, step, state, b"{}", {}, {"val_ap": float("nan")})
    step, why = checkpoint.best_or_latest(mgr)
    mgr.close()
    assert (step, why) == (2, "the latest (no checkpoint has a finite val_ap to rank by)")


def test_batch_job_prints_progress_lines_and_writes_metrics_jsonl(base_run):
    lines = [l for l in (base_run / "stdout.txt").read_text().splitlines() if "/12:" in l]
    assert [l.split(":")[0] for l in lines] == ["step 4/12", "step 8/12", "step 12/12"]
    for line in lines:
        assert re.fullmatch(r"step \d+/12: train_loss=[\d.]+ lr=[\d.e-]+ images/s=[\d.]+ "
                            r"ETA \d+:\d\d:\d\d", line), line
    records = [json.loads(l) for l in (base_run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    val_steps = [r["step"] for r in records if "val/top1" in r]
    assert train_steps == [4, 8, 12] and val_steps == [4, 8, 12]


def test_sighup_saves_like_sigterm(base_run, tmp_path):
    workdir = copy_of(base_run, tmp_path)
    proc = cli("train", "--config", CONFIG_FILE, "--workdir", str(workdir),
               "--config.train.steps=400", "--config.train.log_every=1")
    deadline = time.time() + 300
    while time.time() < deadline and "metrics.jsonl" in os.listdir(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        if json.loads(lines[-1])["step"] > 12:  # it has trained past the resume point
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by signal at step" in out + err
    steps = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
    assert 12 < max(steps) < 400


def test_config_json_and_config_file_argument_are_accepted(base_run, tmp_path):
    from jaxvision.train.config import diff_configs, load_config_file

    saved = json.loads((base_run / "config.json").read_text())
    again = load_config_file(str(base_run / "config.json"))
    assert diff_configs(saved, again) == []
    assert isinstance(again.data.augment.scale, tuple)
    (tmp_path / "c.py").write_text(
        "from jaxvision.train.defaults import default_config\n"
        "def get_config(arch='resnet18'):\n"
        "    c = default_config()\n    c.model.name = arch\n    return c\n")
    assert load_config_file(f"{tmp_path / 'c.py'}:resnet50").model.name == "resnet50"
    assert load_config_file(str(tmp_path / "c.py")).model.name == "resnet18"


def test_export_writes_the_best_weights_as_a_loadable_directory(base_run, tmp_path, capsys):
    import jaxvision as jv
    from jaxvision.cli import main as cli_main
    from jaxvision.convert import store
    from jaxvision.train.runs import load_run

    out = tmp_path / "exported"
    assert cli_main(["export", "--workdir", str(base_run), str(out)]) == 0
    _, meta, model, variables, step = load_run(str(base_run))
    assert f"(step {step})" in capsys.readouterr().out
    saved = store.read_meta(out)
    assert saved["categories"] == meta["class_names"]
    assert saved["preprocessing"]["crop_size"] == 32 and saved["preprocessing"]["resize_size"] == 32
    loaded, loaded_vars = jv.create_model("resnet18", pretrained=str(out))
    assert loaded.num_classes == meta["num_classes"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), loaded_vars)


def test_export_safetensors_loads_into_torchvision_with_the_same_logits(base_run, tmp_path):
    """A model trained here leaves in torchvision's key names: torchvision's resnet18 loads it
    with strict=True and gives jaxvision's logits."""
    import safetensors.torch
    import torch
    import torchvision

    from jaxvision.cli import main as cli_main
    from jaxvision.train.runs import load_run

    out = tmp_path / "run.safetensors"
    assert cli_main(["export", "--workdir", str(base_run), "--format", "safetensors",
                     str(out)]) == 0
    _, meta, model, variables, _ = load_run(str(base_run))
    tmodel = torchvision.models.resnet18(num_classes=meta["num_classes"]).eval()
    tmodel.load_state_dict(safetensors.torch.load_file(out), strict=True)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    # rtol: the shared lr-0.2 run may end with logits of ~1e6, where float32 holds ~0.06
    got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_export_stablehlo_runs_in_a_process_without_jaxvision(base_run, tmp_path):
    """The exported forward, run by the directory's own loader with jax alone, at two batch
    sizes (the batch dimension is symbolic), equals model.apply. (No GPU here to run the cuda
    lowering on.)"""
    from jaxvision.cli import main as cli_main
    from jaxvision.convert import store
    from jaxvision.train.runs import load_run

    out = tmp_path / "hlo"
    assert cli_main(["export", "--workdir", str(base_run), "--format", "stablehlo",
                     "--platforms", "cpu,cuda", str(out)]) == 0
    meta = store.read_meta(out)
    assert meta["input"]["shape"] == ["batch", 32, 32, 3] and meta["preprocessing"]["std"]
    assert meta["platforms"] == ["cpu", "cuda"]  # lowered for a GPU too, run here on the CPU
    rng = np.random.default_rng(0)
    for b in (1, 3):
        np.save(tmp_path / f"x{b}.npy", rng.standard_normal((b, 32, 32, 3)).astype(np.float32))
    code = (f"import sys, numpy as np; sys.path.insert(0, {str(out)!r}); import run\n"
            f"for b in (1, 3):\n"
            f"    np.save({str(tmp_path)!r} + f'/y{{b}}.npy', "
            f"np.asarray(run.run(np.load({str(tmp_path)!r} + f'/x{{b}}.npy'))))\n"
            f"assert not {{'jaxvision', 'flax', 'torch'}} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=300)
    _, _, model, variables, _ = load_run(str(base_run))
    for b in (1, 3):
        want = model.apply(variables, np.load(tmp_path / f"x{b}.npy"), train=False)
        np.testing.assert_allclose(np.load(tmp_path / f"y{b}.npy"), want, rtol=1e-5, atol=1e-5)


def test_export_onnx_of_a_run_runs_in_onnxruntime_and_records_its_card(base_run, tmp_path,
                                                                      capsys):
    """``export --workdir RUN --format onnx``: onnxruntime gives model.apply's logits at two
    batch sizes, and ``info`` on the directory names the run as the weights' provenance."""
    import json

    import onnxruntime

    from jaxvision.cli import main as cli_main
    from jaxvision.train.runs import load_run

    out = tmp_path / "onnx"
    assert cli_main(["export", "--workdir", str(base_run), "--format", "onnx", str(out)]) == 0
    _, _, model, variables, step = load_run(str(base_run))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    want = np.asarray(model.apply(variables, x, train=False))
    for b in (1, 3):
        (got,) = session.run(["logits"], {"images": x[:b]})
        np.testing.assert_allclose(got, want[:b], rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["weights"]["provenance"] == f"trained with jaxvision: {base_run} step {step}"
    assert shown["num_params"] == sum(np.size(a) for a in jax.tree.leaves(variables["params"]))
    assert shown["format"] == "onnx" and shown["preprocessing"]["crop_size"] == 32


def test_bad_val_file_keeps_the_trained_steps_and_the_resume_evaluates_them(tmp_path, capsys):
    # issue 25.1: evaluation ran before the save, so a truncated val image threw the epoch away
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 11), ("val", 2)):  # 33 train images: an epoch is 4 steps of 8
        for c in ("a", "b", "c"):
            os.makedirs(tmp_path / "data" / split / c)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png")
    bad = tmp_path / "data" / "val" / "b" / "1.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:len(good) // 2])
    workdir = tmp_path / "w"
    args = ["--config", CONFIG_FILE, "--workdir", str(workdir), "--config.data.source=imagefolder",
            f"--config.data.imagefolder.root={tmp_path / 'data'}"]
    assert train_cli("train", args) == 2  # the shared run's 12 steps: its compiled steps
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(bad) in err and "the trained state is saved" in err and "from step 4" in err
    mgr = checkpoint.manager(str(workdir), read_only=True)
    assert mgr.all_steps() == [4] and mgr.metrics(4) is None
    mgr.close()
    bad.write_bytes(good)
    assert train_cli("train", args) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = out.splitlines()
    resumed = lines.index(f"resumed from step 4 in {workdir}")
    # step 4 is evaluated before training goes on from it
    assert lines[resumed + 1].startswith("step 4 epoch 1: val_loss=")
    assert [l.split(":")[0] for l in lines[resumed + 2:] if " epoch " in l] == [
        "step 8 epoch 2", "step 12 epoch 3"]
    mgr = checkpoint.manager(str(workdir), read_only=True)
    metrics = {s: mgr.metrics(s) for s in mgr.all_steps()}
    assert 12 in metrics and all(m and "val_top1" in m for m in metrics.values()), metrics
    mgr.close()


def test_saves_print_no_missing_metrics_or_slow_wait_warning(tmp_path, caplog):
    # issue 25.10: every step is saved before its evaluation: Orbax warned at each save
    state = {"w": np.ones(3, np.float32)}
    mgr = checkpoint.manager(str(tmp_path), keep=2, best_metric="val_top1")
    with caplog.at_level("WARNING"):
        checkpoint.save(mgr, 1, state, b"{}", {})
        assert not [r for r in caplog.records if "metrics" in r.getMessage()], caplog.text
        checkpoint.record_metrics(mgr, 1, {"val_top1": 0.5})
        # Orbax adds save()'s own wait for its files to the next save's wait for "the
        # previous save", and warns past 1 s: what a slow write (a loaded machine) leaves
        assert isinstance(mgr._wait_for_prev_save_duration, float)  # save 1's, counted
        mgr._wait_for_prev_save_duration = 1.5
        checkpoint.save(mgr, 2, state, b"{}", {})
    assert not caplog.records, caplog.text
    assert mgr.best_step() == 1 and mgr.metrics(1) == {"val_top1": 0.5}
    mgr.close()


def test_refused_resume_of_a_truncated_step_is_one_line_without_asyncio_noise(base_run, tmp_path):
    # issue 25.10: the reads still in flight when one failed printed "Event loop is closed" and
    # "Exception ignored in: <coroutine ...>" tracebacks around the refusal
    workdir = copy_of(base_run, tmp_path)
    data = workdir / "checkpoints" / "12" / "state" / "ocdbt.process_0" / "d"
    for name in os.listdir(data):  # every array file at half its size: many reads fail at once
        path = data / name
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    for _ in range(2):  # whether reads are still in flight is a race: the noise came 3 in 5
        proc = cli("train", "--config", CONFIG_FILE, "--workdir", str(workdir))
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2
        assert err.startswith("jaxvision train: error: checkpoint step 12 is corrupt"), err
        assert len(err.strip().splitlines()) == 1, err


def test_failed_read_echoes_are_dropped_whatever_the_futures_class():
    # the truncated-step run above printed "_GatheringFuture exception was never retrieved" (an
    # asyncio.gather inside Orbax), past a filter that knew only Future and Task
    echoes = checkpoint._FailedReadEchoes()
    try:
        def kept(message):
            return echoes.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                                   message, None, None))

        for cls in ("Future", "Task", "_GatheringFuture"):
            assert not kept(f"{cls} exception was never retrieved\nfuture: <{cls} finished>")
        assert kept("Unclosed client session")
        assert kept("Task was destroyed but it is pending!")
        assert kept("a line that mentions: Task exception was never retrieved")
    finally:
        echoes.remove()


@pytest.fixture
def started():
    """The processes a test starts; those still running at its end are killed."""
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _wait_for(condition, procs, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        for p in procs:
            if p.poll() is not None:
                return False
        time.sleep(0.2)
    return condition()


def _steps_logged(workdir):
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(l)["step"] for l in lines if "train/loss" in l]


def test_second_trainer_on_a_held_workdir_is_refused_and_the_first_finishes(tmp_path, started):
    # issue 25.2: two trainers on one workdir crashed at the first save or, staggered, both
    # "succeeded" overwriting each other's checkpoints and logging every step twice
    workdir = tmp_path / "w"
    args = ("train", "--config", CONFIG_FILE, "--workdir", str(workdir),
            "--config.train.steps=400", "--config.train.log_every=1",
            "--config.train.eval_every_epochs=1000", "--config.checkpoint.save_every_steps=2")
    together = [cli(*args), cli(*args)]
    started += together
    assert _wait_for(lambda: any(p.poll() is not None for p in together), [], 300)
    loser = next(p for p in together if p.poll() is not None)
    winner = next(p for p in together if p is not loser)
    err = loser.communicate(timeout=60)[1]
    holder = (rf"{re.escape(str(workdir))}: in use by another trainer \(pid {winner.pid} on "
              r"host \S+, started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)")
    assert loser.returncode == 2 and re.fullmatch(r"jaxvision train: error: " + holder +
                                                  r"; wait for it to end or use another "
                                                  r"--workdir\n", err), err
    # staggered: the second trainer comes once the first has checkpoints
    assert _wait_for(lambda: (workdir / "checkpoints" / "2").is_dir(), [winner]), \
        winner.communicate()[1][-3000:]
    late = cli(*args)
    started.append(late)
    err = late.communicate(timeout=300)[1]
    assert late.returncode == 2 and re.match("jaxvision train: error: " + holder, err), err
    assert len(err.splitlines()) == 1
    assert winner.poll() is None, "the first trainer did not outlive the refused one"
    winner.send_signal(signal.SIGTERM)
    out, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, err[-3000:]
    assert "stopped by signal" in out and "Traceback" not in err and "WARNING" not in err, err
    steps = _steps_logged(workdir)
    assert steps == list(range(1, len(steps) + 1))  # every step once
    ckpts = os.listdir(workdir / "checkpoints")
    assert all(p.isdigit() for p in ckpts), ckpts  # no half-written step left
    assert not (workdir / "train.lock").exists()


def _segments_of(pid):
    from jaxvision.data import workers

    return [n for n in os.listdir("/dev/shm") if n.startswith(workers.segment_prefix(pid))]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory is listed in "
                    "/dev/shm on Linux only")
def test_killed_process_group_leaves_no_shared_memory_and_a_normal_exit_no_warning(tmp_path,
                                                                                   started):
    # issue 25.6: `kill -9 -- -PGID` left grain's prefetched batches in /dev/shm for good, and
    # every normal exit warned of leaked shared_memory objects
    workdir = tmp_path / "w"
    args = ("train", "--config", CONFIG_FILE, "--workdir", str(workdir),
            "--config.data.num_workers=1", "--config.train.log_every=1")
    victim = cli(*args, "--config.train.steps=400", start_new_session=True)
    started.append(victim)
    assert _wait_for(lambda: _steps_logged(workdir) and _segments_of(victim.pid), [victim]), \
        victim.communicate()[1][-3000:]
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer, its worker and the resource tracker
    victim.wait()
    left = _segments_of(victim.pid)
    assert left, "precondition: the killed run left segments behind"
    # a new start (no checkpoint was saved) of the shared run's config: its compiled steps
    resumed = cli(*args)
    started.append(resumed)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    # removed at its start, unless a trainer of a parallel test started first and removed them
    # (every trainer cleans the host's dead runs; tests/test_workers.py checks it in isolation)
    removed = re.search(r"removed (\d+) shared memory segments .* \(pids ([\d, ]+)\)", out)
    assert removed or not _segments_of(victim.pid), out
    if removed:
        assert int(removed.group(1)) >= len(left), out
        assert str(victim.pid) in removed.group(2).split(", "), out
    assert "Traceback" not in err and "leaked" not in err and "WARNING" not in err, err
    assert not _segments_of(victim.pid) and not _segments_of(resumed.pid)


def test_workdir_lock_without_flock_takes_over_a_dead_holder_only(tmp_path, monkeypatch):
    # where the filesystem has no flock the holder's record is the lock: a record whose process
    # is gone from this host is stale; a live or another host's holder is named
    import fcntl
    import socket

    from jaxvision.train import workdir_lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = tmp_path / workdir_lock.NAME
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    lock.write_text(json.dumps({"pid": gone.pid, "host": host, "started": "then"}))
    with workdir_lock.hold(str(tmp_path)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()} on host"):
            with workdir_lock.hold(str(tmp_path)):
                pass
    assert not lock.exists()
    for pid, on in ((os.getppid(), host), (gone.pid, "elsewhere")):
        lock.write_text(json.dumps({"pid": pid, "host": on, "started": "then"}))
        with pytest.raises(workdir_lock.WorkdirLocked,
                           match=f"pid {pid} on host {on}.*if that run is gone, remove {lock}"):
            with workdir_lock.hold(str(tmp_path)):
                pass


def test_a_step_a_killed_run_was_writing_is_removed_without_a_warning(tmp_path, caplog):
    # a SIGKILL mid-save leaves Orbax's temporary directory: the next trainer's manager
    # removes it at once, not with a warning when (if ever) the same step is saved again
    stale = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
    stale.mkdir(parents=True)
    (stale / "half").write_text("x")
    state = {"w": jax.numpy.ones((4,))}
    with caplog.at_level(logging.WARNING):
        mgr = checkpoint.manager(str(tmp_path))
        checkpoint.save(mgr, 3, state, b"{}", {"model": "m"})
        mgr.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # a reader (eval, predict) never removes what a running trainer is writing
    stale.mkdir()
    checkpoint.manager(str(tmp_path), read_only=True).close()
    assert stale.exists()

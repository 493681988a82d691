"""Fine-tuning as a user runs it, then eval / predict / extract on the workdir it leaves."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import torchvision
from PIL import Image

import jaxvision as jv
from jaxvision.train import checkpoint
from jaxvision.cli import run_command as cli
from jaxvision.train.config import apply_overrides, load_config_file

ROOT = os.path.dirname(os.path.dirname(__file__))
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def write_folder(root, per_class):
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for name, rgb in COLORS.items():
            os.makedirs(root / split / name)
            for i in range(n):
                img = np.clip(np.array(rgb) + rng.normal(0, 40, (40, 44, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    pth = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    write_folder(tmp / "data", {"train": 16, "val": 5})  # 15 val images: not a batch multiple
    config = apply_overrides(load_config_file(os.path.join(ROOT, "configs/finetune_imagefolder.py")), [
        f"--config.model.pretrained={pth}", f"--config.data.imagefolder.root={tmp / 'data'}",
        "--config.data.image_size=32", "--config.data.resize_size=36", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.data.num_workers=0", "--config.train.epochs=2",
        "--config.train.log_every=1", "--config.logging.progress_bar=false",
        "--config.logging.num_images=4"])
    from jaxvision.train.loop import train

    lines = []
    result = train(config, str(tmp / "run"), log=lines.append)
    pretrained = jv.load_pretrained("resnet18", str(pth), strict=False,
                                    model=jv.create_model("resnet18", num_classes=3))
    return tmp, result, lines, pretrained


def test_finetune_loads_trains_and_keeps_frozen_stages(finetuned):
    tmp, result, lines, pretrained = finetuned
    assert any("shape mismatch" in l and "fc.weight" in l for l in lines), lines[:3]
    losses = [float(m) for m in re.findall(r"train_loss=([\d.]+)", "\n".join(lines))]
    assert len(losses) == 12  # 48 images / 8 per step, 2 epochs
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert result["val_count"] == 15
    mgr = checkpoint.manager(tmp / "run")
    state = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    for name in ("conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"):
        jax.tree.map(np.testing.assert_array_equal, state["params"][name],
                     jax.device_get(pretrained["params"][name]))
    # norm_eval: no BatchNorm statistic moved, frozen or not
    jax.tree.map(np.testing.assert_array_equal, state["batch_stats"],
                 jax.device_get(pretrained["batch_stats"]))
    assert not np.array_equal(state["params"]["layer4_1"]["conv2"]["kernel"],
                              pretrained["params"]["layer4_1"]["conv2"]["kernel"])


def test_eval_and_predict_commands(finetuned, capsys):
    tmp, result, _, _ = finetuned
    assert cli("eval", ["--workdir", str(tmp / "run")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["val_count"] == 15 and abs(out["val_top1"] - result["val_top1"]) < 1e-6
    images = [str(tmp / "data/val/red/0.png"), str(tmp / "data/val/blue/1.png")]
    assert cli("predict", ["--workdir", str(tmp / "run"), "--topk", "2", *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        pairs = re.findall(r"(red|green|blue) ([\d.]+)", line)
        assert len(pairs) == 2 and 0 < sum(float(p) for _, p in pairs) <= 1.0001
    assert cli("predict", ["--workdir", str(tmp / "run"), str(tmp / "nope.png")]) == 2
    assert "nope.png: not a readable image" in capsys.readouterr().err
    assert cli("eval", ["--workdir", str(tmp / "empty")]) == 2
    assert "config.json: no such file" in capsys.readouterr().err


def test_extracted_embeddings_train_a_linear_probe_above_chance(finetuned):
    tmp, _, _, _ = finetuned
    for split in ("train", "val"):
        assert cli("extract", ["--workdir", str(tmp / "run"), "--split", split,
                               "--out", str(tmp / f"{split}.npz")]) == 0
    tr, va = np.load(tmp / "train.npz"), np.load(tmp / "val.npz")
    assert tr["embeddings"].shape == (48, 512) and va["embeddings"].shape == (15, 512)
    mu, sd = tr["embeddings"].mean(0), tr["embeddings"].std(0) + 1e-6
    x, xv = (tr["embeddings"] - mu) / sd, (va["embeddings"] - mu) / sd
    w = {"w": jnp.zeros((512, 3)), "b": jnp.zeros(3)}
    tx = optax.adam(0.01)
    opt = tx.init(w)
    loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(
        x @ w["w"] + w["b"], tr["labels"]).mean()
    for _ in range(100):
        g = jax.grad(loss)(w)
        upd, opt = tx.update(g, opt)
        w = optax.apply_updates(w, upd)
    acc = float(np.mean(np.argmax(xv @ w["w"] + w["b"], -1) == va["labels"]))
    assert acc >= 0.8, acc  # chance is 1/3

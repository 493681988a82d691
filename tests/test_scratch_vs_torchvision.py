"""scripts/scratch_vs_torchvision.py without its long runs: the folder it writes reads the same
on both sides, its config is valid and leaves the lowering to the library, and the torchvision
script it times trains and evaluates (one step; -m sweep). Timings are its output, never asserted here."""
import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = runpy.run_path(os.path.join(ROOT, "scripts", "scratch_vs_torchvision.py"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scratch") / "data")
    assert SCRIPT["write_folder"](root, 70, 12) == {"train": 70, "val": 12}
    return root


def test_folder_reads_the_same_in_jaxvision_and_torchvision(folder):
    import torchvision

    from jaxvision.tasks import build_data
    from jaxvision.train.config import check_config

    c = SCRIPT["load_config"](1)
    c.data.imagefolder.root = folder
    check_config(c)
    data = build_data(c.data, c.model.name)
    tv = torchvision.datasets.ImageFolder(os.path.join(folder, "train"))
    # the same class order is the same label of every image on both sides
    assert data.class_names == tv.classes and len(tv.classes) == SCRIPT["NUM_CLASSES"]
    assert (data.num_train, len(tv)) == (70, 70)
    # the torch worker hard-codes torchvision's ImageNet normalisation: jaxvision's must agree
    assert (data.mean, data.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_config_leaves_the_lowering_to_the_library():
    with open(SCRIPT["CONFIG"]) as f:
        assert "lowering" not in f.read()
    assert SCRIPT["load_config"](None).get("conv_lowering") == ""


@pytest.mark.sweep  # a torch resnet18 step: 1 s quiet, 12 s at load 11; the suite has no room
def test_torch_script_trains_and_evaluates(folder, tmp_path):
    r = SCRIPT["recipe"](1)
    assert (r["batch"], r["lr"], r["momentum"], r["image_size"]) == (64, 0.02, 0.9, 32)
    out = SCRIPT["torch_train"](folder, str(tmp_path), r)
    assert len(out["curve"]) == 1 and 0.0 <= out["val_top1"] <= 1.0
    assert out["step"] == 70 // 64  # drop_last, as jaxvision's loader
    assert os.path.isfile(tmp_path / "torch_checkpoint.pth")


def test_recipe_refuses_a_config_the_torch_script_does_not_match(monkeypatch):
    changed = SCRIPT["load_config"](1)
    changed.optimizer.name = "adamw"
    monkeypatch.setitem(SCRIPT["recipe"].__globals__, "load_config", lambda *a: changed)
    with pytest.raises(SystemExit, match="scratch_imagefolder.py changed its recipe"):
        SCRIPT["recipe"](1)


def test_too_few_images_is_refused(capsys):
    with pytest.raises(SystemExit):
        SCRIPT["main"](["--num-images", "10"])
    assert "--num-images must be >= 70" in capsys.readouterr().err


def test_same_work_line_flags_a_different_step_count_or_thread_count():
    row = lambda step, **kw: {"result": {"step": step}, **kw}
    cpus = os.cpu_count()
    same = SCRIPT["same_work"]({"jaxvision": row(270), "torch": row(270, threads=cpus)})
    assert "train steps jaxvision 270, torch 270;" in same and "DIFFERENT" not in same
    assert f"torch intra-op threads {cpus}, XLA:CPU's pool {cpus} CPUs" in same
    steps = SCRIPT["same_work"]({"jaxvision": row(270), "torch": row(252, threads=cpus)})
    assert steps.count("DIFFERENT") == 1 and "torch 252  <- DIFFERENT" in steps
    threads = SCRIPT["same_work"]({"jaxvision": row(270), "torch": row(270, threads=cpus + 1)})
    assert threads.endswith("<- DIFFERENT (--torch-threads)")

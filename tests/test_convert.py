"""torchvision weights in and out: files, the CLI, strict and partial loads, bad input."""
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxvision as jv
from jaxvision.cli import main as cli_main
from jaxvision.convert import ConversionError
from tv_parity import assert_close, images, nchw, tv_model


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory):
    tmodel = tv_model("resnet18")
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(tmodel.state_dict(), path)
    return tmodel, path


def logits(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))


def leftovers(parent):
    return [p for p in os.listdir(parent) if ".tmp-" in p]


def test_round_trip_pth_to_cli_to_orbax_to_create_model(resnet18_pth, tmp_path, capsys):
    tmodel, pth = resnet18_pth
    out = tmp_path / "converted"
    assert cli_main(["convert", "resnet18", str(pth), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "loaded 102 tensors; 0 missing, 0 unexpected, 0 shape mismatches, 20 ignored" in printed
    model, variables = jv.create_model("resnet18", pretrained=str(out))
    x = images((2, 96, 96, 3))
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_close(logits(model, variables, x), want, what="converted directory")
    model2, variables2 = jv.create_model("resnet18", pretrained=pth)
    assert_close(logits(model2, variables2, x), want, what="direct .pth")


def test_partial_load_new_head_keeps_backbone(resnet18_pth):
    tmodel, pth = resnet18_pth
    with pytest.raises(ConversionError) as e:
        jv.create_model("resnet18", num_classes=10, pretrained=pth)
    assert "fc.weight: (1000, 512) vs (10, 512)" in str(e.value)  # torch's shape, flax path's
    assert "fc.bias" in str(e.value)
    variables, report = jv.load_pretrained("resnet18", pth, strict=False, num_classes=10,
                                           return_report=True)
    assert [m[0] for m in report.mismatched] == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 100 and not report.unexpected and not report.missing
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  tmodel.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)


def test_partial_cli_convert_writes_new_head(resnet18_pth, tmp_path, capsys):
    _, pth = resnet18_pth
    out = tmp_path / "ten"
    assert cli_main(["convert", "resnet18", str(pth), str(out), "--num-classes", "10",
                     "--partial"]) == 0
    assert "2 shape mismatch" in capsys.readouterr().out
    model, variables = jv.create_model("resnet18", pretrained=str(out))
    assert model.num_classes == 10
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)


def test_features_only_model_loads_a_classifier_state_dict(resnet18_pth):
    tmodel, pth = resnet18_pth
    model, variables = jv.create_model("resnet18", pretrained=pth, features_only=True)
    assert "fc" not in variables["params"]
    feats = jax.jit(model.apply)(variables, jnp.asarray(images((1, 64, 64, 3))))
    assert set(feats) == {"stem", "layer1", "layer2", "layer3", "layer4"}


@pytest.mark.parametrize("how", ["truncated", "text", "empty"])
def test_unreadable_pth_is_named_and_leaves_nothing(resnet18_pth, tmp_path, capsys, how):
    _, pth = resnet18_pth
    bad = tmp_path / "bad.pth"
    data = open(pth, "rb").read()
    bad.write_bytes({"truncated": data[: len(data) // 2], "text": b"hello, not torch\n",
                     "empty": b""}[how])
    with pytest.raises(ConversionError, match="bad.pth: not a readable torch weights file"):
        jv.create_model("resnet18", pretrained=bad)
    out = tmp_path / "out"
    assert cli_main(["convert", "resnet18", str(bad), str(out)]) == 2
    assert "bad.pth: not a readable torch weights file" in capsys.readouterr().err
    assert not out.exists() and not leftovers(tmp_path)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f, protocol=2)
    with pytest.raises(ConversionError, match="evil.pth"):
        jv.load_pretrained("resnet18", bad)
    assert not marker.exists()


def test_state_dict_of_another_architecture(resnet18_pth, tmp_path, capsys):
    _, pth = resnet18_pth
    with pytest.raises(ConversionError) as e:
        jv.create_model("resnet50", pretrained=pth)
    msg = str(e.value)
    assert "are these weights for another model?" in msg
    assert "165 missing" in msg and "batch_stats/layer1_0/bn3/mean" in msg
    assert "shape mismatch" in msg and "fc.weight: (1000, 512) vs (1000, 2048)" in msg
    out = tmp_path / "r50"
    assert cli_main(["convert", "resnet50", str(pth), str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert not out.exists() and not leftovers(tmp_path)


def test_unexpected_keys_fail_strict_and_are_reported_partial(resnet18_pth):
    tmodel, _ = resnet18_pth
    sd = dict(tmodel.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError, match="1 unexpected.*\n  extra.weight"):
        jv.load_pretrained("resnet18", sd)
    _, report = jv.load_pretrained("resnet18", sd, strict=False, return_report=True)
    assert report.unexpected == ["extra.weight"]


def test_missing_path_and_existing_output(resnet18_pth, tmp_path, capsys):
    _, pth = resnet18_pth
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):
        jv.create_model("resnet18", pretrained=tmp_path / "nope.pth")
    assert cli_main(["convert", "resnet18", str(tmp_path / "nope.pth"), str(tmp_path / "o")]) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    assert cli_main(["convert", "resnet18", str(pth), str(busy)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert os.listdir(busy) == ["keep.txt"]


def test_directory_of_another_model_is_refused(resnet18_pth, tmp_path):
    _, pth = resnet18_pth
    out = tmp_path / "r18"
    assert cli_main(["convert", "resnet18", str(pth), str(out)]) == 0
    with pytest.raises(ConversionError, match="holds weights for 'resnet18', not 'resnet34'"):
        jv.create_model("resnet34", pretrained=out)
    with pytest.raises(ConversionError, match="not a jaxvision weights directory"):
        jv.create_model("resnet18", pretrained=tmp_path)


def test_unknown_model_suggests_close_names(capsys):
    with pytest.raises(KeyError, match="unknown model 'resnet5'; did you mean resnet50"):
        jv.create_model("resnet5")
    assert cli_main(["info", "resnet5"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_training_checkpoint_wrappers_and_ddp_prefix_are_unwrapped(resnet18_pth, tmp_path):
    tmodel, _ = resnet18_pth
    sd = {f"module.{k}": v for k, v in tmodel.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    variables = jv.load_pretrained("resnet18", path)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], tmodel.fc.bias.detach().numpy())


def test_a_torch_module_converts_directly(resnet18_pth):
    tmodel, _ = resnet18_pth
    variables = jv.load_pretrained("resnet18", tmodel)
    x = images((1, 64, 64, 3))
    with torch.no_grad():
        want = tmodel(nchw(x))
    assert_close(jv.create_model("resnet18").apply(variables, jnp.asarray(x)), want)


def test_list_and_info(capsys):
    assert jv.list_models("resnet1*") == ["resnet101", "resnet152", "resnet18"]
    assert cli_main(["list", "wide*"]) == 0
    assert capsys.readouterr().out.split() == ["wide_resnet101_2", "wide_resnet50_2"]
    info = jv.model_info("resnet50")
    assert (info.torch_name, info.num_params, info.crop_size) == ("resnet50", 25_557_032, 224)
    assert cli_main(["info", "resnet50"]) == 0
    assert '"num_params": 25557032' in capsys.readouterr().out


def test_convert_refuses_early_cleans_stale_temps_and_names_the_fixes(resnet18_pth, tmp_path,
                                                                     capsys, monkeypatch):
    tmodel, pth = resnet18_pth
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    with monkeypatch.context() as m:  # nothing may be loaded for a destination that is refused
        m.setattr(jv, "load_pretrained", lambda *a, **k: pytest.fail("loaded before refusing"))
        assert cli_main(["convert", "resnet18", str(pth), str(busy)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    # a temp dir of a killed conversion (its pid is gone) is removed by the next run
    stale = tmp_path / ".out.tmp-999999999-abcd"
    (stale / "variables").mkdir(parents=True)
    assert cli_main(["convert", "resnet18", str(pth), str(tmp_path / "out")]) == 0
    assert not stale.exists() and not leftovers(tmp_path)
    # a whole pickled model: say what to save instead, never torch's weights_only=False advice
    whole = tmp_path / "whole.pth"
    torch.save(tmodel, whole)
    assert cli_main(["convert", "resnet18", str(whole), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "save model.state_dict() instead" in err and "weights_only" not in err
    # strict errors name the ways out in each interface
    assert cli_main(["convert", "resnet18", str(pth), str(tmp_path / "o3"), "--num-classes",
                     "10"]) == 2
    err = capsys.readouterr().err
    assert "--partial" in err and "--num-classes" in err and "model.pretrained_strict" in err


def test_converted_weights_record_preprocessing_and_imagenet_names(resnet18_pth, tmp_path,
                                                                   capsys):
    from PIL import Image

    from jaxvision.convert import preprocess, store
    from jaxvision.registry import get_spec

    # torchvision's file names identify the release: resnet50 IMAGENET1K_V2 is resized to 232
    v2 = preprocess.describe(get_spec("resnet50"), "resnet50-11ad3fa6.pth")
    assert v2["preprocessing"]["resize_size"] == 232 and len(v2["categories"]) == 1000
    assert "IMAGENET1K_V2" in v2["preprocessing"]["from"]
    assert preprocess.describe(get_spec("resnet50"), "mine.pth")["preprocessing"][
        "resize_size"] == 256  # not one of torchvision's files: the registry's spec
    _, pth = resnet18_pth
    out = tmp_path / "r18"
    assert cli_main(["convert", "resnet18", str(pth), str(out), "--categories", "imagenet"]) == 0
    meta = store.read_meta(out)
    assert meta["categories"][:2] == ["tench", "goldfish"] and len(meta["categories"]) == 1000
    assert meta["preprocessing"]["crop_size"] == 224
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0  # the directory's model card
    shown = json.loads(capsys.readouterr().out)
    assert shown["num_params"] == sum(t.numel() for t in resnet18_pth[0].parameters())
    assert (shown["weights"]["provenance"], shown["format"]) == (str(pth), "dir")
    assert shown["weights"]["license"].startswith("unknown")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.png")
    capsys.readouterr()
    assert cli_main(["predict", "--weights", str(out), "--topk", "3", str(tmp_path / "red.png")]) == 0
    line = capsys.readouterr().out.strip()
    names = [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(", ")]
    assert len(names) == 3 and set(names) <= set(meta["categories"]), line

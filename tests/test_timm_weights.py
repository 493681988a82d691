"""timm's weights by name (``timm:ARCH.TAG``) from a Hugging Face hub cache built on disk,
offline."""
import json

import huggingface_hub.constants as hf_constants
import pytest
import safetensors.torch
import timm
import torch
import torchvision

import jaxvision as jv
from jaxvision.cli import main as cli_main
from jaxvision.convert import ConversionError, store
from jaxvision.convert.timm_hub import ARCHITECTURES
from tv_parity import assert_close, images, nchw, tv_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CFG = {"input_size": [3, 224, 224], "crop_pct": 0.95, "interpolation": "bicubic",
       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "license": "apache-2.0"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache, offline: nothing here can reach the network."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def cache(hub, tagged, tmodel):
    """timm's hub layout: refs/main names a snapshot holding config.json and the weights."""
    root = hub / f"models--timm--{tagged}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    arch = tagged.split(".")[0]
    (snapshot / "config.json").write_text(json.dumps(
        {"architecture": arch, "num_classes": 1000, "pretrained_cfg": CFG}))
    safetensors.torch.save_file(tmodel.state_dict(), snapshot / "model.safetensors")


def test_timm_resnet_by_name_gives_timms_logits_and_records_its_preprocessing(hub, tmp_path):
    tmodel = tv_model(lambda: timm.create_model("resnet18"))
    cache(hub, "resnet18.a1_in1k", tmodel)
    x = images((2, 64, 64, 3))
    with torch.no_grad():
        want = tmodel.eval()(nchw(x)).numpy()
    model, variables = jv.create_model("resnet18", pretrained="timm:resnet18.a1_in1k")
    assert_close(model.apply(variables, x, train=False), want, what="timm resnet18")

    out = tmp_path / "converted"
    assert cli_main(["convert", "resnet18", "timm:resnet18.a1_in1k", str(out)]) == 0
    p = store.read_meta(out)["preprocessing"]
    assert (p["resize_size"], p["crop_size"], p["interpolation"], p["license"]) == (
        235, 224, "bicubic", "apache-2.0")  # timm's floor(224 / 0.95)


def test_mapped_timm_architectures_have_torchvisions_keys_and_shapes():
    with torch.device("meta"):
        for arch, name in ARCHITECTURES.items():
            ours = timm.create_model(arch).state_dict()
            theirs = torchvision.models.get_model(name).state_dict()
            assert {k: v.shape for k, v in ours.items()} == {
                k: v.shape for k, v in theirs.items()}, arch


def test_unmapped_untagged_mismatched_and_uncached_names_are_refused(hub):
    with pytest.raises(ConversionError, match="timm's 'resnet50d' is not mapped.*resnet152"):
        jv.create_model("resnet50", pretrained="timm:resnet50d.ra2_in1k")
    with pytest.raises(ConversionError, match="name the weights' tag too, e.g. timm:resnet50"):
        jv.create_model("resnet50", pretrained="timm:resnet50")
    with pytest.raises(ConversionError, match="weights for jaxvision's 'resnet50', not 'resnet18'"):
        jv.create_model("resnet18", pretrained="timm:resnet50.a1_in1k")
    with pytest.raises(ConversionError, match="could not fetch .* of timm/resnet50.a1_in1k from "
                                              "the Hugging Face hub or its local cache"):
        jv.create_model("resnet50", pretrained="timm:resnet50.a1_in1k")

"""timm's weights by name (``timm:ARCH.TAG``) from a Hugging Face hub cache built on disk,
offline."""
import json

import huggingface_hub.constants as hf_constants
import jax
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision

import jaxvision as jv
from jaxvision.cli import main as cli_main
from jaxvision.convert import ConversionError, card, store
from jaxvision.convert.timm_hub import ARCHITECTURES
from tv_parity import as_float64, assert_close, assert_parity, images, nchw, tv_model

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
    shown = card.directory_card(out)
    assert shown["weights"]["license"] == "apache-2.0"
    assert shown["weights"]["provenance"].startswith("timm resnet18.a1_in1k")
    assert shown["num_params"] == sum(t.numel() for t in tmodel.parameters())


# one architecture of each mapped family other than ResNet: (timm arch, tag, timm kwargs,
# jaxvision kwargs, size), small to stay cheap (ViT: two patches a side, two of its twelve
# layers: the keys test below maps all twelve); RegNet at 64 px, as
# BatchNorm calibrated on 1x1 maps sends its random logits past 1000
FAMILIES = [("convnext_tiny", "fb_in1k", {}, {}, 32),
            ("vit_base_patch16_224", "augreg_in21k_ft_in1k", {"img_size": 32, "depth": 2},
             {"image_size": 32, "num_layers": 2}, 32),
            ("regnety_004", "pycls_in1k", {}, {}, 64),
            # RegNetX: RegNetY's key map less the squeeze-excitation
            pytest.param("regnetx_008", "pycls_in1k", {}, {}, 64, marks=pytest.mark.sweep),
            ("efficientnet_b0", "ra_in1k", {}, {}, 32)]


@pytest.mark.parametrize("arch,tag,timm_kwargs,kwargs,size", FAMILIES,
                         ids=["convnext_tiny", "vit_base_patch16_224", "regnety_004", "regnetx_008",
                              "efficientnet_b0"])
def test_timm_family_by_name_gives_timms_logits(hub, arch, tag, timm_kwargs, kwargs, size):
    tmodel = tv_model(lambda: timm.create_model(arch, **timm_kwargs), calib_size=(size, size),
                      nonzero=True)
    cache(hub, f"{arch}.{tag}", tmodel)
    x = images((2, size, size, 3))
    with torch.no_grad():
        want = tmodel.eval()(nchw(x)).numpy()
    name = ARCHITECTURES[arch][0]
    model, variables = jv.create_model(name, pretrained=f"timm:{arch}.{tag}", **kwargs)
    got = jax.jit(lambda v, i: model.apply(v, i, train=False))(variables, x)
    # 1e-4 relative to the logits' size, else as exact as torch itself (against float64):
    # calibrated random weights reach logits of ~100 (efficientnet_b0's ~2e4), where float32
    # differs past 1e-4 between two correct orders of summation (the lowering's, torch's threads)

    def truth():
        with torch.no_grad():
            return as_float64(tmodel).eval()(nchw(x).double()).numpy()

    assert_parity(f"timm {arch}", got, want, truth,
                  tol=1e-4 * max(1.0, float(np.abs(want).max())))


def _shapes(build, meta: bool, rename=dict):
    if not meta:  # torchvision's RegNet computes its widths with tensors: no meta device
        return {k: v.shape for k, v in rename(build().state_dict()).items()}
    with torch.device("meta"):
        return {k: v.shape for k, v in rename(build().state_dict()).items()}


def _assert_same_keys_and_shapes(arch):
    name, rename = ARCHITECTURES[arch]
    ours = _shapes(lambda: timm.create_model(arch), True, rename)
    theirs = _shapes(lambda: torchvision.models.get_model(name), not name.startswith("regnet"))
    if name in ("vit_l_32", "vit_h_14"):  # timm's default head is ImageNet-21k's
        ours = {k: v for k, v in ours.items() if not k.startswith("heads.")}
        theirs = {k: v for k, v in theirs.items() if not k.startswith("heads.")}
    assert ours == theirs, arch


@pytest.mark.parametrize("arch", [a for a, (n, _) in ARCHITECTURES.items()
                                  if not n.startswith("regnet")])
def test_mapped_timm_architectures_have_torchvisions_keys_and_shapes(arch):
    _assert_same_keys_and_shapes(arch)


# torchvision's RegNets build only on a real device (seconds each); the logits tests above load
# regnety_004 strictly
@pytest.mark.sweep
@pytest.mark.parametrize("arch", [a for a, (n, _) in ARCHITECTURES.items()
                                  if n.startswith("regnet")])
def test_every_mapped_regnet_has_torchvisions_keys_and_shapes(arch):
    _assert_same_keys_and_shapes(arch)


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

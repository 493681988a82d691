"""safetensors in and out, in torchvision's key names; the name rule's inverse."""
import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

import jaxvision as jv
from jaxvision.api import init_variables, torch_state_dict
from jaxvision.cli import main as cli_main
from jaxvision.convert import ConversionError, safetensors_io
from jaxvision.convert.torchvision import _CANDIDATES, module_path, torch_key
from jaxvision.registry import get_spec
from tv_parity import assert_close, images, nchw, tv_model

# torchvision's googlenet keeps its auxiliary heads unless told; jaxvision's has none
TORCH_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                "inception_v3": {"init_weights": False}}


def torch_logits(tmodel, x):
    with torch.no_grad():
        return tmodel.eval()(nchw(x)).numpy()


def test_torchvision_to_safetensors_to_jaxvision_and_back(tmp_path, capsys):
    """torchvision weights -> .safetensors -> jaxvision (convert) -> export safetensors ->
    torchvision load_state_dict(strict=True): the same tensors and the same logits."""
    tmodel = tv_model("resnet18")
    src = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(tmodel.state_dict(), src)
    x = images((2, 64, 64, 3))
    want = torch_logits(tmodel, x)
    model, variables = jv.create_model("resnet18", pretrained=src)
    assert_close(model.apply(variables, x, train=False), want, what="from .safetensors")

    converted = tmp_path / "converted"
    assert cli_main(["convert", "resnet18", str(src), str(converted)]) == 0
    out = tmp_path / "out.safetensors"
    assert cli_main(["export", "--weights", str(converted), "--format", "safetensors",
                     str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    back = torchvision.models.resnet18()
    back.load_state_dict(safetensors.torch.load_file(out), strict=True)
    for key, value in tmodel.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # not tracked in jaxvision: written as 0
            assert torch.equal(back.state_dict()[key], value), key
    assert_close(torch_logits(back, x), model.apply(variables, x, train=False),
                 what="exported, in torchvision")
    meta = safetensors_io.metadata(out)
    assert meta["jaxvision_model"] == "resnet18" and "preprocessing" in meta
    assert cli_main(["export", "--weights", str(converted), "--format", "safetensors",
                     str(out)]) == 2
    assert "already exists; refusing to overwrite" in capsys.readouterr().err


def torchvision_keys(name):
    """A torchvision model's state_dict keys, built on the meta device (no weights made; RegNet's
    init cannot run there)."""
    seg_det = (torchvision.models.list_models(module=torchvision.models.detection)
               + torchvision.models.list_models(module=torchvision.models.segmentation))
    kwargs = {"weights_backbone": None} if name in seg_det else {}
    with torch.device("cpu" if name.startswith("regnet") else "meta"):
        return list(torchvision.models.get_model(name, **kwargs).state_dict())


def assert_name_rule_inverts(name):
    """torch key -> Flax path (each place the rule may put it) -> the same torch key."""
    for key in torchvision_keys(name):
        mods, leaf = module_path(key)
        if leaf != "num_batches_tracked":
            for collection, flax_leaf in _CANDIDATES.get(leaf, (("params", leaf),)):
                assert torch_key((collection, *mods, flax_leaf)) == key, (name, key)


# one model of each family jaxvision has (the sweep takes every torchvision model): where
# torchvision's own names end in _N (Inception's branch3x3_1, ViT's encoder_layer_0 and ln_1)
# the inverse keeps them; elsewhere _N is a Sequential's index
FAMILIES = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
            "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
            "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d",
            "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_32",
            "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "lraspp_mobilenet_v3_large",
            "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "fasterrcnn_resnet50_fpn",
            "maskrcnn_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]


def test_name_rule_inverts_on_every_family():
    for name in FAMILIES:
        assert_name_rule_inverts(name)


@pytest.mark.sweep
@pytest.mark.parametrize("name", torchvision.models.list_models())
def test_name_rule_inverts_on_every_torchvision_model(name):
    assert_name_rule_inverts(name)


# where the model's variables, not just the names, need care (the sweep checks every model):
# googlenet without aux heads, MaxViT's position buffers (Swin's: test_computed_buffers...), a
# segmenter's backbone.* and classifier.N.*
KEYED = ["googlenet", "maxvit_t", "deeplabv3_resnet50"]


def assert_same_keys(name):
    spec = get_spec(name)
    model = jv.create_model(name)
    shapes = init_variables(model, name, abstract=True)
    ours = torch_state_dict(name, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                            model)
    kwargs = {"weights_backbone": None} if "deeplab" in name else {}
    theirs = torchvision.models.get_model(spec.torch_name, **kwargs,
                                          **TORCH_KWARGS.get(name, {})).state_dict()
    assert sorted(ours) == sorted(theirs), (
        f"{name}: missing {sorted(set(theirs) - set(ours))[:5]}, "
        f"extra {sorted(set(ours) - set(theirs))[:5]}")
    for key, value in theirs.items():
        assert (ours[key].shape, str(ours[key].dtype)) == (
            tuple(value.shape), str(value.dtype).replace("torch.", "")), key


@pytest.mark.parametrize("name", KEYED)
def test_exported_names_shapes_and_dtypes_are_torchvisions(name):
    assert_same_keys(name)


@pytest.mark.sweep
@pytest.mark.parametrize("name", [n for n in jv.list_models() if get_spec(n).torch_name])
def test_every_model_exports_torchvisions_state_dict_keys(name):
    assert_same_keys(name)


def _small_swin(v2):
    from torchvision.models.swin_transformer import (PatchMergingV2, SwinTransformer,
                                                     SwinTransformerBlockV2)

    arch = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                window_size=[4, 4], stochastic_depth_prob=0.0)
    if v2:
        arch.update(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    kwargs = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(4, 4))
    return (lambda: SwinTransformer(**arch)), kwargs


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_computed_buffers_come_back_on_export_equal_to_torchvisions(name):
    """Buffers jaxvision computes (and drops on load) are written back on export."""
    make, kwargs = _small_swin(name == "swin_v2_t")
    torch.manual_seed(0)
    tmodel = make()  # the buffers and the load are the point, not the activations
    variables = jv.load_pretrained(name, tmodel, **kwargs)
    sd = torch_state_dict(name, variables, **kwargs)
    back = make()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for key, value in tmodel.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back.state_dict()[key], value), key


def test_bfloat16_safetensors_and_broken_files(tmp_path):
    tmodel = tv_model("resnet18")
    half = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({k: v.bfloat16() if v.is_floating_point() else v
                                 for k, v in tmodel.state_dict().items()}, half)
    variables = jv.load_pretrained("resnet18", half)
    np.testing.assert_array_equal(
        variables["params"]["fc"]["kernel"], tmodel.fc.weight.detach().bfloat16().float().numpy().T)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(half.read_bytes()[:100])
    with pytest.raises(ConversionError, match="broken.safetensors: not a readable safetensors"):
        jv.create_model("resnet18", pretrained=broken)

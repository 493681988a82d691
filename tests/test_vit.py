"""Vision Transformers against torchvision: parameter counts, eval/train/feature/gradient
parity, loading at another resolution, features_only, bfloat16 and bad input."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.vision_transformer import VisionTransformer as TorchViT
from torchvision.models.vision_transformer import interpolate_embeddings

from flax.errors import InvalidRngError

import jaxvision as jv
from jaxvision.api import init_variables
from jaxvision.convert import ConversionError
from jaxvision.models.vit import interpolate_pos_embedding
from tv_parity import (assert_close, check_eval, images, max_err, nchw, param_count,
                       torch_param_count)

VITS = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]
ARCH = {  # torchvision's builder arguments: patch, heads, hidden, mlp
    "vit_b_16": (16, 12, 768, 3072), "vit_b_32": (32, 12, 768, 3072),
    "vit_l_16": (16, 16, 1024, 4096), "vit_l_32": (32, 16, 1024, 4096),
    "vit_h_14": (14, 16, 1280, 5120),
}


def randomize_vit_(tmodel, seed=0):
    """torchvision's init zeroes the head, class token and every attention bias, which would hide
    a wrong head, token order or bias layout: give them (and the LayerNorms) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tmodel.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".ln" in name or name.startswith("encoder.ln"):
                p.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias") or name == "class_token":
                p.copy_(0.02 * noise)
            elif name.startswith("heads"):
                p.copy_(noise / math.sqrt(p.shape[-1]))
    return tmodel.eval()


def torch_vit(name, num_layers=None, image_size=224, seed=0, **kwargs):
    torch.manual_seed(seed)
    if num_layers is None:
        tmodel = getattr(torchvision.models, name)(weights=None, image_size=image_size, **kwargs)
    else:
        patch, heads, hidden, mlp = ARCH[name]
        tmodel = TorchViT(image_size, patch, num_layers, heads, hidden, mlp, **kwargs)
    return randomize_vit_(tmodel, seed)


def fast(model):
    """A jitted ``apply``: op-by-op dispatch of a whole ViT costs more than compiling it."""
    return jax.jit(model.apply, static_argnames="train")


def torch_logits(tmodel, x):
    with torch.no_grad():
        return tmodel(nchw(x)).numpy()


@pytest.mark.parametrize("name", VITS)
def test_param_count_equals_torchvision(name):
    with torch.device("meta"):
        expected = torch_param_count(getattr(torchvision.models, name)())
    model = jv.create_model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert param_count(shapes) == expected == jv.model_info(name).num_params


def test_vit_b_16_full_size_parity():
    tmodel = torch_vit("vit_b_16")
    model = jv.create_model("vit_b_16")
    variables, report = jv.load_pretrained("vit_b_16", tmodel.state_dict(), model=model,
                                           return_report=True)
    assert report.ok and len(report.loaded) == len(tmodel.state_dict())
    check_eval("vit_b_16", tmodel, variables, model, [(224, 224)])


def test_vit_b_16_features_of_chosen_blocks():
    # all 12 blocks at full width, on a 64x64 input (4x4 patches) to keep the cost down
    tmodel = torch_vit("vit_b_16", image_size=64)
    model = jv.create_model("vit_b_16", image_size=64)
    variables = jv.load_pretrained("vit_b_16", tmodel.state_dict(), model=model)

    blocks = (3, 5, 7, 11)  # as dense-prediction heads tap a ViT-B
    fmodel = jv.create_model("vit_b_16", image_size=64, features_only=True, out_indices=blocks)
    x = images((2, 64, 64, 3), seed=7)
    got = fast(fmodel)(variables, jnp.asarray(x))
    nodes = {f"encoder.layers.encoder_layer_{i}": f"block{i}" for i in blocks}
    with torch.no_grad():
        want = create_feature_extractor(tmodel, return_nodes=nodes)(nchw(x))
    assert set(got) == {f"block{i}{s}" for i in blocks for s in ("", "_tokens")}
    for i in blocks:
        assert_close(got[f"block{i}_tokens"], want[f"block{i}"].numpy(), what=f"block{i} tokens")
        # the map is the patch tokens on their grid, row-major like torch's conv_proj flatten
        np.testing.assert_array_equal(
            got[f"block{i}"], np.asarray(got[f"block{i}_tokens"])[:, 1:].reshape(2, 4, 4, 768))


@pytest.mark.parametrize("name", VITS)
def test_two_layer_twins_match_torchvision(name):
    """The big models at reduced cost: the same widths, heads and patch with 2 blocks."""
    patch = ARCH[name][0]
    size = 224 if patch == 32 else 8 * patch  # 7x7 or 8x8 patches
    tmodel = torch_vit(name, num_layers=2, image_size=size)
    model = jv.create_model(name, num_layers=2, image_size=size)
    variables = jv.load_pretrained(name, tmodel.state_dict(), model=model)
    check_eval(name, tmodel, variables, model, [(size, size)])


def test_train_mode_and_gradients_with_dropout_off():
    # dropout=0: torch's and jax's dropout draws can never agree, so train mode is compared with
    # the masks out of the picture (dropout itself is tested below)
    tmodel = torch_vit("vit_b_16", num_layers=2, image_size=64)
    model = jv.create_model("vit_b_16", num_layers=2, image_size=64)
    variables = jv.load_pretrained("vit_b_16", tmodel.state_dict(), model=model)
    x = images((2, 64, 64, 3), seed=3)
    tmodel.train()
    want = tmodel(nchw(x))
    got = fast(model)(variables, jnp.asarray(x), train=True,
                      rngs={"dropout": jax.random.key(1)})
    assert_close(got, want.detach().numpy(), what="train logits")

    # gradients of the same loss w.r.t. the input and the parameters (in_proj in torch's layout)
    xt = nchw(x).requires_grad_(True)
    (tmodel(xt) ** 2).mean().backward()

    def loss(params, x):
        out = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
        return jnp.mean(out ** 2)

    grads, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.asarray(x))
    attn = grads["encoder"]["layers"]["encoder_layer_1"]["self_attention"]
    tattn = tmodel.encoder.layers.encoder_layer_1.self_attention
    pairs = {
        "input": (gx, xt.grad.numpy().transpose(0, 2, 3, 1)),
        "in_proj_weight": (attn["in_proj_weight"], tattn.in_proj_weight.grad.numpy()),
        "in_proj_bias": (attn["in_proj_bias"], tattn.in_proj_bias.grad.numpy()),
        "class_token": (grads["class_token"], tmodel.class_token.grad.numpy()),
        "pos_embedding": (grads["encoder"]["pos_embedding"],
                          tmodel.encoder.pos_embedding.grad.numpy()),
        "conv_proj": (grads["conv_proj"]["kernel"],
                      tmodel.conv_proj.weight.grad.numpy().transpose(2, 3, 1, 0)),
    }
    # the dense layers' kernel gradients (layers.dense's VJP) and a LayerNorm's, in both blocks
    for i in (0, 1):
        ours, theirs = (grads["encoder"]["layers"][f"encoder_layer_{i}"],
                        getattr(tmodel.encoder.layers, f"encoder_layer_{i}"))
        for what, tw in (("mlp_0", theirs.mlp[0]), ("mlp_3", theirs.mlp[3]),
                         ("out_proj", theirs.self_attention.out_proj)):
            layer = ours["self_attention"][what] if what == "out_proj" else ours[what]
            pairs[f"block {i} {what} kernel"] = (layer["kernel"], tw.weight.grad.numpy().T)
            pairs[f"block {i} {what} bias"] = (layer["bias"], tw.bias.grad.numpy())
        pairs[f"block {i} ln_1 scale"] = (ours["ln_1"]["scale"], theirs.ln_1.weight.grad.numpy())
    for what, (ours, theirs) in pairs.items():
        # relative to the gradient's scale (input gradients here are ~1e-3, so an absolute
        # 1e-4 would hardly test them); measured: 2e-6 relative or better
        assert_close(np.asarray(ours) / np.abs(theirs).max(), theirs / np.abs(theirs).max(),
                     what=f"{what} gradient (relative)")
    tmodel.eval()


def test_dropout_draws_from_the_dropout_rng():
    # num_classes=0 (the pooled token): torchvision's zero-initialised head would output zeros
    model = jv.create_model("vit_b_16", num_layers=1, image_size=32, hidden_dim=32, num_heads=4,
                            mlp_dim=64, dropout=0.5, attention_dropout=0.5, num_classes=0)
    x = jnp.asarray(images((2, 32, 32, 3)))
    # one compiled function: same parameters every call, the dropout key varies
    train = jax.jit(lambda key: model.init_with_output(
        {"params": jax.random.key(0), "dropout": key}, x, train=True))
    run = lambda seed: train(jax.random.key(seed))[0]
    assert max_err(run(1), run(1)) == 0
    assert max_err(run(1), run(2)) > 1e-3
    variables = train(jax.random.key(1))[1]
    with pytest.raises(InvalidRngError, match="dropout"):
        model.apply(variables, x, train=True)


def test_representation_size_head_and_pooled_features():
    small = dict(num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, image_size=64)
    torch.manual_seed(0)
    tmodel = randomize_vit_(TorchViT(patch_size=16, representation_size=32, **small))
    model = jv.create_model("vit_b_16", representation_size=32, **small)
    variables = jv.load_pretrained("vit_b_16", tmodel.state_dict(), model=model)
    assert set(variables["params"]["heads"]) == {"pre_logits", "head"}
    x = images((2, 64, 64, 3), seed=4)
    assert_close(fast(model)(variables, jnp.asarray(x)), torch_logits(tmodel, x), what="logits")

    # num_classes=0: the class-token embedding after encoder.ln, what torch gives without heads
    pooled_model = jv.create_model("vit_b_16", num_classes=0, **small)
    pooled_vars, report = jv.load_pretrained("vit_b_16", tmodel.state_dict(), strict=False,
                                             model=pooled_model, return_report=True)
    assert not report.missing and all(k.startswith("heads.") for k in report.unexpected)
    tmodel.heads = torch.nn.Identity()
    assert_close(fast(pooled_model)(pooled_vars, jnp.asarray(x)), torch_logits(tmodel, x),
                 what="pooled")


def test_second_resolution_loads_like_interpolate_embeddings():
    """Weights trained at 224 into a model at 288, against torchvision's own recipe: the model
    built at 288 loading ``interpolate_embeddings(288, 16, state_dict)``."""
    src = torch_vit("vit_b_16", num_layers=2, image_size=224)
    sd = src.state_dict()
    ref = TorchViT(288, 16, 2, 12, 768, 3072).eval()
    ref.load_state_dict(interpolate_embeddings(288, 16, dict(sd)))
    model = jv.create_model("vit_b_16", num_layers=2, image_size=288)
    variables = jv.load_pretrained("vit_b_16", sd, model=model)  # strict: every shape fits
    assert variables["params"]["encoder"]["pos_embedding"].shape == (1, 18 * 18 + 1, 768)
    assert_close(variables["params"]["encoder"]["pos_embedding"],
                 ref.encoder.pos_embedding.detach().numpy(), tol=1e-6, what="pos_embedding")
    check_eval("vit_b_16 224->288", ref, variables, model, [(288, 288)])
    assert src.state_dict()["encoder.pos_embedding"].shape == (1, 197, 768)  # input untouched


@pytest.mark.parametrize("old,new", [(14, 18), (14, 24), (24, 14), (14, 7), (7, 1), (3, 3)])
def test_pos_embedding_resize_equals_torchvision_without_torch(old, new):
    pos = torch.randn(1, old * old + 1, 8, generator=torch.Generator().manual_seed(old + new))
    resize = lambda p: interpolate_embeddings(new * 4, 4, {"encoder.pos_embedding": p.clone()})[
        "encoder.pos_embedding"].numpy()
    # the same formula as torch's bicubic: in float64 both agree to rounding of float64
    assert_close(interpolate_pos_embedding(pos.double().numpy(), new), resize(pos.double()),
                 tol=1e-12, what=f"{old}->{new} float64")
    # in float32 torch rounds every tap and partial sum while ours sums in float64 and rounds
    # once; measured on values up to 3.8: 4.4e-6 (14->18), 9.6e-6 (24->14) from torch float32
    got = interpolate_pos_embedding(pos.numpy(), new)
    assert got.dtype == np.float32
    assert_close(got, resize(pos), tol=2e-5, what=f"{old}->{new} float32")
    np.testing.assert_array_equal(got[:, 0], pos.numpy()[:, 0])  # class token kept


def test_bad_pos_embedding_is_named():
    with pytest.raises(ConversionError, match="encoder.pos_embedding.*not a square grid"):
        interpolate_pos_embedding(np.zeros((1, 11, 4), np.float32), 3)
    with pytest.raises(ConversionError, match=r"encoder.pos_embedding: expected shape \(1, 1 \+"):
        interpolate_pos_embedding(np.zeros((2, 10, 4), np.float32), 3)


def test_features_only_contract():
    kwargs = dict(num_layers=4, image_size=64, hidden_dim=32, num_heads=4, mlp_dim=64)
    model = jv.create_model("vit_b_16", features_only=True, out_indices=(1, -1), **kwargs)
    assert [f.name for f in model.feature_info] == ["block0", "block1", "block2", "block3"]
    assert all(f.channels == 32 and f.reduction == 16 for f in model.feature_info)
    assert [f.name for f in jv.model_info("vit_l_16").features][-1] == "block23"
    x = jnp.asarray(images((2, 64, 64, 3)))
    out, _ = jax.jit(model.init_with_output)(jax.random.key(0), x)
    assert {k: v.shape for k, v in out.items()} == {
        "block1": (2, 4, 4, 32), "block1_tokens": (2, 17, 32),
        "block3": (2, 4, 4, 32), "block3_tokens": (2, 17, 32)}
    # it stops after the last block asked for: no later blocks, no final norm, no head
    early = jv.create_model("vit_b_16", features_only=True, out_indices=(1,), **kwargs)
    params = jax.eval_shape(early.init, jax.random.key(0), x)["params"]
    assert set(params["encoder"]["layers"]) == {"encoder_layer_0", "encoder_layer_1"}
    assert "heads" not in params and "ln" not in params["encoder"]
    with pytest.raises(ValueError, match="out_indices .* out of range"):
        jv.create_model("vit_b_16", features_only=True, out_indices=(4,), **kwargs).lazy_init(
            jax.random.key(0), x)


def test_bfloat16_compute_keeps_float32_params():
    tmodel = torch_vit("vit_b_16", num_layers=2, image_size=64)
    model = jv.create_model("vit_b_16", num_layers=2, image_size=64, dtype=jnp.bfloat16)
    variables = jv.load_pretrained("vit_b_16", tmodel.state_dict(), model=model)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    x = images((2, 64, 64, 3), seed=2)
    got = fast(model)(variables, jnp.asarray(x))
    assert got.dtype == jnp.bfloat16
    want = torch_logits(tmodel, x)
    # bfloat16 keeps 8 bits of mantissa: a 2-block net lands within a few percent
    assert max_err(got, want) <= 0.05 * np.abs(want).max()
    # matmuls run in bfloat16; softmax (exp, max) and LayerNorm statistics (sum, rsqrt) in float32
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.asarray(x)))
    out_dtypes = lambda prim: set(re.findall(r":(\w+)\[[^\]]*\] = " + prim + r"\b", jaxpr))
    assert out_dtypes("dot_general") == {"bf16"}
    for prim in ("exp", "reduce_max", "reduce_sum", "rsqrt"):
        assert out_dtypes(prim) == {"f32"}, prim


def test_init_matches_torchvision_distributions():
    """Same init recipe as torchvision (zeros, xavier, trunc-normal std), compared by moments."""
    kwargs = dict(num_layers=1, hidden_dim=256, num_heads=4, mlp_dim=512, image_size=64)
    torch.manual_seed(0)
    tmodel = TorchViT(64, 16, 1, 4, 256, 512)
    model = jv.create_model("vit_b_16", **kwargs)
    ours = init_variables(model, "vit_b_16")
    from jaxvision.convert.torchvision import map_state_dict
    from jaxvision.convert.merge import Report
    source, names = map_state_dict(tmodel.state_dict(), ours, Report())
    from flax import traverse_util
    flat = traverse_util.flatten_dict(ours)
    assert set(flat) == set(source)
    for path, theirs in source.items():
        mine = np.asarray(flat[path])
        t_std, m_std = theirs.std(), mine.std()
        assert abs(mine.mean() - theirs.mean()) <= 0.1 * max(t_std, 1e-6) + 1e-6, names[path]
        assert abs(m_std - t_std) <= 0.1 * t_std + 1e-7, (names[path], m_std, t_std)


def test_bad_input_is_named():
    model = jv.create_model("vit_b_16", num_layers=1, image_size=64)
    with pytest.raises(ValueError, match="64x64 .*image_size.*got shape \\(1, 96, 64, 3\\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 64, 3)))
    with pytest.raises(ValueError, match=r"image_size \(60\) must be divisible by patch_size"):
        jax.eval_shape(jv.create_model("vit_b_16", image_size=60).init, jax.random.key(0),
                       jnp.zeros((1, 60, 60, 3)))
    with pytest.raises(ValueError, match="embed_dim .* divisible by num_heads"):
        jax.eval_shape(jv.create_model("vit_b_16", num_layers=1, image_size=32, hidden_dim=30)
                       .init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("name,weights", [
    ("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1"), ("vit_b_32", "ViT_B_32_Weights.IMAGENET1K_V1"),
    ("vit_l_16", "ViT_L_16_Weights.IMAGENET1K_V1"), ("vit_l_32", "ViT_L_32_Weights.IMAGENET1K_V1"),
    # vit_h_14 has no V1; the weights for the builder's default image_size=224 are SWAG_LINEAR
    ("vit_h_14", "ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1")])
def test_spec_follows_torchvision_weights_meta(name, weights):
    enum, member = weights.split(".")
    w = getattr(getattr(torchvision.models, enum), member)
    preset = w.transforms()
    spec = jv.model_info(name)
    assert spec.input_size == tuple(w.meta["min_size"]) == (224, 224)
    assert (spec.resize_size, spec.crop_size) == (preset.resize_size[0], preset.crop_size[0])
    assert spec.interpolation == preset.interpolation.value
    assert (spec.mean, spec.std) == (tuple(preset.mean), tuple(preset.std))
    assert spec.num_params == w.meta["num_params"]
    assert jv.create_model(name).image_size == 224

"""BiFPN and EfficientDet's class/box nets against the ``effdet`` package (rwightman's
efficientdet-pytorch), same random weights converted key for key by ``convert.effdet``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvision.convert.effdet import from_effdet
from jaxvision.convert.merge import ConversionError
from jaxvision.heads import EfficientDetHead
from jaxvision.necks import BiFPN
from tv_parity import assert_close

effdet = pytest.importorskip("effdet")  # the test extra installs it
from effdet.config import get_efficientdet_config  # noqa: E402
from effdet.efficientdet import BiFpn, HeadNet  # noqa: E402

STRIDES = (8, 16, 32)
LEVELS = ("c8", "c16", "c32", "p6", "p7")  # BiFPN's outputs, finest first


def d0_config(image_size):
    cfg = get_efficientdet_config("efficientdet_d0")
    cfg.image_size = image_size  # effdet sizes every level from it
    return cfg


def randomize_(module, seed=0):
    """Random fusion weights (some negative: fast attention's ReLU zeroes them) and BatchNorm
    affine and statistics (fresh ones are 1/0/0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 - 0.25)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
    return module.eval()


def pyramid(image_size, channels, seed=1):
    """Backbone-like maps at strides 8, 16, 32 of ``image_size`` (ceil-halving sizes), NCHW."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    maps = []
    for s, c in zip(STRIDES, channels):
        maps.append(torch.randn(2, c, -(-h // s), -(-w // s), generator=g))
    return maps


def nhwc(t):
    return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def params_of(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


# (input size, backbone channels): timm's efficientnet_b0 (effdet's D0) at 128x128, jaxvision's
# (stride 32 is torchvision's 1280-channel features.8) at an uneven, non-square 96x161
CASES = [((128, 128), (40, 112, 320)), ((96, 161), (40, 112, 1280))]


@pytest.mark.parametrize("image_size,channels", CASES)
def test_bifpn_matches_effdet(image_size, channels):
    torch.manual_seed(0)
    fi = [dict(num_chs=c, reduction=s) for c, s in zip(channels, STRIDES)]
    tfpn = randomize_(BiFpn(d0_config(image_size), fi))
    maps = pyramid(image_size, channels)
    with torch.no_grad():
        want = tfpn([m.clone() for m in maps])
    feats = {f"c{s}": nhwc(m) for s, m in zip(STRIDES, maps)}
    fpn = BiFPN(64, 3)
    target = jax.eval_shape(lambda: fpn.init(jax.random.key(0), feats))
    variables, report = from_effdet(tfpn, target)  # strict: every tensor, every leaf once
    assert len(report.loaded) == len(jax.tree.leaves(target))
    assert params_of(variables) == sum(p.numel() for p in tfpn.parameters())
    # through jit the dict comes back in key order ("c16" < "c8"): BiFPN orders maps by size
    got = jax.jit(fpn.apply)(variables, feats)
    assert sorted(got) == ["c16", "c32", "c8", "p6", "p7"]
    errs = []
    for k, w in zip(LEVELS, want):
        assert got[k].shape == nhwc(w).shape, k
        errs.append(assert_close(got[k], nhwc(w), 1e-4, f"BiFPN {image_size} {k}"))
    print(f"BiFPN {image_size} {channels}: max abs error {max(errs):.2e} (outputs up to "
          f"{max(float(w.abs().max()) for w in want):.2f}), {params_of(variables)} params")
    if channels[-1] == 320:  # effdet's efficientdet_d0 neck itself
        assert params_of(variables) == 194_361
        # train mode: batch statistics, and effdet's running statistics after one step
        tfpn.train()
        with torch.no_grad():
            want = tfpn([m.clone() for m in maps])
        got, state = jax.jit(lambda v, f: fpn.apply(v, f, train=True, mutable=["batch_stats"]))(
            variables, feats)
        for k, w in zip(LEVELS, want):
            assert_close(got[k], nhwc(w), 1e-4, f"BiFPN train {k}")
        bn = tfpn.cell[2].fnode[7].after_combine.conv.bn
        ours = state["batch_stats"]["cell_2"]["fnode_7"]["after_combine"]["conv"]["bn"]
        assert_close(ours["var"], bn.running_var.numpy(), 1e-5, "running var")
        assert_close(ours["mean"], bn.running_mean.numpy(), 1e-5, "running mean")


@pytest.mark.parametrize("method", ["attn", "sum"])
def test_bifpn_other_fusions_match_effdet(method):
    from effdet.config import get_fpn_config

    cfg = d0_config((64, 96))
    cfg.fpn_cell_repeats = 1
    cfg.fpn_config = get_fpn_config(f"bifpn_{method}")
    channels = (24, 40, 64)  # P5 already at the BiFPN's width: no resampling conv there
    tfpn = randomize_(BiFpn(cfg, [dict(num_chs=c, reduction=s) for c, s in zip(channels, STRIDES)]))
    maps = pyramid((64, 96), channels)
    with torch.no_grad():
        want = tfpn([m.clone() for m in maps])
    feats = {f"c{s}": nhwc(m) for s, m in zip(STRIDES, maps)}
    fpn = BiFPN(64, 1, weight_method=method)
    variables, _ = from_effdet(tfpn, jax.eval_shape(lambda: fpn.init(jax.random.key(0), feats)))
    got = jax.jit(fpn.apply)(variables, feats)
    for k, w in zip(LEVELS, want):
        assert_close(got[k], nhwc(w), 1e-4, f"BiFPN {method} {k}")


def test_heads_match_effdet_headnet():
    cfg = d0_config((128, 160))
    g = torch.Generator().manual_seed(2)
    levels = [torch.randn(2, 64, 16 // 2 ** i + (i == 4), 20 // 2 ** i + (i > 2), generator=g)
              for i in range(5)]  # 16x20 .. 1x2 (odd sizes at P6/P7)
    x = [nhwc(t) for t in levels]
    for name, outputs, prior in (("class_net", 7, 0.01), ("box_net", 4, None)):
        torch.manual_seed(0)
        tnet = randomize_(HeadNet(cfg, num_outputs=outputs))
        with torch.no_grad():  # (N, A*K, H, W) per level -> (N, sum H*W*A, K), effdet's order
            want = torch.cat([o.permute(0, 2, 3, 1).reshape(2, -1, outputs)
                              for o in tnet([t.clone() for t in levels])], 1).numpy()
        head = EfficientDetHead(outputs, 9, 3, prior_probability=prior)
        target = jax.eval_shape(lambda: head.init(jax.random.key(0), x))
        variables, _ = from_effdet({f"{name}.{k}": v for k, v in tnet.state_dict().items()},
                                   target, prefix=f"{name}.")
        assert params_of(variables) == sum(p.numel() for p in tnet.parameters())
        assert_close(jax.jit(head.apply)(variables, x), want, 1e-4, name)


def test_converter_names_what_does_not_fit():
    channels = (8, 16, 32)
    tfpn = BiFpn(d0_config((64, 64)), [dict(num_chs=c, reduction=s)
                                       for c, s in zip(channels, STRIDES)])
    feats = {f"c{s}": jnp.zeros((1, 64 // s, 64 // s, c)) for s, c in zip(STRIDES, channels)}
    target = jax.eval_shape(lambda: BiFPN(64, 3).init(jax.random.key(0), feats))
    sd = dict(tfpn.state_dict())
    del sd["cell.1.fnode.2.combine.edge_weights"]
    with pytest.raises(ConversionError, match=r"1 missing.*\n  params/cell_1/fnode_2/combine/"
                                              r"edge_weights"):
        from_effdet(sd, target)
    sd = dict(tfpn.state_dict())
    sd["cell.0.fnode.0.after_combine.conv.conv_pw.weight"] = torch.zeros(64, 32, 1, 1)
    with pytest.raises(ConversionError, match=r"cell.0.fnode.0.after_combine.conv.conv_pw."
                                              r"weight: \(64, 32, 1, 1\) vs \(64, 64, 1, 1\)"):
        from_effdet(sd, target)
    with pytest.raises(ConversionError, match=r"no tensor's key starts with 'fpn.'"):
        from_effdet(tfpn.state_dict(), target, prefix="fpn.")
    target = jax.eval_shape(lambda: BiFPN(64, 2).init(jax.random.key(0), feats))
    with pytest.raises(ConversionError, match=r"unexpected.*\n  cell.2.fnode.0"):
        from_effdet(tfpn, target)  # three cells of weights, two in the model


def test_bad_input_is_named():
    x = jnp.zeros((1, 8, 8, 16))
    init = lambda m, f: jax.eval_shape(lambda: m.init(jax.random.key(0), f))
    with pytest.raises(ValueError, match=r"weight_method must be one of .*got 'mean'"):
        init(BiFPN(weight_method="mean"), {"a": x})
    with pytest.raises(ValueError, match=r"dict of 1..num_levels=5 NHWC maps.*got list"):
        init(BiFPN(), [x])
    with pytest.raises(ValueError, match=r"dict of 1..num_levels=2 .* got dict of 3"):
        init(BiFPN(num_levels=2), {"a": x, "b": x, "c": x})
    with pytest.raises(ValueError, match=r"BiFPN input 'b': expected NHWC, got shape \(8, 8\)"):
        init(BiFPN(), {"a": x, "b": x[0, :, :, 0]})

"""timm state_dicts renamed to torchvision's, for the timm architectures whose modules compute
what torchvision's do (same layers, same order, same epsilons): after the rename the generic
torchvision rule loads them, strictly. Each map is a few regular expressions over timm's names;
tests/test_timm_weights.py checks every mapped architecture's keys and shapes against
torchvision's and its logits against timm's."""
from __future__ import annotations

import re
from typing import Callable, Mapping



def _rules(rules: list[tuple[str, str]]) -> Callable[[Mapping], dict]:
    compiled = [(re.compile(f"^{a}$"), b) for a, b in rules]

    def rename(sd: Mapping) -> dict:
        out = {}
        for key, value in sd.items():
            for pattern, repl in compiled:
                if pattern.match(key):
                    key = pattern.sub(repl, key)
                    break
            out[key] = value
        return out

    return rename


def _convnext(sd: Mapping) -> dict:
    def stage(m):  # timm stage i -> torchvision features.2i (downsample) / 2i+1 (blocks)
        i, rest = int(m.group(1)), m.group(2)
        if rest.startswith("downsample."):
            return f"features.{2 * i}.{rest[len('downsample.'):]}"
        j, sub = re.match(r"blocks\.(\d+)\.(.*)", rest).groups()
        sub = {"gamma": "layer_scale"}.get(sub) or re.sub(
            r"^(conv_dw|norm|mlp\.fc1|mlp\.fc2)\.", lambda s: "block.{}.".format(
                {"conv_dw": 0, "norm": 2, "mlp.fc1": 3, "mlp.fc2": 5}[s.group(1)]), sub)
        return f"features.{2 * i + 1}.{j}.{sub}"

    out = {}
    for key, value in sd.items():
        if key.endswith(".gamma"):  # torchvision's layer scale is (C, 1, 1)
            value = value.reshape(-1, 1, 1)
        key = re.sub(r"^stem\.(\d)\.", r"features.0.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.(.*)$", stage, key)
        key = re.sub(r"^head\.norm\.", "classifier.0.", key)
        key = re.sub(r"^head\.fc\.", "classifier.2.", key)
        out[key] = value
    return out


_vit = _rules([
    (r"cls_token", "class_token"),
    (r"pos_embed", "encoder.pos_embedding"),
    (r"patch_embed\.proj\.(.*)", r"conv_proj.\1"),
    (r"blocks\.(\d+)\.norm1\.(.*)", r"encoder.layers.encoder_layer_\1.ln_1.\2"),
    (r"blocks\.(\d+)\.norm2\.(.*)", r"encoder.layers.encoder_layer_\1.ln_2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
     r"encoder.layers.encoder_layer_\1.self_attention.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(.*)", r"encoder.layers.encoder_layer_\1.self_attention.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(.*)", r"encoder.layers.encoder_layer_\1.mlp.0.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(.*)", r"encoder.layers.encoder_layer_\1.mlp.3.\2"),
    (r"norm\.(.*)", r"encoder.ln.\1"),
    (r"head\.(.*)", r"heads.head.\1"),
])


def _regnet(sd: Mapping) -> dict:
    parts = {"conv1": "f.a", "conv2": "f.b", "conv3": "f.c", "downsample": "proj"}
    out = {}
    for key, value in sd.items():
        m = re.match(r"s(\d+)\.b(\d+)\.(conv1|conv2|conv3|downsample|se)\.(conv|bn)?\.?(.*)$", key)
        if m:
            s, b, part, layer, leaf = m.groups()
            where = f"trunk_output.block{s}.block{s}-{int(b) - 1}"
            key = (f"{where}.f.se.{leaf}" if part == "se" else
                   f"{where}.{parts[part]}.{0 if layer == 'conv' else 1}.{leaf}")
        else:
            key = re.sub(r"^stem\.conv\.", "stem.0.", key)
            key = re.sub(r"^stem\.bn\.", "stem.1.", key)
            key = re.sub(r"^head\.fc\.", "fc.", key)
        out[key] = value
    return out


def _efficientnet(sd: Mapping) -> dict:
    """timm's EfficientNet blocks as torchvision's ``features.S.B.block.K``: K counts the
    sub-layers present, in order (expansion, depthwise, squeeze-excitation, projection)."""
    blocks: dict[tuple[int, int], set] = {}
    for key in sd:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.([a-z_0-9]+)\.", key)
        if m:
            blocks.setdefault((int(m.group(1)), int(m.group(2))), set()).add(m.group(3))
    layout = {}
    for (s, b), subs in blocks.items():
        if "conv_pwl" in subs:  # inverted residual
            order = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("se",), ("conv_pwl", "bn3")]
        else:  # depthwise-separable: no expansion
            order = [("conv_dw", "bn1"), ("se",), ("conv_pw", "bn2")]
        k = 0
        for group in order:
            if group[0] not in subs:
                continue
            for i, name in enumerate(group):
                layout[(s, b, name)] = f"features.{s + 1}.{b}.block.{k}" + (
                    "" if name == "se" else f".{i}")
            k += 1
    head = f"features.{1 + max(s for s, _ in blocks) + 1}" if blocks else "features.8"
    out = {}
    for key, value in sd.items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.([a-z_0-9]+)\.(.*)$", key)
        if m:
            s, b, name, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            leaf = {"conv_reduce.weight": "fc1.weight", "conv_reduce.bias": "fc1.bias",
                    "conv_expand.weight": "fc2.weight", "conv_expand.bias": "fc2.bias"}.get(
                        leaf, leaf)
            key = f"{layout[(s, b, name)]}.{leaf}"
        else:
            key = re.sub(r"^conv_stem\.", "features.0.0.", key)
            key = re.sub(r"^bn1\.", "features.0.1.", key)
            key = re.sub(r"^conv_head\.", f"{head}.0.", key)
            key = re.sub(r"^bn2\.", f"{head}.1.", key)
            key = re.sub(r"^classifier\.", "classifier.1.", key)
        out[key] = value
    return out


def _same(sd: Mapping) -> dict:
    return dict(sd)


# timm architecture -> (jaxvision model, the rename that makes its state_dict torchvision's)
ARCHITECTURES: dict[str, tuple[str, Callable[[Mapping], dict]]] = {
    **{n: (n, _same) for n in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")},
    **{n: (n, _convnext) for n in (
        "convnext_tiny", "convnext_small", "convnext_base", "convnext_large")},
    **{f"vit_{t}_patch{p}_224": (f"vit_{t[0]}_{p}", _vit) for t, p in (
        ("base", 16), ("base", 32), ("large", 16), ("large", 32), ("huge", 14))},
    # regnetx_004, regnety_008 and regnety_080 have other widths than torchvision's namesakes
    **{f"regnet{k}_{t}": (f"regnet_{k}_{n}", _regnet) for k, t, n in (
        ("x", "008", "800mf"), ("x", "016", "1_6gf"), ("x", "032", "3_2gf"), ("x", "080", "8gf"),
        ("x", "160", "16gf"), ("x", "320", "32gf"), ("y", "004", "400mf"), ("y", "016", "1_6gf"),
        ("y", "032", "3_2gf"), ("y", "160", "16gf"), ("y", "320", "32gf"))},
    **{f"efficientnet_b{i}": (f"efficientnet_b{i}", _efficientnet) for i in range(8)},
}

"""timm's weights by name: ``timm:ARCH.TAG`` (``timm:resnet50.a1_in1k``), fetched from the
Hugging Face hub's ``timm/ARCH.TAG`` through ``huggingface_hub`` (optional: ``pip install
'jaxvision[timm]'``), so its cache, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` are honoured.

Only timm architectures that compute what a torchvision model computes are mapped
(convert/timm_keys.py renames their keys to torchvision's; tests/test_timm_weights.py checks
keys, shapes and logits). Variants that differ are refused by name: the ResNet-B/C/D/S stems and
average-pool shortcuts (``resnet50d``, ``resnet50c``, ``resnet50s``...), ``resnet26``/``200``
(no torchvision twin), squeeze-excitation and attention ResNets (``seresnet50``, ``ecaresnet50d``),
``tf_efficientnet*`` (TensorFlow's "same" padding, BatchNorm eps 1e-3), ``mobilenetv3_*``
(BatchNorm eps 1e-5 where torchvision's is 1e-3; a conv head with a bias), ``regnetx_004``,
``regnety_008`` and ``regnety_080`` (other widths than torchvision's regnet_x_400mf, y_800mf and
y_8gf), ViTs at other resolutions (``vit_base_patch16_384``...).
"""
from __future__ import annotations

import json
import math

from jaxvision.convert.merge import ConversionError
from jaxvision.convert.timm_keys import ARCHITECTURES

PREFIX = "timm:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the hub's order of preference


def is_timm(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, str]:
    """(hub repo id, jaxvision model name) of ``timm:ARCH.TAG``."""
    tagged = source[len(PREFIX):]
    arch = tagged.split(".")[0]
    if arch not in ARCHITECTURES:
        raise ConversionError(
            f"{source}: timm's {arch!r} is not mapped to a jaxvision model; mapped (they "
            f"compute what torchvision's namesakes do): {', '.join(sorted(ARCHITECTURES))}")
    if "." not in tagged:
        raise ConversionError(f"{source}: name the weights' tag too, e.g. {PREFIX}{arch}.tv_in1k "
                              "(timm.list_pretrained() lists them)")
    return f"timm/{tagged}", ARCHITECTURES[arch][0]


def to_torchvision(source: str, state_dict) -> dict:
    """``timm:ARCH.TAG``'s state_dict in torchvision's key names and layouts."""
    return ARCHITECTURES[source[len(PREFIX):].split(".")[0]][1](state_dict)


def fetch(source: str) -> tuple[str, dict]:
    """(local weights file, timm's ``pretrained_cfg``) of ``timm:ARCH.TAG``, from the hub or the
    local cache."""
    repo, _ = parse(source)
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:
        raise ImportError(f"{source}: timm weights are fetched with huggingface_hub: "
                          "pip install 'jaxvision[timm]'") from e
    missing = None
    try:
        with open(huggingface_hub.hf_hub_download(repo, "config.json")) as f:
            config = json.load(f)
        for name in WEIGHT_FILES:
            try:
                return huggingface_hub.hf_hub_download(repo, name), config.get(
                    "pretrained_cfg", {})
            except EntryNotFoundError as e:  # not in the repo, or (offline) not in the cache
                missing = e
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as e:
        missing = e
    first = (str(missing).strip().splitlines() or [type(missing).__name__])[0]
    raise ConversionError(f"{source}: could not fetch {' or '.join(WEIGHT_FILES)} of {repo} "
                          f"from the Hugging Face hub or its local cache "
                          f"({type(missing).__name__}: {first})")


def preprocessing(source: str, cfg: dict) -> dict:
    """timm's eval transform for these weights, as a converted directory records it (timm's
    resize: floor(crop / crop_pct))."""
    crop = int(cfg.get("input_size", (3, 224, 224))[-1])
    return {"resize_size": int(math.floor(crop / float(cfg.get("crop_pct", 0.875)))),
            "crop_size": crop, "interpolation": cfg.get("interpolation", "bilinear"),
            "mean": [float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))],
            "std": [float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))],
            "from": f"timm's pretrained_cfg of {source[len(PREFIX):]}",
            **({"license": cfg["license"]} if cfg.get("license") else {})}

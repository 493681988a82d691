"""VGG 11/13/16/19, with and without BatchNorm, laid out like torchvision's ``models/vgg.py``.

Parameter paths mirror torchvision's state_dict: ``features.3.weight`` is
``params/features_3/kernel`` (the index counts convs, norms, ReLUs and pools as torch's
Sequential does), ``classifier.6.weight`` is ``params/classifier_6/kernel``.

``num_classes=0`` returns the 4096-d output of ``classifier.3`` + ReLU (what torchvision users
get by replacing ``classifier[6]`` with Identity, and timm's ``pre_logits``), so the pretrained
MLP is kept.  ``features_only=True`` returns ``pool1`` .. ``pool5``, the map after each max pool
(strides 2, 4, 8, 16, 32).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import (Conv2d, Linear, adaptive_avg_pool2d, flatten_nchw,
                              kaiming_normal_fan_out, max_pool2d, norm_factory)
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout, block_range
from jaxvision.registry import FeatureInfo, register_model

CFGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
          512, 512, "M"),
}

# torchvision's init: conv kaiming_normal(fan_out) with zero bias; Linear N(0, 0.01), zero bias
_linear_init = nn.initializers.normal(0.01)
_zeros = nn.initializers.zeros


def pool_indices(cfg, batch_norm: bool) -> list[int]:
    """Index in torch's ``features`` Sequential of each max pool (for feature extraction)."""
    idx, out = 0, []
    for v in cfg:
        if v == "M":
            out.append(idx)
            idx += 1
        else:
            idx += 3 if batch_norm else 2
    return out


class VGG(nn.Module):
    cfg: Sequence[Any]
    batch_norm: bool = False
    num_classes: int = 1000
    dropout: float = 0.5
    norm: str = "batch"  # the _bn variants' norm: "batch_eval" / "frozen" for freezing
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    feature_info = tuple(FeatureInfo(f"pool{i + 1}", c, 2 ** (i + 1))
                         for i, c in enumerate((64, 128, 256, 512, 512)))

    @property
    def stage_layout(self) -> StageLayout:
        """No stem; stage k is the k-th run of convs and the max pool that ends it, as
        torchvision's ``make_layers`` indexes them."""
        ends = [i + 1 for i in pool_indices(self.cfg, self.batch_norm)]
        return StageLayout(r"(?!)", tuple(block_range("features_", a, b, "/")
                                          for a, b in zip([0] + ends[:-1], ends)),
                           r"classifier_")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        idx, pools = 0, 0
        for v in self.cfg:
            if v == "M":
                x = max_pool2d(x, 2, 2)
                idx, pools = idx + 1, pools + 1
                if feats.add(f"pool{pools}", x):
                    return feats.maps
                continue
            x = Conv2d(v, 3, padding=1, bias=True, dtype=self.dtype,
                       kernel_init=kaiming_normal_fan_out, bias_init=_zeros,
                       name=f"features_{idx}")(x)
            if self.batch_norm:
                x = norm_factory(self.norm, self.dtype)(name=f"features_{idx + 1}")(x, train)
            x = nn.relu(x)
            idx += 3 if self.batch_norm else 2
        x = flatten_nchw(adaptive_avg_pool2d(x, 7))
        for i, n_in in ((0, 512 * 7 * 7), (3, 4096)):
            x = Linear(4096, n_in, dtype=self.dtype, kernel_init=_linear_init, bias_init=_zeros,
                       name=f"classifier_{i}")(x)
            x = nn.relu(x)
            if i == 3 and self.num_classes <= 0:
                return x  # torch's Dropout after it is the identity in eval and not a feature
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Linear(self.num_classes, 4096, dtype=self.dtype, kernel_init=_linear_init,
                      bias_init=_zeros, name="classifier_6")(x)


_VARIANTS = {  # name: (cfg, batch_norm, torchvision param count)
    "vgg11": ("A", False, 132_863_336), "vgg11_bn": ("A", True, 132_868_840),
    "vgg13": ("B", False, 133_047_848), "vgg13_bn": ("B", True, 133_053_736),
    "vgg16": ("D", False, 138_357_544), "vgg16_bn": ("D", True, 138_365_992),
    "vgg19": ("E", False, 143_667_240), "vgg19_bn": ("E", True, 143_678_248),
}


def _register(name, cfg, batch_norm, num_params):
    def build(**kwargs):
        return VGG(cfg=CFGS[cfg], batch_norm=batch_norm, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's ``{name}``."
    register_model(name, family="vgg", torch_name=name, num_params=num_params,
                   features=VGG.feature_info,
                   notes="num_classes=0 returns the 4096-d classifier.3 embedding")(build)


for _name, _args in _VARIANTS.items():
    _register(_name, *_args)

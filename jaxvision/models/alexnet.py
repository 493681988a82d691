"""AlexNet, laid out like torchvision's ``models/alexnet.py`` (the one-GPU "weird trick" variant).

Parameter paths mirror torchvision's state_dict: ``features.3.weight`` is
``params/features_3/kernel`` (indices count ReLUs and pools as torch's Sequential does),
``classifier.4.weight`` is ``params/classifier_4/kernel``.

``num_classes=0`` returns the 4096-d output of ``classifier.4`` + ReLU, as VGG does here (what
torchvision users get by replacing ``classifier[6]`` with Identity), so the pretrained MLP is
kept.  ``features_only=True`` returns the last map at each stride: ``features_1`` (first conv +
ReLU, nominal stride 4), ``features_4`` (8), ``features_11`` (16) and ``features_12`` (the last
max pool, 32).  The convolutions and pools are unpadded or barely padded, so the real sizes
fall below ``input / stride`` (224 gives 55, 27, 13, 6).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers import Conv2d, Linear, adaptive_avg_pool2d, flatten_nchw, max_pool2d
from jaxvision.models._features import FeatureCollector
from jaxvision.models._stages import StageLayout
from jaxvision.registry import FeatureInfo, register_model

# features index: (out channels, kernel, stride, padding) of each conv; None is a 3x3/2 max pool
_FEATURES = {0: (64, 11, 4, 2), 2: None, 3: (192, 5, 1, 2), 5: None, 6: (384, 3, 1, 1),
             8: (256, 3, 1, 1), 10: (256, 3, 1, 1), 12: None}


class AlexNet(nn.Module):
    num_classes: int = 1000
    dropout: float = 0.5
    dtype: Any = jnp.float32
    features_only: bool = False
    out_indices: Optional[Sequence[int]] = None

    # torchvision leaves AlexNet at torch's default init (kaiming_uniform(a=sqrt(5)), uniform
    # bias), which Conv2d and Linear reproduce when told the input width.
    feature_info = (FeatureInfo("features_1", 64, 4), FeatureInfo("features_4", 192, 8),
                    FeatureInfo("features_11", 256, 16), FeatureInfo("features_12", 256, 32))

    @property
    def stage_layout(self) -> StageLayout:
        # the stem is the 11x11 conv; a stage is the convs between two max pools
        return StageLayout(stem=r"features_0/", stages=(r"features_3/", r"features_(6|8|10)/"),
                           head=r"classifier_")

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = FeatureCollector(self.feature_info, self.features_only, self.out_indices)
        x = x.astype(self.dtype)
        for i, conv in _FEATURES.items():
            if conv is None:
                x = max_pool2d(x, 3, 2)
            else:
                c, k, s, p = conv
                x = Conv2d(c, k, s, p, bias=True, in_features=x.shape[-1], dtype=self.dtype,
                           name=f"features_{i}")(x)
                x = nn.relu(x)
                i += 1  # the map after the ReLU is torch's features[i + 1]
            if feats.add(f"features_{i}", x):
                return feats.maps
        x = flatten_nchw(adaptive_avg_pool2d(x, 6))
        for i, n_in in ((1, 256 * 6 * 6), (4, 4096)):
            x = nn.Dropout(self.dropout, deterministic=not train)(x)  # torch: before the Linear
            x = nn.relu(Linear(4096, n_in, dtype=self.dtype, name=f"classifier_{i}")(x))
        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, 4096, dtype=self.dtype, name="classifier_6")(x)


@register_model("alexnet", family="alexnet", torch_name="alexnet", num_params=61_100_840,
                features=AlexNet.feature_info,
                notes="num_classes=0 returns the 4096-d classifier.4 embedding")
def alexnet(**kwargs):
    """torchvision's ``alexnet``."""
    return AlexNet(**kwargs)

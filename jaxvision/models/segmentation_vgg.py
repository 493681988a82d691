"""FCN-32s, FCN-16s and FCN-8s on VGG-16 (Long, Shelhamer & Darrell 2015); torchvision has none.

The classifier is convolutionalised: ``fc6`` (7x7 conv, 4096), ``fc7`` (1x1, 4096), each + ReLU +
Dropout(0.5), then ``score_fr`` (1x1 to the classes).  FCN-16s adds ``score_pool4`` (1x1 on
pool4) to the stride-32 scores upsampled to pool4's size; FCN-8s adds ``score_pool3`` on pool3 in
the same way.  Two deliberate simplifications of the Caffe original: convolutions use 'same'
padding (fc6 pads 3) instead of padding conv1 by 100 and cropping, so any input of at least
32x32 works and the scores stay aligned; and upsampling is fixed bilinear interpolation
(align_corners=False) instead of deconvolutions initialised to bilinear (the paper keeps the
32x one fixed and found learning the others gave little).

Weights: ``jv.load_pretrained("fcn8s_vgg16", vgg16_state_dict, strict=False)`` fills the
backbone (``features.N`` -> ``backbone/features_N``) and fc6/fc7 from torchvision's
``classifier.0``/``classifier.3`` reshaped to convolutions, as the paper initialises them; the
score layers keep their initial values.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxvision.layers.conv import Conv2d
from jaxvision.layers.interpolate import interpolate
from jaxvision.models._stages import StageLayout
from jaxvision.models.segmentation import _no_features, check_input
from jaxvision.models.vgg import CFGS, VGG
from jaxvision.registry import register_model

_SKIPS = {32: (), 16: ("pool4",), 8: ("pool4", "pool3")}


class FCNVGG(nn.Module):
    output_stride: int = 8  # 32, 16 or 8: FCN-32s, -16s, -8s
    num_classes: int = 21
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @property
    def stage_layout(self) -> StageLayout:
        # VGG-16's five conv stages: features.0-4, 5-9, 10-16, 17-23, 24-30 (each ends in a pool)
        ends = (0, 5, 10, 17, 24, 31)
        stages = tuple("backbone/features_(" + "|".join(str(i) for i in range(a, b)) + ")/"
                       for a, b in zip(ends[:-1], ends[1:]))
        return StageLayout("(?!)", stages, r"(fc6|fc7|score_)")

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.output_stride not in _SKIPS:
            raise ValueError(f"output_stride must be 32, 16 or 8, got {self.output_stride}")
        check_input(x, self.num_classes, type(self).__name__)
        feats = VGG(CFGS["D"], dtype=self.dtype, features_only=True, out_indices=(2, 3, 4),
                    name="backbone")(x, train)
        conv = lambda c, k, name, p=0: Conv2d(c, k, padding=p, bias=True, dtype=self.dtype,
                                              in_features=None, name=name)
        y = feats["pool5"]
        for name, k, p in (("fc6", 7, 3), ("fc7", 1, 0)):
            y = nn.relu(conv(4096, k, name, p)(y))
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = conv(self.num_classes, 1, "score_fr")(y)
        for skip in _SKIPS[self.output_stride]:
            s = conv(self.num_classes, 1, f"score_{skip}")(feats[skip])
            y = interpolate(y, s.shape[1:3], "bilinear", align_corners=False) + s
        return {"out": interpolate(y, x.shape[1:3], "bilinear", align_corners=False)}


def vgg16_to_fcn(state_dict, model):
    """torchvision vgg16 keys -> FCN keys: ``features.N`` under ``backbone``, ``classifier.0``
    / ``classifier.3`` reshaped into the fc6 (4096, 512, 7, 7) / fc7 (4096, 4096, 1, 1)
    convolutions (torch flattens pool5 channel-major, which is the conv's OIHW order); the
    ImageNet classifier ``classifier.6`` has no place here."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("features."):
            out["backbone." + k] = v
        elif k == "classifier.0.weight" and len(v.shape) == 2:
            out["fc6.weight"] = v.reshape(v.shape[0], 512, 7, 7)
        elif k == "classifier.3.weight" and len(v.shape) == 2:
            out["fc7.weight"] = v.reshape(*v.shape, 1, 1)
        elif k in ("classifier.0.bias", "classifier.3.bias"):
            out[("fc6" if k[11] == "0" else "fc7") + ".bias"] = v
        elif not k.startswith("classifier.6."):
            out[k] = v
    return out


def _register(stride, num_params):
    name = f"fcn{stride}s_vgg16"

    def build(num_classes: int = 21, dtype=jnp.float32, features_only=False, out_indices=None,
              norm: str = "batch", **kwargs):
        _no_features(name, features_only, out_indices)
        del norm  # VGG-16 has no BatchNorm; accepted so freeze.norm_eval applies uniformly
        return FCNVGG(stride, num_classes, dtype=dtype, **kwargs)

    build.__name__ = name
    build.__doc__ = f"FCN-{stride}s on VGG-16 (Long et al. 2015); see the module docstring."
    register_model(name, family="segmentation", torch_name=None, num_params=num_params,
                   input_size=(224, 224), adapt_state_dict=vgg16_to_fcn,
                   notes="no torchvision twin; partial load from torchvision's vgg16 fills the "
                         "backbone and fc6/fc7")(build)


_register(32, 134_346_581)
_register(16, 134_357_354)
_register(8, 134_362_751)

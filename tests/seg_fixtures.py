"""A tiny segmenter for the engine's tests, shaped as jaxvision's segmenters are: a ``backbone``
with BatchNorm, a ``classifier`` and an optional ``aux_classifier``, returning ``{"out", "aux"}``
at the input size. Small enough to train on 2 CPU cores in seconds."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.registry import list_models, register_model

NAME = "tiny_segmenter_test"


class _Backbone(nn.Module):
    norm: str = "batch"

    @nn.compact
    def __call__(self, x, train):
        frozen = self.norm in ("batch_eval", "frozen") or not train
        for i, (ch, stride) in enumerate(((16, 1), (24, 2), (32, 2))):
            x = nn.Conv(ch, (3, 3), (stride, stride), use_bias=False, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=frozen, momentum=0.9, name=f"bn{i}")(x)
            x = nn.relu(x)
        return x


class TinySegmenter(nn.Module):
    num_classes: int = 3
    aux_loss: bool = False
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        n, h, w, _ = x.shape
        feats = _Backbone(self.norm, name="backbone")(x, train)
        up = lambda y: jax.image.resize(y, (n, h, w, y.shape[-1]), "bilinear")
        out = nn.Conv(self.num_classes, (3, 3), name="classifier")(feats)
        result = {"out": up(out)}
        if self.aux_loss:
            result["aux"] = up(nn.Conv(self.num_classes, (1, 1), name="aux_classifier")(feats))
        return result


if NAME not in list_models():
    register_model(NAME, family="segmentation", torch_name=None, num_params=0,
                   input_size=(32, 32))(
        lambda features_only=False, **kw: TinySegmenter(**kw))

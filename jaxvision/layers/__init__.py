"""Small shared blocks used by every model family."""
from jaxvision.layers.activations import hardsigmoid, hardswish, leaky, relu6
from jaxvision.layers.conv import (Conv2d, ConvTranspose2d, Linear, kaiming_normal_fan_out,
                                   torch_default_kernel, trunc_normal, uniform_bias)
from jaxvision.layers.blocks import BasicConv2d, SqueezeExcitation, conv_norm_act
from jaxvision.layers.interpolate import interpolate
from jaxvision.layers.misc import check_nhwc, flatten_nchw, make_divisible, transform_input
from jaxvision.layers.norm import (NORMS, BatchNorm, FrozenBatchNorm, GroupNorm, layer_norm,
                                   norm_factory)
from jaxvision.layers.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from jaxvision.layers.separable import SeparableConv2d

__all__ = [
    "Conv2d", "ConvTranspose2d", "Linear", "kaiming_normal_fan_out", "torch_default_kernel",
    "trunc_normal", "uniform_bias",
    "check_nhwc", "make_divisible", "NORMS", "BatchNorm", "FrozenBatchNorm", "GroupNorm",
    "norm_factory", "conv_norm_act", "interpolate",
    "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "SeparableConv2d",
    "hardsigmoid", "hardswish", "leaky", "relu6", "flatten_nchw", "transform_input",
    "SqueezeExcitation", "BasicConv2d", "layer_norm",
]

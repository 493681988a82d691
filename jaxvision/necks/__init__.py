"""Necks: dict of NHWC feature maps in (``feature_info`` order) -> dict of maps out."""
from jaxvision.necks.aspp import ASPP
from jaxvision.necks.base import single_map
from jaxvision.necks.bifpn import BiFPN
from jaxvision.necks.fpn import FPN, LastLevelP6P7
from jaxvision.necks.pan import PAN
from jaxvision.necks.simple_pyramid import SimplePyramid
from jaxvision.necks.spp import SPP

__all__ = ["ASPP", "BiFPN", "FPN", "LastLevelP6P7", "PAN", "SPP", "SimplePyramid", "single_map"]

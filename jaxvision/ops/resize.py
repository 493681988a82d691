"""The resize rule of torchvision's detectors (``GeneralizedRCNNTransform``), shared by the
detectors' inference transform and the detection data pipeline."""
from __future__ import annotations


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """(h, w) that torchvision's eager ``_resize_image_and_masks`` gives an image of
    ``height`` x ``width``: scale = min(min_size / short side, max_size / long side) in Python
    (float64) arithmetic, then ``F.interpolate(scale_factor=scale,
    recompute_scale_factor=True)`` truncates each side times the scale.  (Only TorchScript and
    tracing compute the scale in float32, which gives 799 rows instead of 800 for a 480x640
    image; the bilinear resampling itself then uses the in/out size ratio, not ``scale``.)"""
    if min(height, width) < 1:
        raise ValueError(f"resized_size: image of {height}x{width} has an empty side")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)

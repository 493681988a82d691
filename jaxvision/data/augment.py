"""The augmentation ops of AutoAugment, RandAugment, TrivialAugmentWide and AugMix, with
torchvision's names and semantics (``torchvision.transforms.autoaugment._apply_op``).

They run in the data workers on uint8 images through PIL, exactly as torchvision's PIL path
does (the reference recipes feed the policies PIL images), so the results are pixel-equal to it.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                 "bicubic": Image.BICUBIC}

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
       "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
       "Invert")


def inverse_affine_matrix(center, angle, translate, shear) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` at scale 1: PIL's ``Image.AFFINE`` data, the
    output->input map of a rotation/shear about ``center`` followed by ``translate``."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def _fill(fill, bands: int):
    """torchvision's ``_parse_fill``: None is black; one number fills every band."""
    if fill is None:
        fill = 0
    if isinstance(fill, (int, float)):
        fill = [fill] * bands
    fill = list(fill)
    if len(fill) == 1:
        fill = fill * bands
    if len(fill) != bands:
        raise ValueError(f"fill has {len(fill)} values for an image of {bands} channels")
    return tuple(int(v) for v in fill) if bands > 1 else int(fill[0])


def _affine(img, center, translate, shear, resample, fill):
    m = inverse_affine_matrix(center, 0.0, translate, shear)
    return img.transform(img.size, Image.AFFINE, m, resample,
                         fillcolor=_fill(fill, len(img.getbands())))


def apply_op_pil(img: Image.Image, op_name: str, magnitude: float,
                 interpolation: str = "nearest", fill=None) -> Image.Image:
    """:func:`apply_op` on a PIL image (what the policies chain, converting once)."""
    if interpolation not in INTERPOLATION:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATION)}, "
                         f"got {interpolation!r}")
    resample = INTERPOLATION[interpolation]
    if op_name in ("ShearX", "ShearY"):
        # torchvision shears by atan(magnitude) degrees about the top-left corner (center=[0, 0]),
        # so the matrix's shear term is the magnitude itself, as in the AutoAugment paper
        deg = math.degrees(math.atan(magnitude))
        shear = (deg, 0.0) if op_name == "ShearX" else (0.0, deg)
        return _affine(img, (0.0, 0.0), (0, 0), shear, resample, fill)
    if op_name in ("TranslateX", "TranslateY"):
        shift = (int(magnitude), 0) if op_name == "TranslateX" else (0, int(magnitude))
        w, h = img.size
        return _affine(img, (w * 0.5, h * 0.5), shift, (0.0, 0.0), resample, fill)
    if op_name == "Rotate":
        return img.rotate(magnitude, resample, False, None,
                          fillcolor=_fill(fill, len(img.getbands())))
    enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
               "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
    if op_name in enhance:
        return enhance[op_name](img).enhance(1.0 + magnitude)
    if op_name == "Posterize":
        bits = int(magnitude)
        if bits == 0:  # AugMix's severity 10 reaches 0 bits; PIL refuses it, torch's mask blacks out
            return Image.new(img.mode, img.size)
        return ImageOps.posterize(img, bits)
    if op_name == "Solarize":
        return ImageOps.solarize(img, magnitude)
    if op_name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op_name == "Equalize":
        return ImageOps.equalize(img)
    if op_name == "Invert":
        return ImageOps.invert(img)
    if op_name == "Identity":
        return img
    raise ValueError(f"augmentation op {op_name!r} is not one of {', '.join(OPS)}")


def apply_op(image_uint8_hwc, op_name: str, magnitude: float, interpolation: str = "nearest",
             fill=None) -> np.ndarray:
    """One op of torchvision's policies on a uint8 ``[H, W, 3]`` (or ``[H, W]``) array.

    ``magnitude`` is the signed value the policy drew (degrees for Rotate, pixels for
    Translate*, the shear factor for Shear*, ``factor - 1`` for the enhancements, bits for
    Posterize, the threshold for Solarize); ``fill`` pads what geometric ops uncover.
    """
    a = np.asarray(image_uint8_hwc)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"apply_op takes a uint8 HxW or HxWx3 array, got {a.dtype} "
                         f"{a.shape}")
    return np.asarray(apply_op_pil(Image.fromarray(a), op_name, magnitude, interpolation, fill))

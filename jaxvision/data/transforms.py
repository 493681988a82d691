"""Per-example transforms with torchvision's semantics, as grain transforms (numpy + PIL).

Images leave them as uint8 HWC; normalisation happens on the device (``layers/normalize.py``).
"""
from __future__ import annotations

import math

import grain
import numpy as np
from PIL import Image

from jaxvision.ops.labels import IGNORE

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def to_rgb(img) -> Image.Image:
    """Any PIL image or HWC/HW array (grey, palette, RGBA, CMYK, 16-bit) -> 8-bit RGB PIL."""
    if isinstance(img, Image.Image):
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # PIL's convert("RGB") clips 16-bit values at 255; rescale the full range instead
            img = np.asarray(img)
        elif img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        else:
            return img if img.mode == "RGB" else img.convert("RGB")
    a = np.asarray(img)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3:
        return Image.fromarray(a)  # already 8-bit RGB: no scan for the range, no copies
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.max(initial=0) > 255):
        a = (a.astype(np.float32) / 257.0).round()
    a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ValueError(f"image array of shape {a.shape}: expected HW, HW1, HW3 or HW4")
    return Image.fromarray(a).convert("RGB")


_pil = to_rgb


def resize_shorter(img: Image.Image, size: int, interpolation="bilinear") -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    # torchvision: the shorter side becomes `size`, the longer keeps the aspect (floored)
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return img.resize((nw, nh), _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # torchvision pads with zeros, then crops
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_image(img, image_size, resize_size, interpolation="bilinear") -> np.ndarray:
    """Resize (shorter side) + centre crop: uint8 [H, W, 3]."""
    img = center_crop(resize_shorter(to_rgb(img), resize_size, interpolation), image_size)
    return np.asarray(img)


def undecoded_jpeg(img) -> bool:
    """A JPEG opened but not decoded yet (``data.imagefolder.draft``): it can still be decoded
    at 1/2, 1/4 or 1/8 of its size."""
    return isinstance(img, Image.Image) and img.format == "JPEG" and bool(img.tile)


def draft(img: Image.Image, room: float) -> int:
    """Decode an undecoded JPEG at 1/f of its size, f the largest of 8, 4, 2 that is at most
    ``room`` (how many times the region a transform reads exceeds its output, per side):
    libjpeg's DCT scaling skips most of the inverse DCT and the resampling that follows reads
    f^2 fewer pixels. Pixels differ slightly from a full decode (torchvision never drafts).
    Returns f (1: a full decode)."""
    from jaxvision.data.errors import DataError

    f = next((f for f in (8, 4, 2) if f <= room), 1)
    w = img.width
    if f > 1:
        img.draft("RGB", (img.width // f, img.height // f))
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{img.filename}: cannot be decoded ({e}); data.imagefolder.draft "
                        "decodes in the transform, where a corrupt file cannot be skipped") from e
    return f if img.width != w else 1


def random_resized_crop_box(rng: np.random.Generator, w: int, h: int, scale, ratio):
    """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop fallback."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class TrainTransform(grain.transforms.RandomMap):
    """torchvision's ClassificationPresetTrain up to the tensor: RandomResizedCrop, horizontal
    flip, then an augmentation policy (``jaxvision.data.policies``); with ``erasing`` the
    example also carries the RandomErasing box that the step paints after normalising."""

    def __init__(self, image_size, random_resized_crop=True, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip=True, interpolation="bilinear", policy=None,
                 erasing=None):
        self.size = image_size
        self.rrc, self.scale, self.ratio, self.hflip = random_resized_crop, scale, ratio, hflip
        self.interpolation = interpolation
        self.policy, self.erasing = policy, erasing

    def random_map(self, example, rng: np.random.Generator):
        img, out = example["image"], (self.size, self.size)
        lazy = undecoded_jpeg(img)
        if not lazy:
            img = to_rgb(img)
        resample = _RESAMPLE[self.interpolation]
        if self.rrc:
            # from the header alone when lazy: the same draws and box as a full decode
            top, left, ch, cw = random_resized_crop_box(rng, *img.size, self.scale, self.ratio)
            f = draft(img, min(cw, ch) / self.size) if lazy else 1
            img = to_rgb(img)
            if f > 1:  # full-size pixel x is x / f in the drafted image
                img = img.resize(out, resample, box=(left / f, top / f, (left + cw) / f,
                                                     (top + ch) / f))
            else:
                # crop first, as torchvision does: resize(box=...) would let the filter read
                # pixels outside the box at its edges (measured up to 0.15 after normalising)
                img = img.crop((left, top, left + cw, top + ch)).resize(out, resample)
        else:
            if lazy:
                draft(img, min(img.size) / self.size)
            img = to_rgb(img)
            if img.size != out:
                img = img.resize(out, resample)
        image = np.asarray(img)
        if self.hflip and rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        if self.policy is not None:
            image = self.policy(image, rng)
        out = {"image": image, "label": example["label"]}
        if self.erasing is not None:
            out["erase"] = self.erasing.box(rng, *image.shape[:2])
        return out


class EvalTransform(grain.transforms.Map):
    def __init__(self, image_size, resize_size, interpolation="bilinear"):
        self.args = (image_size, resize_size, interpolation)

    def map(self, example):
        return {"image": eval_image(_pil(example["image"]), *self.args),
                "label": example["label"]}


# -- joint image + mask transforms (torchvision's references/segmentation/transforms.py) --------


def mask_pil(mask) -> Image.Image:
    """An HxW array of class ids (<= 255) as an 8-bit PIL image, so it resizes with NEAREST."""
    return Image.fromarray(np.asarray(mask).astype(np.uint8), mode="L")


def resize_pair(img: Image.Image, mask: Image.Image, size: int, interpolation="bilinear",
                max_size: int | None = None):
    """Shorter side to ``size`` (longer side capped at ``max_size``); the mask always NEAREST."""
    w, h = img.size
    if max_size is not None and size * max(w, h) / min(w, h) > max_size:
        # torchvision's rule: the longer side becomes max_size, the shorter follows (floored)
        size = int(max_size * min(w, h) / max(w, h))
        if w <= h:
            nw, nh = size, max_size
        else:
            nw, nh = max_size, size
        return img.resize((nw, nh), _RESAMPLE[interpolation]), mask.resize((nw, nh), Image.NEAREST)
    return resize_shorter(img, size, interpolation), resize_shorter(mask, size, "nearest")


def pad_pair(img: Image.Image, mask: Image.Image, height: int, width: int):
    """Pad right and bottom to at least (height, width): image with 0, mask with ``IGNORE``
    (torchvision's ``pad_if_smaller``)."""
    w, h = img.size
    if w >= width and h >= height:
        return img, mask
    canvas = Image.new("RGB", (max(w, width), max(h, height)), (0, 0, 0))
    canvas.paste(img, (0, 0))
    mcanvas = Image.new("L", canvas.size, IGNORE)
    mcanvas.paste(mask, (0, 0))
    return canvas, mcanvas


class SegTrainTransform(grain.transforms.RandomMap):
    """torchvision's segmentation training transform: RandomResize(min, max) of the shorter side,
    RandomHorizontalFlip(0.5), RandomCrop(crop) with padding (the image with black, which
    normalises to -mean/std as in torchvision)."""

    def __init__(self, crop_size, base_size, scale_range=(0.5, 2.0), hflip=True,
                 interpolation="bilinear"):
        self.crop, self.hflip = crop_size, hflip
        self.min_size = int(scale_range[0] * base_size)
        self.max_size = int(scale_range[1] * base_size)
        self.interpolation = interpolation

    def random_map(self, example, rng: np.random.Generator):
        img, mask = to_rgb(example["image"]), mask_pil(example["mask"])
        size = int(rng.integers(self.min_size, self.max_size + 1))  # random.randint: inclusive
        img, mask = resize_pair(img, mask, size, self.interpolation)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
        img, mask = pad_pair(img, mask, self.crop, self.crop)
        w, h = img.size
        top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        box = (left, top, left + self.crop, top + self.crop)
        return {"image": np.asarray(img.crop(box)),
                "mask": np.asarray(mask.crop(box), np.int32)}


class SegEvalTransform(grain.transforms.Map):
    """torchvision's segmentation eval: the shorter side to ``resize_size`` (the longer one
    capped at ``canvas``), then padded right/bottom to a fixed ``canvas`` square so batches have
    one shape; padding is ignored (mask 255), so every pixel of the resized mask counts once.
    The image pads with black before normalising, as torchvision's ``pad_if_smaller``."""

    def __init__(self, resize_size, canvas, interpolation="bilinear"):
        self.resize, self.canvas = resize_size, canvas
        self.interpolation = interpolation

    def map(self, example):
        img, mask = to_rgb(example["image"]), mask_pil(example["mask"])
        img, mask = resize_pair(img, mask, self.resize, self.interpolation, self.canvas)
        img, mask = pad_pair(img, mask, self.canvas, self.canvas)
        return {"image": np.asarray(img), "mask": np.asarray(mask, np.int32)}


def check_mask(image: np.ndarray, mask: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """The mask as int32 after checking it fits its image and holds class ids in
    ``[0, num_classes)`` or ``IGNORE``; ``where`` names the file in the error."""
    from jaxvision.data.errors import DataError

    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise DataError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH), its image "
                        f"{image.shape[1]}x{image.shape[0]}; they must be the same size")
    ids = np.unique(mask)
    bad = ids[((ids < 0) | (ids >= num_classes)) & (ids != IGNORE)]
    if bad.size:
        raise DataError(f"{where}: mask holds class ids {bad.tolist()[:10]} outside "
                        f"[0, {num_classes}) (255 = ignore is allowed)")
    return mask.astype(np.int32)

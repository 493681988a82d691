"""Per-example transforms with torchvision's semantics, as grain transforms (numpy + PIL)."""
from __future__ import annotations

import math

import grain
import numpy as np
from PIL import Image

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


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def eval_image(img, image_size, resize_size, mean, std, interpolation="bilinear") -> np.ndarray:
    """Resize (shorter side) + centre crop + normalise: float32 [H, W, 3]."""
    img = center_crop(resize_shorter(to_rgb(img), resize_size, interpolation), image_size)
    return normalize(np.asarray(img), mean, std)


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
    def __init__(self, image_size, mean, std, random_resized_crop=True, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip=True, interpolation="bilinear"):
        self.size, self.mean, self.std = image_size, mean, std
        self.rrc, self.scale, self.ratio, self.hflip = random_resized_crop, scale, ratio, hflip
        self.interpolation = interpolation

    def random_map(self, example, rng: np.random.Generator):
        img = to_rgb(example["image"])
        if self.rrc:
            top, left, ch, cw = random_resized_crop_box(rng, *img.size, self.scale, self.ratio)
            # crop first, as torchvision does: resize(box=...) would let the filter read
            # pixels outside the box at its edges (measured up to 0.15 after normalising)
            img = img.crop((left, top, left + cw, top + ch)).resize(
                (self.size, self.size), _RESAMPLE[self.interpolation])
        elif img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), _RESAMPLE[self.interpolation])
        image = np.asarray(img)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": normalize(image, self.mean, self.std), "label": example["label"]}


class EvalTransform(grain.transforms.Map):
    def __init__(self, image_size, resize_size, mean, std, interpolation="bilinear"):
        self.args = (image_size, resize_size, mean, std, interpolation)

    def map(self, example):
        return {"image": eval_image(_pil(example["image"]), *self.args),
                "label": example["label"]}

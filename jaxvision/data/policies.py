"""torchvision's augmentation policies on uint8 images: AutoAugment (ImageNet, CIFAR10, SVHN),
RandAugment, TrivialAugmentWide and AugMix, with torchvision's op lists, magnitude bins and
signs (``torchvision.transforms.autoaugment``), built on :func:`jaxvision.data.augment.apply_op`.

Each policy draws a plan, ``[(op_name, signed magnitude), ...]``, from a numpy Generator (the
loader's per-example rng, so a resumed run draws the same), then applies it with PIL.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from jaxvision.data.augment import apply_op_pil


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace`` in float32 as torch's scalar CPU loop computes it: a float32 step, the
    first half ``start + step * i``, the second half ``end - step * (steps - 1 - i)``, each
    with one rounding (torch's build fuses the multiply-add). The bins differ from a correctly
    rounded linspace in the last bit, and that bit moves ``int()`` of a translation (torch's
    ``linspace(0, 32, 31)[15]`` is 15.999999: TrivialAugmentWide shifts 15 pixels, not 16).
    torch takes its SIMD loop from two vector widths on (32 bins on AVX-512, 16 on AVX2) and
    then its own bins depend on the CPU; the default 10 and 31 bins fit the scalar loop on
    AVX-512."""
    f32 = np.float32
    step = np.float64(f32((f32(end) - f32(start)) / f32(max(steps - 1, 1))))
    i = np.arange(steps, dtype=np.float64)
    up = (np.float64(f32(start)) + step * i).astype(f32)
    down = (np.float64(f32(end)) - step * (steps - 1 - i)).astype(f32)
    out = np.where(i < steps // 2, up, down)
    out.flags.writeable = False  # shared by augmentation_space's cache
    return out


def _posterize_bins(top: int, n: int, levels: int) -> np.ndarray:
    # torch: top - (arange(n) / ((n - 1) / levels)).round().int(), in float32, ties to even
    out = top - np.round(np.arange(n, dtype=np.float32) / np.float32((n - 1) / levels)).astype(
        np.int32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def augmentation_space(policy: str, num_bins: int, image_size=(0, 0), all_ops: bool = True):
    """``{op_name: (magnitudes, signed)}`` of torchvision's ``_augmentation_space`` for
    ``policy`` (autoaugment | randaugment | trivialaugment | augmix), in its order; ops without
    a magnitude hold ``None``. ``image_size`` is (height, width). Cached: do not change it."""
    h, w = image_size
    lin = lambda end: linspace32(0.0, end, num_bins)
    if policy == "trivialaugment":
        return {"Identity": (None, False), "ShearX": (lin(0.99), True),
                "ShearY": (lin(0.99), True), "TranslateX": (lin(32.0), True),
                "TranslateY": (lin(32.0), True), "Rotate": (lin(135.0), True),
                "Brightness": (lin(0.99), True), "Color": (lin(0.99), True),
                "Contrast": (lin(0.99), True), "Sharpness": (lin(0.99), True),
                "Posterize": (_posterize_bins(8, num_bins, 6), False),
                "Solarize": (linspace32(255.0, 0.0, num_bins), False),
                "AutoContrast": (None, False), "Equalize": (None, False)}
    if policy == "augmix":
        s = {"ShearX": (lin(0.3), True), "ShearY": (lin(0.3), True),
             "TranslateX": (lin(w / 3.0), True), "TranslateY": (lin(h / 3.0), True),
             "Rotate": (lin(30.0), True), "Posterize": (_posterize_bins(4, num_bins, 4), False),
             "Solarize": (linspace32(255.0, 0.0, num_bins), False),
             "AutoContrast": (None, False), "Equalize": (None, False)}
        if all_ops:
            s.update({k: (lin(0.9), True) for k in ("Brightness", "Color", "Contrast",
                                                    "Sharpness")})
        return s
    if policy not in ("autoaugment", "randaugment"):
        raise ValueError(f"no augmentation space for policy {policy!r}")
    s = {"ShearX": (lin(0.3), True), "ShearY": (lin(0.3), True),
         "TranslateX": (lin(150.0 / 331.0 * w), True),
         "TranslateY": (lin(150.0 / 331.0 * h), True), "Rotate": (lin(30.0), True),
         **{k: (lin(0.9), True) for k in ("Brightness", "Color", "Contrast", "Sharpness")},
         "Posterize": (_posterize_bins(8, num_bins, 4), False),
         "Solarize": (linspace32(255.0, 0.0, num_bins), False),
         "AutoContrast": (None, False), "Equalize": (None, False)}
    if policy == "randaugment":
        return {"Identity": (None, False), **s}
    return {**s, "Invert": (None, False)}


def _value(magnitudes, index) -> float:
    return 0.0 if magnitudes is None else float(magnitudes[index])


class Policy:
    """A plan drawn per image, then applied op by op through PIL."""
    interpolation, fill = "nearest", None

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list:
        raise NotImplementedError

    def apply(self, image: np.ndarray, plan) -> np.ndarray:
        img = Image.fromarray(image)
        for op, magnitude in plan:
            img = apply_op_pil(img, op, magnitude, self.interpolation, self.fill)
        return np.asarray(img)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng, *image.shape[:2]))


# (op, probability, magnitude bin) pairs of torchvision's AutoAugmentPolicy tables
_P = {
    "imagenet": """Posterize .4 8 Rotate .6 9|Solarize .6 5 AutoContrast .6 -|Equalize .8 - Equalize .6 -
        |Posterize .6 7 Posterize .6 6|Equalize .4 - Solarize .2 4|Equalize .4 - Rotate .8 8
        |Solarize .6 3 Equalize .6 -|Posterize .8 5 Equalize 1 -|Rotate .2 3 Solarize .6 8
        |Equalize .6 - Posterize .4 6|Rotate .8 8 Color .4 0|Rotate .4 9 Equalize .6 -
        |Equalize 0 - Equalize .8 -|Invert .6 - Equalize 1 -|Color .6 4 Contrast 1 8
        |Rotate .8 8 Color 1 2|Color .8 8 Solarize .8 7|Sharpness .4 7 Invert .6 -
        |ShearX .6 5 Equalize 1 -|Color .4 0 Equalize .6 -|Equalize .4 - Solarize .2 4
        |Solarize .6 5 AutoContrast .6 -|Invert .6 - Equalize 1 -|Color .6 4 Contrast 1 8
        |Equalize .8 - Equalize .6 -""",
    "cifar10": """Invert .1 - Contrast .2 6|Rotate .7 2 TranslateX .3 9|Sharpness .8 1 Sharpness .9 3
        |ShearY .5 8 TranslateY .7 9|AutoContrast .5 - Equalize .9 -|ShearY .2 7 Posterize .3 7
        |Color .4 3 Brightness .6 7|Sharpness .3 9 Brightness .7 9|Equalize .6 - Equalize .5 -
        |Contrast .6 7 Sharpness .6 5|Color .7 7 TranslateX .5 8|Equalize .3 - AutoContrast .4 -
        |TranslateY .4 3 Sharpness .2 6|Brightness .9 6 Color .2 8|Solarize .5 2 Invert 0 -
        |Equalize .2 - AutoContrast .6 -|Equalize .2 - Equalize .6 -|Color .9 9 Equalize .6 -
        |AutoContrast .8 - Solarize .2 8|Brightness .1 3 Color .7 0|Solarize .4 5 AutoContrast .9 -
        |TranslateY .9 9 TranslateY .7 9|AutoContrast .9 - Solarize .8 3|Equalize .8 - Invert .1 -
        |TranslateY .7 9 AutoContrast .9 -""",
    "svhn": """ShearX .9 4 Invert .2 -|ShearY .9 8 Invert .7 -|Equalize .6 - Solarize .6 6
        |Invert .9 - Equalize .6 -|Equalize .6 - Rotate .9 3|ShearX .9 4 AutoContrast .8 -
        |ShearY .9 8 Invert .4 -|ShearY .9 5 Solarize .2 6|Invert .9 - AutoContrast .8 -
        |Equalize .6 - Rotate .9 3|ShearX .9 4 Solarize .3 3|ShearY .8 8 Invert .7 -
        |Equalize .9 - TranslateY .6 6|Invert .9 - Equalize .6 -|Contrast .3 3 Rotate .8 4
        |Invert .8 - TranslateY 0 2|ShearY .7 6 Solarize .4 8|Invert .6 - Rotate .8 4
        |ShearY .3 7 TranslateX .9 3|ShearX .1 6 Invert .6 -|Solarize .7 2 TranslateY .6 7
        |ShearY .8 4 Invert .8 -|ShearX .7 9 TranslateY .8 3|ShearY .8 5 AutoContrast .7 -
        |ShearX .7 2 Invert .1 -""",
}


def autoaugment_policies(name: str) -> list:
    """torchvision's ``AutoAugment._get_policies``: 25 pairs of (op, probability, bin | None)."""
    if name not in _P:
        raise ValueError(f"AutoAugment policy must be one of {', '.join(_P)}, got {name!r}")
    out = []
    for pair in _P[name].split("|"):
        w = pair.split()
        out.append(tuple((w[k], float(w[k + 1]), None if w[k + 2] == "-" else int(w[k + 2]))
                         for k in (0, 3)))
    return out


class AutoAugment(Policy):
    def __init__(self, policy: str = "imagenet", interpolation="nearest", fill=None):
        self.policies = autoaugment_policies(policy)
        self.interpolation, self.fill = interpolation, fill

    def sample(self, rng, height, width):
        # torchvision draws the sub-policy, then both probabilities, then both signs
        sub = self.policies[int(rng.integers(len(self.policies)))]
        probs, signs = rng.random(2), rng.integers(2, size=2)
        space = augmentation_space("autoaugment", 10, (height, width))
        plan = []
        for (op, p, bin_), u, sign in zip(sub, probs, signs):
            if u <= p:
                magnitudes, signed = space[op]
                m = _value(magnitudes, bin_) if bin_ is not None else 0.0
                plan.append((op, -m if signed and sign == 0 else m))
        return plan


class RandAugment(Policy):
    def __init__(self, num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="nearest",
                 fill=None):
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"RandAugment magnitude {magnitude} is not a bin of "
                             f"num_magnitude_bins={num_magnitude_bins}")
        self.num_ops, self.magnitude, self.bins = num_ops, magnitude, num_magnitude_bins
        self.interpolation, self.fill = interpolation, fill

    def sample(self, rng, height, width):
        space = augmentation_space("randaugment", self.bins, (height, width))
        names, plan = list(space), []
        for _ in range(self.num_ops):
            op = names[int(rng.integers(len(names)))]
            magnitudes, signed = space[op]
            m = _value(magnitudes, self.magnitude)
            plan.append((op, -m if signed and rng.integers(2) else m))
        return plan


class TrivialAugmentWide(Policy):
    def __init__(self, num_magnitude_bins=31, interpolation="nearest", fill=None):
        self.bins, self.interpolation, self.fill = num_magnitude_bins, interpolation, fill

    def sample(self, rng, height, width):
        space = augmentation_space("trivialaugment", self.bins)
        names = list(space)
        op = names[int(rng.integers(len(names)))]
        magnitudes, signed = space[op]
        m = 0.0 if magnitudes is None else _value(magnitudes, rng.integers(len(magnitudes)))
        return [(op, -m if signed and rng.integers(2) else m)]


class AugMix(Policy):
    """``mix = m0 * image + m1 * sum_i w_i * chain_i(image)`` in float32, truncated to uint8 as
    torchvision's ``.to(uint8)``; m ~ Dirichlet(alpha, alpha), w ~ Dirichlet(alpha x width)."""
    MAX_SEVERITY = 10

    def __init__(self, severity=3, mixture_width=3, chain_depth=-1, alpha=1.0, all_ops=True,
                 interpolation="bilinear", fill=None):
        if not 1 <= severity <= self.MAX_SEVERITY:
            raise ValueError(f"AugMix severity must be in [1, {self.MAX_SEVERITY}], got {severity}")
        self.severity, self.width, self.depth = severity, mixture_width, chain_depth
        self.alpha, self.all_ops = alpha, all_ops
        self.interpolation, self.fill = interpolation, fill

    def sample(self, rng, height, width):
        """(m, weights, chains): Beta weights of the original, the chains' weights, and one
        plan per chain."""
        m = rng.dirichlet([self.alpha] * 2).astype(np.float32)
        weights = rng.dirichlet([self.alpha] * self.width).astype(np.float32) * m[1]
        space = augmentation_space("augmix", self.MAX_SEVERITY, (height, width), self.all_ops)
        names, chains = list(space), []
        for _ in range(self.width):
            depth = self.depth if self.depth > 0 else int(rng.integers(1, 4))
            chain = []
            for _ in range(depth):
                op = names[int(rng.integers(len(names)))]
                magnitudes, signed = space[op]
                v = 0.0 if magnitudes is None else _value(magnitudes, rng.integers(self.severity))
                chain.append((op, -v if signed and rng.integers(2) else v))
            chains.append(chain)
        return m, weights, chains

    def apply(self, image, plan):
        m, weights, chains = plan
        mix = np.float32(m[0]) * image.astype(np.float32)
        for w, chain in zip(weights, chains):
            mix += np.float32(w) * super().apply(image, chain).astype(np.float32)
        return mix.astype(np.uint8)


POLICIES = ("autoaugment", "randaugment", "trivialaugment", "augmix")


def build_policy(augment, interpolation: str):
    """The policy ``data.augment.policy`` names (None: none), with its parameters from
    ``data.augment.<policy>``; the policies resample with the recipe's ``interpolation``, as
    torchvision's ``ClassificationPresetTrain`` passes its own to them."""
    from jaxvision.data.errors import DataError

    name = augment.policy
    if name is None:
        return None
    if name not in POLICIES:
        raise DataError(f"data.augment.policy must be None or one of {', '.join(POLICIES)}, "
                        f"got {name!r}")
    try:
        if name == "autoaugment":
            return AutoAugment(augment.autoaugment.policy, interpolation)
        if name == "randaugment":
            r = augment.randaugment
            return RandAugment(r.num_ops, r.magnitude, r.num_magnitude_bins, interpolation)
        if name == "trivialaugment":
            return TrivialAugmentWide(augment.trivialaugment.num_magnitude_bins, interpolation)
        a = augment.augmix
        return AugMix(a.severity, a.mixture_width, a.chain_depth, a.alpha, a.all_ops,
                      interpolation)
    except ValueError as e:
        raise DataError(f"data.augment.{name}: {e}") from None

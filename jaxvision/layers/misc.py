from typing import Optional


def make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never more than 10%
    below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v

"""The hybrid dilated convolution (HDC) rule of Wang et al. 2018 ("Understanding Convolution
for Semantic Segmentation"): a stack of dilated convolutions whose rates leave holes in the
receptive field "grids" -- some input pixels never reach an output.  With kernel size K and
rates r_1..r_n, let M_n = r_n and

    M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i);

the stack covers its field without holes when M_2 <= K ([1, 2, 5] passes, [1, 2, 9] fails for
K = 3).
"""
from __future__ import annotations

import warnings
from typing import Sequence

_WARNED: set = set()


def hdc_max_distance(rates: Sequence[int]) -> int:
    """M_2 of the rule (M_1 for a single rate): the largest gap between two non-zero taps."""
    rates = [int(r) for r in rates]
    if not rates or min(rates) < 1:
        raise ValueError(f"dilation rates must be positive integers, got {rates}")
    m = rates[-1]
    for r in reversed(rates[1:-1]):
        m = max(m - 2 * r, m - 2 * (m - r), r)
    return m


def hdc_ok(rates: Sequence[int], kernel_size: int = 3) -> bool:
    """True when the stack ``rates`` of ``kernel_size`` convolutions satisfies the HDC rule."""
    return len(rates) < 2 or hdc_max_distance(rates) <= kernel_size


def warn_if_gridding(named_rates: Sequence[tuple[str, int]], kernel_size: int = 3) -> bool:
    """Warn (once per layer stack) when the consecutive ``(layer name, rate)`` stack grids; only
    layers from the first dilated one on are considered and named.  Returns the verdict."""
    rates = [r for _, r in named_rates]
    first = next((i for i, r in enumerate(rates) if r > 1), None)
    if first is None:
        return True
    stack = [(str(n), int(r)) for n, r in named_rates[max(first - 1, 0):]]
    ok = hdc_ok([r for _, r in stack], kernel_size)
    key = (tuple(stack), kernel_size)
    if not ok and key not in _WARNED:
        _WARNED.add(key)
        layers = ", ".join(f"{n} (rate {r})" for n, r in stack)
        m = hdc_max_distance([r for _, r in stack])
        warnings.warn(f"dilation rates grid (HDC rule: M_2 = {m} > kernel size {kernel_size}), "
                      f"some pixels never reach the output: {layers}", stacklevel=3)
    return ok

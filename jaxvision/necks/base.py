"""What every neck shares: the contract of the single-map necks."""


def single_map(module_name: str, x, fn):
    """The neck contract for single-map necks (ASPP, SPP): a dict has its last (coarsest) map
    replaced by ``fn(map)``; a bare NHWC array is transformed directly."""
    if isinstance(x, dict):
        key = list(x)[-1]
        return {**x, key: single_map(module_name, x[key], fn)}
    if x.ndim != 4:
        raise ValueError(f"{module_name} expected NHWC input, got shape {tuple(x.shape)}")
    return fn(x)

"""Configs are data: a python file with ``get_config()``, overridden by ``--config.a.b=value``."""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections

from jaxvision.layers import lowering


class ConfigError(ValueError):
    pass


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """A python file with ``get_config()`` (``file.py:arg`` calls ``get_config(arg)``, as
    ml_collections' config flags do) or a run's dumped ``config.json``."""
    arg = None
    if not os.path.isfile(path) and ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    if path.endswith(".json"):
        return _from_json(path)
    spec = importlib.util.spec_from_file_location("jaxvision_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # the user's file: where and what, not the import machinery
        raise ConfigError(f"{e.filename or path}:{e.lineno}: syntax error in the config file: "
                          f"{e.msg}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    return module.get_config() if arg is None else module.get_config(arg)


def _from_json(path: str) -> ml_collections.ConfigDict:
    """A dumped config.json back onto the schema, so types (tuples, None fields) are the schema's."""
    from jaxvision.train.defaults import default_config

    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    config = default_config()
    flat = _flat(saved)
    # the override parser gives each value the schema's type (tuples stay tuples)
    items = [f"{key}={value if isinstance(value, str) else repr(value)}"
             for key, value in flat.items() if not key.startswith("model.kwargs")]
    # model.kwargs is free-form: set it whole, the schema cannot type it
    config.model.kwargs = ml_collections.ConfigDict(saved.get("model", {}).get("kwargs", {}))
    return apply_overrides(config, items)


def _parse(text: str, current):
    if current is None and text.lower() in ("true", "false"):  # untyped: a new model.kwargs key
        return text.lower() == "true"
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if text.lower() == "none":
        return None
    if isinstance(current, (tuple, list)) and isinstance(value, (int, float, str)) and "," in text:
        value = tuple(ast.literal_eval(v) for v in text.split(","))
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, str) and not isinstance(value, str):
        return text
    return value


# free-form sections: the model builder's keyword arguments, checked by the builder itself, so
# an override may add a key that the config file did not set (``model.kwargs.output_stride=16``)
FREE_FORM = ("model.kwargs",)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
    """``config.a.b=value`` items; an unknown key is an error naming it, except beneath a
    free-form section (``FREE_FORM``), where it is added."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected --config.KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.removeprefix("--").removeprefix("config.")
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            is_dict = isinstance(node, (ml_collections.ConfigDict, dict))
            fields = node.keys() if is_dict else ()
            parent = ".".join(parts[:i])
            free = is_dict and any(parent == f or parent.startswith(f + ".") for f in FREE_FORM)
            if part not in fields and free:
                node[part] = {} if i < len(parts) - 1 else None
            elif part not in fields:
                where = ".".join(parts[:i]) or "the config"
                raise ConfigError(f"unknown config key {key!r}: {where} has no field {part!r} "
                                  f"(it has {', '.join(sorted(fields))})")
            if i < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        try:
            value = _parse(text, current)
            node[parts[-1]] = value
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config key {key!r}: cannot set {text!r} ({e})") from e
    return config


def save_config(config, path: str):
    with open(path, "w") as f:
        f.write(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_configs(saved: dict, new) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every leaf that differs, compared as config.json has them."""
    new = json.loads(json.dumps(new.to_dict() if hasattr(new, "to_dict") else new, default=str))
    a, b = _flat(saved), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


POSITIVE = ("data.batch_size", "data.eval_batch_size", "data.image_size", "train.log_every",
            "train.eval_every_epochs", "train.grad_accum_steps", "checkpoint.keep")
NON_NEGATIVE = ("model.num_classes", "train.steps", "train.epochs", "data.num_workers",
                "checkpoint.save_every_steps")


def check_config(config):
    """Values that would otherwise end in a ZeroDivisionError or a shape error deep inside."""
    for keys, low in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
        for key in keys:
            node = config
            for part in key.split("."):
                node = node[part]
            if isinstance(node, bool) or not isinstance(node, int) or node < low:
                raise ConfigError(f"config key {key!r}: expected an int >= {low}, got {node!r}")
    if not config.train.steps and not config.train.epochs:
        raise ConfigError("train.steps and train.epochs are both 0: nothing to train")
    mode = config.get("conv_lowering")
    if mode not in (None, "", *lowering.MODES):
        raise ConfigError(f"config key 'conv_lowering': expected one of {lowering.MODES} (or '' "
                          f"for the default, {lowering.DEFAULT_MODE!r}), got {mode!r}")
    from jaxvision.tasks import check_model
    from jaxvision.tasks.distill import check_distill

    check_model(config)
    check_distill(config)
    if config.checkpoint.best_mode not in ("", "min", "max"):
        raise ConfigError(f"config key 'checkpoint.best_mode': expected 'min', 'max' or '' "
                          f"(inferred from the metric), got {config.checkpoint.best_mode!r}")

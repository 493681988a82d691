"""Configs are data: a python file with ``get_config()``, overridden by ``--config.a.b=value``."""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections


class ConfigError(ValueError):
    pass


def load_config_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location("jaxvision_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    return module.get_config()


def _parse(text: str, current):
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


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
    """``config.a.b=value`` items; an unknown key is an error naming it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected --config.KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.removeprefix("--").removeprefix("config.")
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            fields = node.keys() if isinstance(node, (ml_collections.ConfigDict, dict)) else ()
            if part not in fields:
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

"""``jaxvision train | eval | predict | extract``."""
from __future__ import annotations

import argparse
import json
import math
import sys

from jaxvision.data.errors import DataError
from jaxvision.train.checkpoint import CheckpointWriteError, WorkdirError
from jaxvision.train.config import ConfigError, apply_overrides, load_config_file

ERRORS = (ConfigError, DataError, WorkdirError, CheckpointWriteError, FileNotFoundError, KeyError,
          ValueError)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _split(argv):
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


def _train(argv):
    p = argparse.ArgumentParser(prog="jaxvision train")
    p.add_argument("--config", required=True,
                   help="a python file defining get_config() (FILE.py:ARG calls get_config(ARG)) "
                        "or a run's config.json")
    p.add_argument("--workdir", required=True)
    rest, overrides = _split(argv)
    args = p.parse_args(rest)
    config = apply_overrides(load_config_file(args.config), overrides)
    from jaxvision.train import compile_cache
    from jaxvision.train.loop import NonFiniteLoss, train

    compile_cache.enable(config.get("compile_cache", ""))

    try:
        result = train(config, args.workdir)
    except NonFiniteLoss as e:
        print(f"jaxvision train: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result))
    return 0


def _eval(argv):
    p = argparse.ArgumentParser(prog="jaxvision eval")
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    from jaxvision.train.runs import evaluate_run

    print(json.dumps(evaluate_run(args.workdir)))
    return 0


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _predict(argv):
    p = argparse.ArgumentParser(prog="jaxvision predict")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a train workdir (its best checkpoint)")
    source.add_argument("--weights", help="a directory from 'jaxvision convert' or 'export': "
                                          "its recorded preprocessing and class names")
    p.add_argument("--topk", type=_positive, default=5)
    p.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="classification: probabilities are softmax(logits / T); above 1 "
                        "softer, below 1 sharper (default 1)")
    p.add_argument("--out", default=None,
                   help="segmentation/detection: folder for the pictures (default WORKDIR/predictions)")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    from jaxvision.train.runs import predict, predict_weights

    if args.weights:
        top_k = predict_weights(args.weights, args.images, args.topk, args.temperature)
        for path, top in zip(args.images, top_k):
            print(path + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in top))
        return 0
    for line in predict(args.workdir, args.images, args.topk, args.out, args.temperature):
        print(line)
    return 0


def _extract(argv):
    p = argparse.ArgumentParser(prog="jaxvision extract")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", choices=("train", "val"), default="val")
    p.add_argument("--out", required=True, help="an .npz file: embeddings, labels")
    args = p.parse_args(argv)
    from jaxvision.train.runs import extract

    n = extract(args.workdir, args.split, args.out)
    print(f"wrote {n} embeddings to {args.out}")
    return 0


COMMANDS = {"train": _train, "eval": _eval, "predict": _predict, "extract": _extract}


def main(command: str, argv) -> int:
    try:
        return COMMANDS[command](list(argv))
    except ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxvision {command}: error: {msg}", file=sys.stderr)
        return 2

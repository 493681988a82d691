"""The ``jaxvision`` command, every subcommand parsed here: list | info | convert | export share
one parser; train | eval | predict | extract each have their own, since they take ml_collections
``--config.KEY=VALUE`` overrides; bench is ``jaxvision.bench``'s (it imports no data stack).
Each command imports what it runs only when it runs, so ``jaxvision list`` stays light."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def _list(args):
    import jaxvision as jv

    for name in jv.list_models(args.pattern):
        print(name)


def _info(args):
    import os

    import jaxvision as jv
    from jaxvision.convert import card

    if os.path.isdir(args.name):  # a converted or exported directory: the card it records
        print(json.dumps(card.directory_card(args.name), indent=2))
        return
    print(json.dumps({"card": card.model_card(args.name),
                      "spec": jv.model_info(args.name).describe()}, indent=2))


def _convert(args):
    import jaxvision as jv
    from jaxvision.convert import store

    t0 = time.perf_counter()
    store.check_destination(args.out_dir)  # before minutes of loading, not after
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = jv.create_model(args.name, **kwargs)
    variables, report = jv.load_pretrained(args.name, args.src, strict=not args.partial,
                                           model=model, return_report=True)
    from jaxvision.convert import preprocess
    from jaxvision.registry import get_spec

    spec = get_spec(args.name)
    described = preprocess.describe(spec, args.src, args.weights, args.categories,
                                    model.num_classes)
    from jaxvision.convert import card, timm_hub

    tv_weights = (None if timm_hub.is_timm(args.src)
                  else preprocess.torchvision_weights(spec, args.src, args.weights))
    described["card"] = card.weights_card(args.name, str(args.src), described["preprocessing"],
                                          card.num_params(variables), tv_weights)
    out = store.save(args.out_dir, args.name, variables, {"num_classes": model.num_classes},
                     extra={"source": str(args.src), **described})
    print(report)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")


def _export(args):
    from jaxvision.train import export

    export.check_destination(args.format, args.out)
    item = (export.from_workdir(args.workdir) if args.workdir
            else export.from_weights_dir(args.weights))
    platforms = tuple(args.platforms.split(",")) if args.platforms else None
    out = export.write(item, args.format, args.out, platforms=platforms)
    print(f"wrote {out} " + (f"(step {item.step})" if item.step is not None
                             else f"(from {args.weights})"))


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
    from jaxvision.train.config import apply_overrides, load_config_file

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


RUN_COMMANDS = {"train": _train, "eval": _eval, "predict": _predict, "extract": _extract}


def _run_errors() -> tuple:
    """What a run command reports in one line (exit 2) rather than as a traceback."""
    from jaxvision.data.errors import DataError
    from jaxvision.train.checkpoint import CheckpointWriteError, WorkdirError
    from jaxvision.train.config import ConfigError

    return (ConfigError, DataError, WorkdirError, CheckpointWriteError, FileNotFoundError,
            KeyError, ValueError)


def _fail(command: str, e: Exception) -> int:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"jaxvision {command}: error: {msg}", file=sys.stderr)
    return 2


def run_command(command: str, argv) -> int:
    """``jaxvision train | eval | predict | extract`` with the arguments after the command."""
    errors = _run_errors()
    try:
        return RUN_COMMANDS[command](list(argv))
    except errors as e:
        return _fail(command, e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxvision", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="list model names")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*'")
    s.set_defaults(fn=_list)
    s = sub.add_parser("info", help="a model's card and spec (or a weights directory's card) "
                                    "as JSON")
    s.add_argument("name", help="a model name, or a directory from 'convert' or 'export'")
    s.set_defaults(fn=_info)
    s = sub.add_parser("convert", help="torchvision .pth or .safetensors -> jaxvision weights "
                                       "directory")
    s.add_argument("name")
    s.add_argument("src", help="torchvision state_dict file (.pth, or .safetensors in "
                               "torchvision's key names)")
    s.add_argument("out_dir", help="directory to create (must not exist or be empty)")
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--partial", action="store_true",
                   help="load every tensor whose name and shape fit; report the rest")
    s.add_argument("--weights", default=None,
                   help="torchvision weights name (e.g. IMAGENET1K_V2) whose preprocessing to "
                        "record; by default found from the file's download name")
    s.add_argument("--categories", default=None,
                   help="'imagenet' (shipped) or a text file with one class name per line")
    s.set_defaults(fn=_convert)
    s = sub.add_parser("export", help="a run's best weights (or a converted directory) -> a "
                                      "jaxvision weights directory, torchvision .safetensors, "
                                      "StableHLO or ONNX")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a train workdir (its best checkpoint, EMA if used)")
    source.add_argument("--weights", help="a directory from 'jaxvision convert' or 'export'")
    s.add_argument("--format", choices=("dir", "safetensors", "stablehlo", "onnx"), default="dir",
                   help="dir: a jaxvision weights directory (default); safetensors: one file in "
                        "torchvision's key names, for torch's load_state_dict(strict=True); "
                        "stablehlo: the eval forward (jax.export, symbolic batch) + weights + "
                        "a loader that needs only jax; onnx: the eval forward as ONNX (opset "
                        "18, symbolic batch, weights inside) + a loader that needs only "
                        "onnxruntime (classifiers and segmenters)")
    s.add_argument("--platforms", default=None,
                   help="stablehlo: the platforms to lower for, e.g. cpu,cuda (default: this "
                        "machine's)")
    s.add_argument("out", help="directory (dir, stablehlo, onnx) or file (safetensors) to create; "
                               "never overwritten")
    s.set_defaults(fn=_export)
    for name in RUN_COMMANDS:
        sub.add_parser(name, help=f"{name} (see 'jaxvision {name} --help')", add_help=False)
    sub.add_parser("bench", help="jaxvision vs torchvision images/s (see 'jaxvision bench "
                                 "--help')", add_help=False)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in RUN_COMMANDS:
        from jaxvision.host_memory import keep_freed_memory
        from jaxvision.layers import rng_lowering

        keep_freed_memory()  # bench sets it itself (scripts/bench.py too)
        rng_lowering.install()  # the command owns the process: every draw by the custom call
        return run_command(argv[0], argv[1:]) or 0
    if argv and argv[0] == "bench":  # imports no data stack: runs on a bare accelerator box
        from jaxvision import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        return _fail(args.command, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())

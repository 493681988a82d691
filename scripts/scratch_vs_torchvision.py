"""A from-scratch resnet18 run on a 32-px image folder: ``jaxvision train`` against the same
recipe written as a plain torchvision script (issue 20's first benchmark).

1. Writes a deterministic image folder ``WORKDIR/data/{train,val}/<class>/*.png``: jaxvision's
   ``shapes`` examples (six shape kinds on random gradients, 32x32) as PNG files,
   ``--num-images`` for train and a sixth of that for val.
2. Runs ``jaxvision train --config configs/scratch_imagefolder.py`` on it (a subprocess; the
   config does not mention the convolution lowering: the library's default is measured).
3. Runs the torchvision script (a subprocess of this file, ``--torch-worker``) built from the
   same config values: ``ImageFolder`` + ``RandomHorizontalFlip/ToTensor/Normalize`` +
   ``DataLoader(shuffle, drop_last, same num_workers)``, ``resnet18(num_classes=K)``, SGD (same
   lr / momentum / weight decay), ``CosineAnnealingLR`` stepped per step over the same number
   of steps, evaluation on val after every epoch and a checkpoint (``torch.save``) per epoch.
4. Prints wall seconds, CPU seconds (user + sys of the subprocess and its workers,
   ``RUSAGE_CHILDREN``), val top-1 and the ratio jaxvision / torch, with ``uptime``'s load
   before and after each run: on a shared machine, a ratio is only as good as the load was equal.

The same work on both sides, checked and printed under the table: the same number of train steps
(each side reports its own count), the same ``num_workers``, an evaluation of the whole val
split and a checkpoint of model + optimizer (+ schedule) after every epoch, torch's intra-op
threads = the CPUs XLA's pool uses (``os.cpu_count()``). What differs, beyond the library:
jaxvision compiles its steps first (the persistent compile cache, on by default, makes a
rerun's compile a cache read; the first-step time is printed), pads its last eval batch to the
eval batch size (a fixed shape: 200 val images run as 256), keeps the best checkpoint beside
the last ``checkpoint.keep`` and writes TensorBoard scalars, sample images and
``metrics.jsonl`` per evaluation (its defaults): work torch's script does not do.

    PYTHONPATH=. python scripts/scratch_vs_torchvision.py --workdir /tmp/scratch_cmp
    PYTHONPATH=. python scripts/scratch_vs_torchvision.py --epochs 1 --num-images 256 --skip-torch
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "scratch_imagefolder.py")
NUM_CLASSES = 6  # all of shapes' kinds


def write_folder(root: str, num_train: int, num_val: int, image_size: int = 32,
                 num_classes: int = NUM_CLASSES) -> dict:
    """Writes ``root/train`` and ``root/val`` (shapes seeds 0 and 1); returns the counts."""
    from PIL import Image

    from jaxvision.data.shapes import ShapesSource

    counts = {}
    for split, n, seed in (("train", num_train, 0), ("val", num_val, 1)):
        src = ShapesSource(n, num_classes, image_size, seed)
        for name in src.class_names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i in range(n):
            ex = src[i]
            Image.fromarray(ex["image"]).save(
                os.path.join(root, split, src.class_names[int(ex["label"])], f"{i:05d}.png"))
        counts[split] = n
    return counts


def load_config(epochs: int | None, overrides=()):
    """The config with the run's overrides, as ``jaxvision train`` reads them."""
    from jaxvision.train.config import apply_overrides, load_config_file

    c = apply_overrides(load_config_file(CONFIG), list(overrides))
    if epochs is not None:
        c.train.epochs = epochs
    return c


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def timed(cmd: list[str], log_path: str, env=None) -> dict:
    """Runs ``cmd`` to the end, its output to ``log_path``; wall and CPU (its process tree)
    seconds, the output's last line (a JSON result), load."""
    before, r0, t0 = load(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); its log: {log_path}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    with open(log_path) as f:
        text = f.read()
    return {"wall": wall, "cpu": cpu, "text": text, "load_before": before, "load_after": load(),
            "result": json.loads(text.strip().splitlines()[-1])}


def run_jaxvision(data_root: str, workdir: str, epochs: int, extra: list[str]) -> dict:
    run_dir = os.path.join(workdir, "jaxvision_run")
    shutil.rmtree(run_dir, ignore_errors=True)
    log_path = os.path.join(workdir, "jaxvision.log")
    cmd = [sys.executable, "-m", "jaxvision.cli", "train", "--config", CONFIG,
           "--workdir", run_dir, f"--config.data.imagefolder.root={data_root}",
           f"--config.train.epochs={epochs}", "--config.logging.progress_bar=False", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    r = timed(cmd, log_path, env)
    first = re.search(r"first train step done ([\d.]+) s", r["text"])
    r.update(top1=r["result"]["val_top1"], log=log_path,
             first_step=float(first.group(1)) if first else float("nan"),
             curve=[float(v) for v in re.findall(r"epoch \d+: .*?val_top1=([\d.]+)", r["text"])])
    return r


def recipe(epochs: int, overrides=()) -> dict:
    """The config's values the torch script needs, overrides applied (read here: the worker
    does not import jaxvision, whose jax import would count against torch's time)."""
    c = load_config(epochs, overrides)
    d, o = c.data, c.optimizer
    if (o.name, c.schedule.name, c.schedule.unit, d.augment.random_resized_crop) != (
            "sgd", "cosine", "step", False) or c.schedule.warmup.length or c.train.label_smoothing:
        sys.exit(f"{CONFIG} changed its recipe: update torch_train to match")
    return dict(epochs=epochs, seed=c.train.seed, hflip=d.augment.hflip,
                image_size=d.image_size, resize_size=d.resize_size, batch=d.batch_size,
                eval_batch=d.eval_batch_size, workers=d.num_workers, lr=o.lr,
                momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


def run_torch(data_root: str, workdir: str, epochs: int, overrides, threads: int = 0) -> dict:
    log_path = os.path.join(workdir, "torch.log")
    r = {**recipe(epochs, overrides), "threads": threads}
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", data_root,
           "--workdir", workdir, "--recipe", json.dumps(r)]
    r = timed(cmd, log_path)
    r.update(top1=r["result"]["val_top1"], curve=r["result"]["curve"], log=log_path,
             first_step=r["result"]["first_step"], threads=r["result"]["threads"])
    return r


def torch_train(data_root: str, workdir: str, r: dict) -> dict:
    """The plain torchvision script, every hyper-parameter from the jaxvision config."""
    import torch
    import torchvision
    from torchvision import transforms as T

    epochs = r["epochs"]
    if r.get("threads"):
        torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    # jaxvision normalises with the model's mean / std: torchvision's ImageNet figures
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = T.Compose(([T.RandomHorizontalFlip()] if r["hflip"] else [])
                         + [T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(r["resize_size"]), T.CenterCrop(r["image_size"]),
                         T.ToTensor(), norm])
    train_set = torchvision.datasets.ImageFolder(os.path.join(data_root, "train"), train_tf)
    val_set = torchvision.datasets.ImageFolder(os.path.join(data_root, "val"), eval_tf)
    train_loader = torch.utils.data.DataLoader(train_set, r["batch"], shuffle=True,
                                               drop_last=True, num_workers=r["workers"])
    val_loader = torch.utils.data.DataLoader(val_set, r["eval_batch"],
                                             num_workers=r["workers"])
    model = torchvision.models.resnet18(num_classes=len(train_set.classes))
    opt = torch.optim.SGD(model.parameters(), r["lr"], momentum=r["momentum"],
                          weight_decay=r["weight_decay"], nesterov=r["nesterov"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(train_loader))
    loss_fn = torch.nn.CrossEntropyLoss()
    curve, first_step, t0 = [], None, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if first_step is None:
                first_step = time.perf_counter() - t0
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        curve.append(correct / total)
        print(f"epoch {epoch + 1}: val_top1={curve[-1]:.4f} loss={loss.item():.4f}",
              flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "lr_scheduler": sched.state_dict(), "epoch": epoch},
                   os.path.join(workdir, "torch_checkpoint.pth"))
    return {"val_top1": curve[-1], "curve": curve, "first_step": first_step,
            "threads": torch.get_num_threads(), "step": epochs * len(train_loader)}


def same_work(rows: dict) -> str:
    """The line that says whether both sides did the same work (see the module's docstring)."""
    steps = {name: r["result"]["step"] for name, r in rows.items()}
    line = ("same work: train steps " + ", ".join(f"{k} {v}" for k, v in steps.items())
            + ("" if len(set(steps.values())) == 1 else "  <- DIFFERENT")
            + "; both: eval of the whole val split + a checkpoint every epoch, the config's "
            "num_workers")
    if "torch" in rows:
        threads = rows["torch"]["threads"]
        line += (f"; torch intra-op threads {threads}, XLA:CPU's pool {os.cpu_count()} CPUs"
                 + ("" if threads == os.cpu_count() else "  <- DIFFERENT (--torch-threads)"))
    return line


def table(rows: dict) -> str:
    lines = [f"{'':10} {'wall s':>8} {'CPU s':>8} {'1st step s':>10} {'val top-1':>9}  "
             f"load before -> after (1/5/15 min)"]
    for name, r in rows.items():
        lines.append(f"{name:10} {r['wall']:8.1f} {r['cpu']:8.1f} {r['first_step']:10.1f} "
                     f"{r['top1']:9.4f}  {r['load_before']} -> {r['load_after']}")
    if len(rows) == 2:
        j, t = rows["jaxvision"], rows["torch"]
        lines.append(f"{'ratio j/t':10} {j['wall'] / t['wall']:8.2f} {j['cpu'] / t['cpu']:8.2f}"
                     f" {'':10} {j['top1'] - t['top1']:+9.4f}  (wall and CPU: <= 1.0 is "
                     "jaxvision as fast or faster; top-1: the difference)")
    lines.append("wall: the subprocess from start to exit (imports, data, compile, every epoch's "
                 "eval and checkpoint); CPU: user + sys of it and its workers; 1st step: from "
                 "the training loop's start to its first step's end (jaxvision: compilation or "
                 "a compile-cache read)")
    lines.append(same_work(rows))
    for name, r in rows.items():
        lines.append(f"{name} val top-1 per epoch: " + " ".join(f"{v:.3f}" for v in r["curve"])
                     + f"   (log: {r['log']})")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="", help="where the folder, runs and logs go "
                   "(default: a new temporary directory, kept)")
    p.add_argument("--epochs", type=int, default=None, help="default: the config's (15)")
    p.add_argument("--num-images", type=int, default=1200,
                   help="train images (val: a sixth of it; default 1200 + 200)")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-jaxvision", action="store_true")
    p.add_argument("--torch-first", action="store_true",
                   help="run torch before jaxvision (swap the order between reruns: load drifts)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch.set_num_threads (default: torch's own, one per core); on a "
                   "loaded machine torch's OpenMP threads lose far more than XLA's pool")
    p.add_argument("--torch-worker", metavar="DATA", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="--config.X=Y overrides (after --), for both "
                   "sides: the torch script reads the same values")
    args = p.parse_args(argv)
    if args.torch_worker:
        print(json.dumps(torch_train(args.torch_worker, args.workdir, json.loads(args.recipe))))
        return
    if args.num_images < 64 + 6:
        p.error(f"--num-images must be >= 70 (one batch of 64 and a val image per class), "
                f"got {args.num_images}")
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="scratch_vs_tv_"))
    c = load_config(args.epochs, args.overrides)
    epochs = c.train.epochs
    data_root = os.path.join(workdir, "data")
    shutil.rmtree(data_root, ignore_errors=True)
    counts = write_folder(data_root, args.num_images, max(args.num_images // 6, NUM_CLASSES))
    if not args.skip_torch:
        recipe(epochs, args.overrides)  # a recipe torch_train does not match stops here
    print(f"{data_root}: {counts['train']} train + {counts['val']} val 32x32 PNGs, "
          f"{NUM_CLASSES} classes; {epochs} epochs of {counts['train'] // c.data.batch_size} "
          f"steps at batch {c.data.batch_size}, num_workers {c.data.num_workers}; "
          f"{os.cpu_count()} CPUs", flush=True)
    runs = [] if args.skip_jaxvision else ["jaxvision"]
    if not args.skip_torch:
        runs.insert(0 if args.torch_first else len(runs), "torch")
    rows = {}
    for name in runs:
        print(f"running {name}...", flush=True)
        rows[name] = (run_jaxvision(data_root, workdir, epochs, args.overrides)
                      if name == "jaxvision" else
                      run_torch(data_root, workdir, epochs, args.overrides, args.torch_threads))
    print(table({k: rows[k] for k in ("jaxvision", "torch") if k in rows}))


if __name__ == "__main__":
    main()

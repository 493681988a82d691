"""``jaxvision bench``: train-step and inference throughput of jaxvision and torchvision.

    jaxvision bench --model resnet50 --image-size 224 --batch 16
    jaxvision bench --model vit_b_16 --device gpu --dtype bfloat16 --batch 256 --torch compile

Both sides run the same model, batch and step: SGD with momentum, cross-entropy (plus the aux
heads' terms for googlenet/inception), BatchNorm on batch statistics. jax runs the real train
step of ``jaxvision.train.step`` (jitted over a one-device mesh, donated state, no host sync
per step); torch runs eager, ``channels_last`` and, if asked, ``torch.compile``. Ratios are
jax / torch eager. Timing starts after compilation and warm-up and ends once the device is idle.
With ``--rounds R`` every side is timed R times, the sides taking turns, and each ratio is the
median of the per-round ratios: on a shared machine whose speed drifts over minutes, both sides
of a round see the same machine.
The compiled step's FLOPs come from XLA's cost analysis; on a GPU with a known peak they give
TFLOP/s and MFU.

Imports only jax, flax, optax, numpy, torch and jaxvision's models and train step (no grain,
tfds or ml_collections), so it runs on an accelerator box without the data stack.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

TORCH_VARIANTS = ("eager", "channels_last", "compile")

# Dense peak TFLOP/s per device: (bfloat16, float32). float32 is the TF32 tensor-core figure,
# what XLA uses for float32 matmuls and convolutions on these GPUs at default precision.
# Longest key first: "H100 PCIe" must match before "H100".
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.7),   # SXM / HBM3
    "H200": (989.0, 494.7),
    "A100": (312.0, 156.0),
}


def peak_tflops(device_kind: str, dtype: str):
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_kind.lower():
            return PEAK_TFLOPS[key][0 if dtype == "bfloat16" else 1]
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="jaxvision bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations after compiling")
    p.add_argument("--rounds", type=int, default=1,
                   help="time every side this many times, the sides taking turns (jax, each "
                        "torch variant, jax...); rates are the median round's, ratios the "
                        "median of the per-round ratios")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (params stay float32; torch uses autocast)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--torch", default="eager,channels_last",
                   help=f"comma-separated torch variants among {','.join(TORCH_VARIANTS)} "
                        "('' for none; compile can take minutes on a CPU)")
    p.add_argument("--only", choices=("jax", "torch"), default=None, help="run one side only")
    p.add_argument("--compile-cache", default="",
                   help="a directory for jax's persistent compilation cache (default off, so "
                        "the compile time is a cold one)")
    p.add_argument("--compile-only", action="store_true",
                   help="jax side only: build and compile the train step, report its time, stop")
    p.add_argument("--lowering", choices=("auto", "xla"), default="auto",
                   help="jaxvision's CPU convolution lowering (a run's config.conv_lowering): "
                        "'auto', the library default, or 'xla', XLA's own convolution "
                        "everywhere")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    a = p.parse_args(argv)
    for field in ("batch", "image_size", "steps", "num_classes", "rounds"):
        if getattr(a, field) < 1:
            p.error(f"--{field.replace('_', '-')} must be >= 1, got {getattr(a, field)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    a.torch_variants = tuple(v for v in a.torch.split(",") if v)
    bad = [v for v in a.torch_variants if v not in TORCH_VARIANTS]
    if bad:
        p.error(f"--torch: unknown variant(s) {bad}; choose among {TORCH_VARIANTS}")
    return a


def _timed(fn, steps, sync, cores=None, key=""):
    """Wall seconds of ``steps`` calls; ``cores[key]``: the process's CPU seconds per wall
    second meanwhile (how many cores the step keeps busy, host threads of all pools)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    sync()
    wall = time.perf_counter() - t0
    if cores is not None:
        cores[key] = (time.process_time() - c0) / wall
    return wall


def _model_kwargs(a, family):
    return {"image_size": a.image_size} if family == "vit" else {}


def _flops(compiled):
    """FLOPs of one call from XLA's cost analysis (None where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning nothing
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def bench_jax(a):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxvision as jv
    from jaxvision.train.state import TrainState
    from jaxvision.train.step import make_mesh, make_train_step, shard_batch

    from jaxvision.layers import lowering, rng_lowering

    device = jax.devices("cpu" if a.device == "cpu" else None)[0]
    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    spec = jv.model_info(a.model)
    model = jv.create_model(a.model, num_classes=a.num_classes, dtype=dtype,
                            **_model_kwargs(a, spec.family))
    r = np.random.RandomState(0)
    images = r.randn(a.batch, a.image_size, a.image_size, 3).astype(np.float32)
    labels = r.randint(0, a.num_classes, a.batch).astype(np.int32)
    mesh = make_mesh([device])
    batch = shard_batch(mesh, {"image": images, "label": labels})
    tx = optax.sgd(0.01, momentum=0.9)
    from jax.sharding import NamedSharding, PartitionSpec as P

    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    # the device's platform, not the default backend's: --device cpu on a GPU machine
    jit = functools.partial(lowering.jit, conv_lowering=a.lowering, platform=device.platform)
    variables = rng_lowering.call(
        jit(lambda k: model.init(k, jnp.zeros((1, *images.shape[1:])), train=False),
            out_shardings=repl), jax.random.key(0))
    state = TrainState.create(variables, tx, seed=0, ema=False)
    step = jit(make_train_step(model, tx, a.num_classes), in_shardings=(repl, data),
               out_shardings=(repl, repl), donate_argnums=0)

    t = time.perf_counter()
    lowered = step.lower(state, batch)
    lower_s = time.perf_counter() - t
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t - lower_s
    meta = {"trace_lower_s": lower_s, "compile_s": compile_s, "device": device.device_kind,
            "platform": device.platform}
    if a.compile_only:
        return meta, {}
    holder = [state]

    def train_once():
        holder[0], _ = compiled(holder[0], batch)

    infer = jit(lambda v, x: model.apply(v, x, train=False))
    # copies: the train step donates the state's buffers while inference blocks alternate
    v = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})
    if not v["batch_stats"]:
        v.pop("batch_stats")
    t = time.perf_counter()
    infer_c = infer.lower(v, batch["image"]).compile()
    meta["infer_compile_s"] = time.perf_counter() - t
    out = [None]

    def infer_once():
        out[0] = infer_c(v, batch["image"])

    peak = peak_tflops(device.device_kind, a.dtype) if device.platform == "gpu" else None
    for what, c in (("train", compiled), ("infer", infer_c)):
        flops = _flops(c)
        if flops:
            meta[f"{what}_gflop_per_step"] = flops / 1e9
    if peak:
        meta["peak_tflops"] = peak
    warm = max(a.warmup, 1)
    blocks = {"train": (train_once, lambda: jax.block_until_ready(holder[0]), None, warm),
              "infer": (infer_once, lambda: jax.block_until_ready(out[0]), None, warm)}
    return meta, blocks


def _add_flop_rates(res):
    """TFLOP/s (and MFU where the peak is known) from the GFLOP per step and the step times."""
    for what in ("train", "infer"):
        if f"{what}_gflop_per_step" in res:
            res[f"{what}_tflops"] = res[f"{what}_gflop_per_step"] / res[f"{what}_step_ms"]
            if "peak_tflops" in res:
                res[f"{what}_mfu"] = res[f"{what}_tflops"] / res["peak_tflops"]


def bench_torch(a, variant):
    import torch
    import torchvision

    import jaxvision as jv

    spec = jv.model_info(a.model)
    if spec.torch_name is None:
        return None
    dev = torch.device("cuda" if a.device == "gpu" else "cpu")
    if a.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: torch sees no CUDA device")
    torch.manual_seed(0)
    model = getattr(torchvision.models, spec.torch_name)(num_classes=a.num_classes,
                                                         **_model_kwargs(a, spec.family))
    fmt = torch.contiguous_format if variant == "eager" else torch.channels_last
    model = model.to(dev).to(memory_format=fmt)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=dev).to(memory_format=fmt)
    y = torch.randint(0, a.num_classes, (a.batch,), device=dev)
    run = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
    sync = (torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))
    ce = torch.nn.functional.cross_entropy
    # the same aux-head weights as jaxvision's step (torchvision's references)
    aux = {"aux_logits": 0.4, "aux_logits1": 0.3, "aux_logits2": 0.3}

    def train_once():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            out = run(x)
            logits = out.logits if hasattr(out, "logits") else out
            loss = ce(logits.float(), y)
            for name, w in aux.items():
                if getattr(out, name, None) is not None:
                    loss = loss + w * ce(getattr(out, name).float(), y)
        loss.backward()
        opt.step()

    model.train()
    t = time.perf_counter()
    train_once()
    sync()
    first_s = time.perf_counter() - t

    def infer_once():
        with torch.inference_mode(), torch.autocast(**amp):
            run(x)

    meta = {"first_step_s": first_s, "device": str(dev), "threads": torch.get_num_threads()}
    blocks = {"train": (train_once, sync, model.train, a.warmup),
              "infer": (infer_once, sync, model.eval,
                        max(a.warmup, 1 if variant == "compile" else 0))}
    return meta, blocks


def _time_sides(a, sides: dict) -> dict:
    """Each side's blocks (train, then inference) timed over ``a.steps`` calls, ``a.rounds``
    times, the sides taking turns within each round: a machine whose speed drifts moves every
    side of a round alike. Per side: images/s of the median round, the per-round figures, and
    the cores kept busy in the last."""
    for blocks in sides.values():  # warm-up, once
        for once, sync, mode, warm in blocks.values():
            if mode is not None:
                mode()
            for _ in range(warm):
                once()
            sync()
    walls = {name: {what: [] for what in blocks} for name, blocks in sides.items()}
    cores = {name: {} for name in sides}
    for _ in range(a.rounds):
        for name, blocks in sides.items():
            for what, (once, sync, mode, _) in blocks.items():
                if mode is not None:
                    mode()
                walls[name][what].append(
                    _timed(once, a.steps, sync, cores[name], f"{what}_cores_busy"))
    out = {}
    for name, per in walls.items():
        r = dict(cores[name])
        for what, w in per.items():
            wall = statistics.median(w)
            r[what] = a.batch * a.steps / wall
            r[f"{what}_step_ms"] = 1e3 * wall / a.steps
            r[f"{what}_rounds"] = [a.batch * a.steps / x for x in w]
        out[name] = r
    return out


def run(a) -> dict:
    """Both sides' figures and the ratios jax / torch for each torch variant."""
    import jaxvision as jv

    if a.model not in jv.list_models():
        raise SystemExit(f"--model {a.model!r}: not a jaxvision model (see `jaxvision list`)")
    res = {"config": {k: getattr(a, k) for k in ("model", "batch", "image_size", "dtype",
                                                 "device", "steps", "warmup", "lowering",
                                                 "rounds", "freed_memory_kept")},
           "load_average": list(os.getloadavg()), "torch": {}, "ratio": {}}
    sides, meta = {}, {}
    if a.only != "torch":
        meta["jax"], sides["jax"] = bench_jax(a)
        if a.compile_only:
            res["jax"] = meta["jax"]
            return res
    if a.only != "jax":
        for variant in a.torch_variants:
            built = bench_torch(a, variant)
            if built is not None:
                meta[variant], sides[variant] = built
    timed = _time_sides(a, sides)
    for name, figures in timed.items():
        side = {**meta[name], **figures}
        _add_flop_rates(side)
        if name == "jax":
            res["jax"] = side
        else:
            res["torch"][name] = side
    for variant, t in res["torch"].items():
        if "jax" in res:  # round by round: both sides of a ratio ran minutes apart at most
            res["ratio"][variant] = {w: statistics.median([j / x for j, x in zip(
                res["jax"][f"{w}_rounds"], t[f"{w}_rounds"])]) for w in ("train", "infer")}
    return res


def report(res) -> str:
    c = res["config"]
    lines = [f"{c['model']}  batch {c['batch']}  {c['image_size']}px  {c['dtype']}  "
             f"device {c['device']}  lowering {c.get('lowering', 'xla')}  "
             f"steps {c['steps']} (+{c['warmup']} warm-up) x {c.get('rounds', 1)} rounds  "
             f"load average {' '.join(f'{v:.2f}' for v in res['load_average'])}"]
    if c.get("freed_memory_kept"):
        lines.append("malloc keeps freed memory for every side (jaxvision.host_memory; "
                     "JAXVISION_KEEP_FREED_MEMORY=0: glibc's defaults)")
    cols = (["jaxvision"] if "jax" in res else []) + [f"torch {v}" for v in res["torch"]]
    lines.append(f"{'images/s':<12}" + "".join(f"{h:>22}" for h in cols))
    for what, label in (("train", "train step"), ("infer", "inference")):
        if "jax" in res and what not in res["jax"]:  # --compile-only
            continue
        cells = [f"{res['jax'][what]:.2f}"] if "jax" in res else []
        for variant, t in res["torch"].items():
            ratio = res["ratio"].get(variant, {}).get(what)
            cells.append(f"{t[what]:.2f}" + (f" ({ratio:.2f}x)" if ratio else ""))
        lines.append(f"{label:<12}" + "".join(f"{v:>22}" for v in cells))
    lines.append("(x): jaxvision / that torch variant")
    if "jax" in res:
        j = res["jax"]
        infer = f" (inference {j['infer_compile_s']:.1f}s)" if "infer_compile_s" in j else ""
        if "train_cores_busy" in j:
            lines.append(f"jax: CPU cores busy: train {j['train_cores_busy']:.2f}, "
                         f"inference {j['infer_cores_busy']:.2f}")
        lines.append(f"jax: train step trace+lower {j['trace_lower_s']:.1f}s, compile "
                     f"{j['compile_s']:.1f}s{infer} on {j['device']}")
        for what in ("train", "infer"):
            if f"{what}_tflops" in j:
                mfu = f", MFU {100 * j[what + '_mfu']:.1f}%" if f"{what}_mfu" in j else ""
                lines.append(f"jax {what}: {j[what + '_gflop_per_step']:.1f} GFLOP/step, "
                             f"{j[what + '_tflops']:.3f} TFLOP/s{mfu}")
    for variant, t in res["torch"].items():
        lines.append(f"torch {variant}: first train step {t['first_step_s']:.1f}s, "
                     f"{t['threads']} threads, CPU cores busy: train "
                     f"{t['train_cores_busy']:.2f}, inference {t['infer_cores_busy']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    from jaxvision.host_memory import keep_freed_memory

    # as jaxvision's training runs: both sides share this process and so its malloc settings
    a.freed_memory_kept = keep_freed_memory()
    if a.device == "cpu":  # before jax initialises a backend: keep it off any accelerator
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.compile_cache:
        from jaxvision.train import compile_cache

        compile_cache.enable(a.compile_cache)
    res = run(a)
    print(report(res))
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0

"""Train-step and inference throughput of jaxvision and torchvision, side by side.

    python scripts/bench.py --model resnet50 --batch 32 --image-size 224 --steps 20 --warmup 3
    python scripts/bench.py --device gpu --dtype bfloat16 --torch-compile

Both sides run the same model, batch and step: SGD with momentum, cross-entropy, BatchNorm on
batch statistics (train mode). jax: one jitted step with donated buffers; torch: eager (or
``torch.compile``). Timing starts after compilation/warm-up and ends once the device is idle.
Imports only jax, flax, optax, numpy, torch, torchvision and jaxvision's models, so it also runs
on an accelerator box without the data stack.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations after compiling")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (params stay float32; torch uses autocast)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--torch-compile", action="store_true", help="torch.compile the torch model")
    p.add_argument("--channels-last", action="store_true", help="torch memory_format")
    p.add_argument("--only", choices=("jax", "torch"), default=None, help="run one side only")
    a = p.parse_args(argv)
    for field in ("batch", "image_size", "steps"):
        if getattr(a, field) < 1:
            p.error(f"--{field.replace('_', '-')} must be >= 1, got {getattr(a, field)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    return a


def _timed(fn, warmup, steps, sync):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - t0


def bench_jax(a):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxvision as jv

    device = jax.devices("cpu" if a.device == "cpu" else None)[0]
    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    model = jv.create_model(a.model, num_classes=a.num_classes, dtype=dtype)
    r = np.random.RandomState(0)
    x = jax.device_put(r.randn(a.batch, a.image_size, a.image_size, 3).astype(np.float32), device)
    y = jax.device_put(r.randint(0, a.num_classes, a.batch).astype(np.int32), device)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))()
    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables["params"], variables.get("batch_stats", {}),
             tx.init(variables["params"]))

    def loss_fn(params, batch_stats, rng):
        out, mut = model.apply({"params": params, "batch_stats": batch_stats}, x.astype(dtype),
                               train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32), y)
        return loss.mean(), mut.get("batch_stats", {})

    def train_step(state, rng):
        params, batch_stats, opt_state = state
        (_, batch_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, rng)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    step_fn = jax.jit(train_step, donate_argnums=(0,))
    rng = jax.random.PRNGKey(1)
    holder = [state]
    t = time.perf_counter()
    holder[0] = step_fn(holder[0], rng)
    jax.block_until_ready(holder[0])
    compile_train = time.perf_counter() - t

    def train_once():
        holder[0] = step_fn(holder[0], rng)

    sync = lambda: jax.block_until_ready(holder[0])  # noqa: E731
    train_s = _timed(train_once, a.warmup, a.steps, sync)

    infer = jax.jit(lambda v, x: model.apply(v, x.astype(dtype), train=False))
    params, batch_stats, _ = holder[0]
    v = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    out = [infer(v, x)]
    jax.block_until_ready(out[0])

    def infer_once():
        out[0] = infer(v, x)

    infer_s = _timed(infer_once, a.warmup, a.steps, lambda: jax.block_until_ready(out[0]))
    return {"train": a.batch * a.steps / train_s, "infer": a.batch * a.steps / infer_s,
            "compile_s": compile_train, "device": str(device)}


def bench_torch(a):
    import torch
    import torchvision

    dev = torch.device("cuda" if a.device == "gpu" else "cpu")
    if a.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu: torch sees no CUDA device")
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)(num_classes=a.num_classes).to(dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=dev).to(memory_format=fmt)
    y = torch.randint(0, a.num_classes, (a.batch,), device=dev)
    run = torch.compile(model) if a.torch_compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")
    sync = (torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))

    def train_once():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            out = run(x)
            logits = out.logits if hasattr(out, "logits") else out  # googlenet/inception aux
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()

    model.train()
    t = time.perf_counter()
    train_once()
    sync()
    compile_train = time.perf_counter() - t
    train_s = _timed(train_once, a.warmup, a.steps, sync)

    model.eval()

    def infer_once():
        with torch.inference_mode(), torch.autocast(**amp):
            run(x)

    infer_s = _timed(infer_once, max(a.warmup, 1 if a.torch_compile else 0), a.steps, sync)
    return {"train": a.batch * a.steps / train_s, "infer": a.batch * a.steps / infer_s,
            "compile_s": compile_train, "device": str(dev),
            "threads": torch.get_num_threads()}


def main(argv=None):
    a = parse_args(argv)
    if a.device == "cpu":  # before jax is imported: keep it off any accelerator
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jaxvision as jv

    if a.model not in jv.list_models():
        raise SystemExit(f"--model {a.model!r}: not a jaxvision model "
                         f"(see `jaxvision list`)")
    res = {}
    if a.only != "torch":
        res["jax"] = bench_jax(a)
    if a.only != "jax":
        res["torch"] = bench_torch(a)
    print(f"\n{a.model}  batch {a.batch}  {a.image_size}px  {a.dtype}  device {a.device}  "
          f"steps {a.steps} (+{a.warmup} warm-up)"
          + ("  torch.compile" if a.torch_compile else ""))
    print(f"{'images/s':<18}{'jaxvision':>12}{'torchvision':>14}{'jax/torch':>12}")
    for what, label in (("train", "train step"), ("infer", "inference")):
        j = res.get("jax", {}).get(what)
        t = res.get("torch", {}).get(what)
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        ratio = f"{j / t:.2f}x" if j and t else "-"
        print(f"{label:<18}{fmt(j):>12}{fmt(t):>14}{ratio:>12}")
    for side, r in res.items():
        print(f"{side}: first train step (compile) {r['compile_s']:.1f}s on {r['device']}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""How fast JPEG image folders become batches: one core, then the loaders.

Writes ``--num-images`` JPEGs of ImageNet's typical size (500x375, smooth random content plus
noise, quality 90) into a temporary ``root/{train,val}/<class>/`` folder and times

* one core, one image at a time: decode + the train transform (RandomResizedCrop 224 + flip, to
  uint8) and decode + the eval transform (resize 256 + centre crop 224);
* the train loader (grain worker processes) and the eval loader (threads) with
  ``--workers`` (default 0 and 2), batch 32.

One-core figures are given per wall second and per CPU second of this process (the second is
the per-core rate, and holds on a busy machine); loaders per wall second, after their first
batch (start-up printed apart). The load average is printed before and after.

    PYTHONPATH=. python scripts/data_bench.py --num-images 256
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image


def write_images(root: str, n: int, seed: int = 0, size=(500, 375)):
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n):
            d = os.path.join(root, split, f"class_{i % 2}")
            os.makedirs(d, exist_ok=True)
            coarse = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
            smooth = np.asarray(coarse.resize(size, Image.BICUBIC), np.float32)
            img = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)


def timed(fn, n):
    """(images per wall second, images per CPU second of this process) of ``fn(i)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return n / wall, n / max(cpu, 1e-9)


def loader_rate(make_iter, num_images: int, batch: int):
    """(start-up seconds to the first batch, images per wall second after it)."""
    t0 = time.perf_counter()
    it = make_iter()
    next(it)
    first = time.perf_counter() - t0
    t1, seen = time.perf_counter(), 0
    for _ in range(num_images // batch - 1):
        seen += len(next(it)["label"])
    return first, seen / max(time.perf_counter() - t1, 1e-9)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args(argv)

    from jaxvision.data import default_data_config
    from jaxvision.tasks import build_data

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as root:
        write_images(root, a.num_images)
        c = default_data_config()
        c.source = "imagefolder"
        c.imagefolder.root = root
        c.update(image_size=224, resize_size=256, batch_size=a.batch, eval_batch_size=a.batch)
        data = build_data(c, "resnet50")
        train_t, eval_t = data.train_transform(), data.eval_transform()
        src, val = data.train_source, data.val_source
        rng = np.random.default_rng(0)
        n = a.num_images
        rows = [
            ("decode only", timed(lambda i: src[i], n)),
            ("decode + RRC 224 + flip", timed(lambda i: train_t.random_map(src[i], rng), n)),
            ("decode + resize 256 + crop 224", timed(lambda i: eval_t.map(val[i]), n)),
        ]
        print(f"one core, {n} JPEGs 500x375 q90 -> uint8 224x224:")
        for name, (wall, cpu) in rows:
            print(f"  {name:32s} {wall:7.1f} img/s wall  {cpu:7.1f} img/s per CPU second")
        for w in a.workers:
            c.num_workers = w
            d = build_data(c, "resnet50")
            first, rate = loader_rate(lambda: iter(d.train_loader(seed=0)), n, a.batch)
            print(f"  train loader num_workers={w}: {rate:7.1f} img/s "
                  f"(first batch after {first:.2f} s)")
            first, rate = loader_rate(lambda: iter(d.eval_loader()), n, a.batch)
            print(f"  eval loader  num_workers={w}: {rate:7.1f} img/s "
                  f"(first batch after {first:.2f} s)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

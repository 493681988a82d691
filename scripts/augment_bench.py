"""Train-data throughput at 224 px with TrivialAugmentWide + RandomErasing 0.1 (torchvision's
ResNet-50 V2 recipe), jaxvision against torchvision, side by side in one process:

* ``transform``: one core, the train transform alone on decoded PIL images;
* ``loader``: JPEG folder -> batches of 32, jaxvision's train loader (grain worker processes)
  against torchvision's ``ImageFolder`` + ``DataLoader`` with the same transforms and the same
  number of worker processes; images/s per worker is the rate over ``num_workers``.

The two pipelines alternate within each round (and swap order every round), so a load change
on a shared machine hits both alike; read the ratio column first. The load average is printed
with each round.

    PYTHONPATH=. python scripts/augment_bench.py --mode loader --workers 1 2 --rounds 3

jaxvision's worker stops at uint8 plus a 4-int erasing box (the step normalises and paints the
box on the device); torchvision's does PILToTensor + float + Normalize + RandomErasing on the
host, as its reference's workers do.
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from jaxvision.data.erasing import RandomErasing
from jaxvision.data.policies import TrivialAugmentWide
from jaxvision.data.transforms import TrainTransform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tv_transform():
    """torchvision's ClassificationPresetTrain(crop 224, bilinear, ta_wide, random_erase 0.1)."""
    bilinear = T.InterpolationMode.BILINEAR
    return T.Compose([T.RandomResizedCrop(224, interpolation=bilinear), T.RandomHorizontalFlip(),
                      T.TrivialAugmentWide(interpolation=bilinear), T.PILToTensor(),
                      T.ConvertImageDtype(torch.float), T.Normalize(MEAN, STD),
                      T.RandomErasing(0.1)])


def load():
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def transform_rounds(n, rounds):
    rng = np.random.default_rng(0)
    # 500x375, ImageNet's typical size, smooth like a photo
    imgs = [Image.fromarray(rng.integers(0, 256, (94, 125, 3), dtype=np.uint8)).resize(
        (500, 375), Image.BILINEAR) for _ in range(16)]
    ours = TrainTransform(224, interpolation="bilinear",
                          policy=TrivialAugmentWide(interpolation="bilinear"),
                          erasing=RandomErasing(0.1))
    tv = tv_transform()
    for rep in range(rounds):
        g = np.random.default_rng(rep)
        t = time.perf_counter()
        for i in range(n):
            ours.random_map({"image": imgs[i % 16], "label": 0}, g)
        a = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            tv(imgs[i % 16])
        b = n / (time.perf_counter() - t)
        print(f"transform round {rep}: jaxvision {a:.0f} images/s, torchvision {b:.0f} "
              f"images/s ({a / b:.2f}x), load {load()}")


def rate(make_iter, num_batches):
    """(seconds to the first batch, images/s over the next ``num_batches``); the workers are
    stopped before it returns."""
    t0 = time.perf_counter()
    it = make_iter()
    next(it)
    first, t1, seen = time.perf_counter() - t0, time.perf_counter(), 0
    for _ in range(num_batches):
        b = next(it)
        seen += len(b["label"] if isinstance(b, dict) else b[1])
    images_per_s = seen / (time.perf_counter() - t1)
    if hasattr(it, "close"):
        it.close()
    del it  # a torch DataLoader iterator shuts its workers down when freed
    return first, images_per_s


def loader_rounds(root, workers, rounds, num_batches, batch):
    from jaxvision.data import default_data_config, workers as grain_workers
    from jaxvision.tasks import build_data

    c = default_data_config()
    c.source, c.imagefolder.root = "imagefolder", root
    c.update(image_size=224, resize_size=256, batch_size=batch, eval_batch_size=batch)
    c.augment.update(policy="trivialaugment", random_erasing=0.1)
    torch.set_num_threads(1)
    tv_data = torchvision.datasets.ImageFolder(os.path.join(root, "train"), tv_transform())
    for rep in range(rounds):
        for w in workers:
            c.num_workers = w
            data = build_data(c, "resnet50")
            ours = lambda: rate(lambda: grain_workers.Received(iter(data.train_loader(seed=rep))),
                                num_batches)
            theirs = lambda: rate(lambda: iter(torch.utils.data.DataLoader(
                tv_data, batch, shuffle=True, num_workers=w, drop_last=True,
                generator=torch.Generator().manual_seed(rep))), num_batches)
            (fa, a), (fb, b) = (ours(), theirs()) if rep % 2 == 0 else reversed((theirs(),
                                                                                ours()))
            print(f"loader round {rep}, num_workers={w}: jaxvision {a:.1f} images/s "
                  f"({a / w:.1f} per worker, first batch {fa:.1f} s), torchvision {b:.1f} "
                  f"({b / w:.1f} per worker, first batch {fb:.1f} s): {a / b:.2f}x, "
                  f"load {load()}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("transform", "loader", "both"), default="both")
    p.add_argument("--num-images", type=int, default=400, help="transform mode")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader mode")
    p.add_argument("--num-batches", type=int, default=8, help="loader mode: timed batches")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(f"load average at the start: {load()}")
    if a.mode in ("transform", "both"):
        torch.set_num_threads(1)
        transform_rounds(a.num_images, a.rounds)
    if a.mode in ("loader", "both"):
        from data_bench import write_images  # scripts/ is on the path

        with tempfile.TemporaryDirectory() as root:
            # enough JPEGs that no loader wraps around within its timed batches
            write_images(root, a.batch * (a.num_batches + 2))
            loader_rounds(root, [w for w in a.workers if w > 0], a.rounds, a.num_batches,
                          a.batch)
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()

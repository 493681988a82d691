"""How fast JPEG files become train batches: jaxvision's loaders, and torchvision's beside them.

Writes ``--num-images`` JPEGs of ImageNet's typical size (500x375, smooth random content plus
noise, quality 90) into a temporary folder, laid out three ways over the same files: an image
folder ``root/{train,val}/<class>/``, a PASCAL VOC segmentation folder (palette masks) and a
COCO detection folder (a json of boxes). Then, per task, it times

* **cls-train**: decode + RandomResizedCrop 224 + flip, batches of ``--batch``: jaxvision's
  train loader (grain, ``num_workers`` worker processes) against ``ImageFolder`` +
  ``RandomResizedCrop/RandomHorizontalFlip/ToTensor/Normalize`` + ``DataLoader``;
* **cls-eval**: decode + resize 256 + centre crop 224: jaxvision's eval loader (threads) against
  ``Resize(256)/CenterCrop(224)/ToTensor/Normalize`` + ``DataLoader``;
* **seg-train**: torchvision's VOC reference recipe (base 520, crop 480: random resize of the
  shorter side in [260, 1040], flip, crop with padding), batches of ``--seg-batch``: jaxvision's
  train loader on ``data.voc`` against ``VOCSegmentation`` + transforms.v2;
* **det-train**: shorter side 800 (longer <= 1333) + flip, batches of ``--det-batch``:
  jaxvision's train loader on ``data.coco`` (which also pads to its 1344 canvas) against
  ``CocoDetection`` + transforms.v2 ``RandomShortestSize(800, 1333)`` + flip + ``ToDtype`` +
  ``SanitizeBoundingBoxes`` (torchvision's detectors resize inside the model; here the loader
  does it, so both sides do the same work).

with each ``--workers`` count, the two libraries alternating (order swapped every round) so a
load change on a shared machine hits both alike. Each figure is taken after the first batch of
each worker (the wait for them, worker start-up included, is printed apart): images per wall second, and CPU
milliseconds per image (user + sys of this process and all its worker processes: the per-core
cost, which holds on a busy machine); torch runs with one intra-op thread. jaxvision's loaders stop at uint8 (the jitted step
normalises on the device); torchvision's workers make normalised float32, as its references do.

torch is imported only with ``--torch``. A one-core decode table (PIL, PIL at reduced size with
``Image.draft``, simplejpeg if installed) comes first unless ``--no-decode``.

    PYTHONPATH=. python scripts/data_bench.py --torch --workers 0 2 --rounds 2
    PYTHONPATH=. python scripts/data_bench.py --torch --tasks cls-train --size 2000 1500 --draft
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TASKS = ("cls-train", "cls-eval", "seg-train", "det-train")


def smooth_image(rng, size=(500, 375)) -> np.ndarray:
    coarse = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def write_dataset(root: str, n: int, seed: int = 0, size=(500, 375)):
    """``n`` JPEGs under root/train and root/val (image folder, 2 classes), the train ones also
    as root/VOCdevkit/VOC2012 (segmentation) and root/coco (detection), by hard links."""
    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    os.makedirs(os.path.join(root, "coco", "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tobytes()
    images, anns, ids = [], [], []
    w, h = size
    for split in ("train", "val"):
        for i in range(n):
            d = os.path.join(root, split, f"class_{i % 2}")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"{i:05d}.jpg")
            Image.fromarray(smooth_image(rng, size)).save(path, quality=90)
            if split != "train":
                continue
            name = f"{i:05d}"
            ids.append(name)
            os.link(path, os.path.join(voc, "JPEGImages", name + ".jpg"))
            os.link(path, os.path.join(root, "coco", "images", name + ".jpg"))
            mask = np.zeros((h, w), np.uint8)
            images.append({"id": i + 1, "file_name": name + ".jpg", "width": w, "height": h})
            for k in range(int(rng.integers(1, 6))):
                bw, bh = (int(v) for v in rng.integers(20, 200, 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                cls = int(rng.integers(1, 21))
                mask[y:y + bh, x:x + bw] = cls
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls,
                             "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
            m = Image.fromarray(mask)  # L; the palette makes it P
            m.putpalette(palette)
            m.save(os.path.join(voc, "SegmentationClass", name + ".png"))
    for split in ("train", "val"):
        with open(os.path.join(voc, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 21)]
    for split in ("train", "val"):
        with open(os.path.join(root, "coco", "annotations", f"{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def cpu_seconds() -> float:
    """user + sys of this process and of its live descendants (the loader workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that ended between listing and asking
            pass
    return total


def measure(make_iter, batches: int, count, warmup: int = 1):
    """(seconds to the first ``warmup`` batches, images per wall second and CPU ms per image
    after them). One batch from each worker process: a worker still starting (importing jax, in
    grain's spawned workers) would be billed to the images around it."""
    t0 = time.perf_counter()
    it = make_iter()
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - t0
    c0, w0, seen = cpu_seconds(), time.perf_counter(), 0
    for _ in range(batches - warmup):
        seen += count(next(it))
    wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
    del it
    return first, seen / max(wall, 1e-9), 1e3 * cpu / max(seen, 1)


# -- jaxvision ------------------------------------------------------------------------------

def jv_data(root: str, task: str, workers: int, batch: int, draft: bool = False):
    from jaxvision.data import default_data_config
    from jaxvision.tasks import build_data

    c = default_data_config()
    c.update(num_workers=workers, batch_size=batch, eval_batch_size=batch)
    if task.startswith("cls"):
        c.source = "imagefolder"
        c.imagefolder.update(root=root, draft=draft)
        c.update(image_size=224, resize_size=256)
        return build_data(c, "resnet50")
    if task == "seg-train":
        c.source = "voc"
        c.voc.root = os.path.join(root, "VOCdevkit", "VOC2012")
        c.update(image_size=480, resize_size=520)
        return build_data(c, "resnet50", task="segmentation")
    c.source = "coco"
    c.coco.update(root=os.path.join(root, "coco"), train_ann="annotations/train.json",
                  val_ann="annotations/val.json", train_images="images", val_images="images")
    c.update(image_size=800)
    return build_data(c, "resnet50", task="detection")


def jv_loader(root: str, task: str, workers: int, batch: int, draft: bool = False):
    data = jv_data(root, task, workers, batch, draft)
    if task == "cls-eval":
        return lambda: iter(data.eval_loader())
    return lambda: iter(data.train_loader(seed=0))


# -- torchvision ----------------------------------------------------------------------------

def tv_loader(root: str, task: str, workers: int, batch: int, draft: bool = False):
    del draft  # torchvision always decodes in full
    import torch
    import torchvision.datasets as D
    import torchvision.transforms as T
    import torchvision.transforms.v2 as V2
    from torchvision import tv_tensors

    # one intra-op thread, as DataLoader gives its workers: in this process with torch's default
    # (one per core) ToTensor/Normalize spun ~40 ms of CPU per image on a loaded 2-core machine
    torch.set_num_threads(1)
    if task == "cls-train":
        ds = D.ImageFolder(os.path.join(root, "train"), T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(MEAN, STD)]))
        collate = None
    elif task == "cls-eval":
        ds = D.ImageFolder(os.path.join(root, "val"), T.Compose([
            T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]))
        collate = None
    elif task == "seg-train":
        tf = V2.Compose([
            V2.RandomResize(260, 1040), V2.RandomHorizontalFlip(),
            V2.RandomCrop(480, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
            V2.ToImage(),
            V2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64,
                        "others": None}, scale=True),
            V2.Normalize(MEAN, STD)])
        ds = D.wrap_dataset_for_transforms_v2(
            D.VOCSegmentation(root, year="2012", image_set="train", transforms=tf))
        collate = None
    else:
        tf = V2.Compose([
            V2.RandomShortestSize(800, 1333), V2.RandomHorizontalFlip(), V2.ToImage(),
            V2.ToDtype(torch.float32, scale=True), V2.SanitizeBoundingBoxes()])
        ds = D.wrap_dataset_for_transforms_v2(
            D.CocoDetection(os.path.join(root, "coco", "images"),
                            os.path.join(root, "coco", "annotations", "train.json"),
                            transforms=tf), target_keys=("boxes", "labels"))
        collate = lambda b: tuple(zip(*b))  # noqa: E731  torchvision's detection collate
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=task != "cls-eval",
                                         num_workers=workers, collate_fn=collate,
                                         drop_last=task != "cls-eval")
    return lambda: iter(loader)


def count(batch) -> int:
    return len(batch["image"]) if isinstance(batch, dict) else len(batch[0])


# -- one core: the decoders -----------------------------------------------------------------

def decode_table(path: str, n: int = 200):
    """CPU ms per decode of one JPEG, full size and at 1/2 (DCT scaling)."""
    with open(path, "rb") as f:
        data = f.read()
    w, h = Image.open(io.BytesIO(data)).size

    def pil(scale):  # to a PIL image, what jaxvision's transforms take (simplejpeg: an array)
        with Image.open(io.BytesIO(data)) as img:
            if scale > 1:
                img.draft("RGB", (img.width // scale, img.height // scale))
            img.load()
            return img

    rows = [("PIL", lambda: pil(1)), ("PIL draft 1/2", lambda: pil(2))]
    try:
        import simplejpeg

        rows += [("simplejpeg", lambda: simplejpeg.decode_jpeg(data)),
                 ("simplejpeg 1/2", lambda: simplejpeg.decode_jpeg(
                     data, min_height=h // 2, min_width=w // 2, min_factor=2))]
    except ImportError:
        pass
    print(f"one core, one q90 JPEG, {PIL_VERSION}:")
    for name, fn in rows:
        shape = np.shape(fn())
        t0 = time.process_time()
        for _ in range(n):
            fn()
        print(f"  {name:16s} -> {shape[1]}x{shape[0]}: "
              f"{1e3 * (time.process_time() - t0) / n:.2f} ms CPU")


PIL_VERSION = f"Pillow {Image.__version__}"


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=384)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch", type=int, default=32, help="classification batch")
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--det-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--torch", action="store_true", help="time torchvision's loaders too")
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
                   help="the JPEGs' size")
    p.add_argument("--draft", action="store_true",
                   help="jaxvision's classification train loader with data.imagefolder.draft")
    p.add_argument("--no-decode", action="store_true", help="skip the one-core decode table")
    a = p.parse_args(argv)

    libs = ["jaxvision"] + (["torchvision"] * a.torch)
    make = {"jaxvision": jv_loader, "torchvision": tv_loader}
    batch = {"cls-train": a.batch, "cls-eval": a.batch, "seg-train": a.seg_batch,
             "det-train": a.det_batch}
    results = {}
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory() as root:
        write_dataset(root, a.num_images, size=tuple(a.size))
        if not a.no_decode:
            decode_table(os.path.join(root, "train", "class_0", "00000.jpg"))
        print("lib          task       workers  warm-up s   img/s   CPU ms/img   load")
        for r in range(a.rounds):
            for task in a.tasks:
                for w in a.workers:
                    for lib in (libs if r % 2 == 0 else libs[::-1]):
                        b = batch[task]
                        first, rate, ms = measure(make[lib](root, task, w, b, a.draft),
                                                  a.num_images // b, count, max(1, w))
                        results.setdefault((task, w, lib), []).append((rate, ms))
                        print(f"{lib:12s} {task:10s} {w:7d} {first:9.2f} {rate:7.1f} "
                              f"{ms:12.2f}   {load()}", flush=True)
    print(f"load average after: {load()}")
    if a.torch:
        print("\nmedian over rounds, jaxvision / torchvision:")
        print("task       workers  img/s jv / tv (ratio)     CPU ms/img jv / tv (tv/jv)")
        for task in a.tasks:
            for w in a.workers:
                jv, tv = (np.median(results[(task, w, lib)], axis=0) for lib in libs)
                # CPU times tick in 10 ms: a tiny run can read 0
                print(f"{task:10s} {w:7d}  {jv[0]:6.1f} / {tv[0]:6.1f} ({jv[0] / tv[0]:4.2f}x)"
                      f"     {jv[1]:6.2f} / {tv[1]:6.2f} ({tv[1] / max(jv[1], 1e-9):4.2f}x)")
    return results


if __name__ == "__main__":
    main()

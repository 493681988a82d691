"""Train-transform throughput of one worker at 224 px with TrivialAugmentWide + RandomErasing
0.1 (torchvision's ResNet-50 V2 recipe): jaxvision's TrainTransform against torchvision's
ClassificationPresetTrain transforms on the same decoded PIL images, in one process.

    PYTHONPATH=. python scripts/augment_bench.py --num-images 400

jaxvision's worker stops at uint8 (the step normalises and paints the erasing box on the
device); torchvision's does ToTensor + Normalize + RandomErasing on the host, as its workers do.
"""
import argparse
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from jaxvision.data.erasing import RandomErasing
from jaxvision.data.policies import TrivialAugmentWide
from jaxvision.data.transforms import TrainTransform


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num-images", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # 500x375, ImageNet's typical size, smooth like a photo
    imgs = [Image.fromarray(rng.integers(0, 256, (94, 125, 3), dtype=np.uint8)).resize(
        (500, 375), Image.BILINEAR) for _ in range(16)]
    ours = TrainTransform(224, interpolation="bilinear",
                          policy=TrivialAugmentWide(interpolation="bilinear"),
                          erasing=RandomErasing(0.1))
    bilinear = T.InterpolationMode.BILINEAR
    tv = T.Compose([T.RandomResizedCrop(224, interpolation=bilinear), T.RandomHorizontalFlip(),
                    T.TrivialAugmentWide(interpolation=bilinear), T.PILToTensor(),
                    T.ConvertImageDtype(torch.float),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                    T.RandomErasing(0.1)])
    n = args.num_images
    for rep in range(args.repeats):
        g = np.random.default_rng(rep)
        t = time.perf_counter()
        for i in range(n):
            ours.random_map({"image": imgs[i % 16], "label": 0}, g)
        a = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            tv(imgs[i % 16])
        b = n / (time.perf_counter() - t)
        print(f"run {rep}: jaxvision {a:.0f} images/s, torchvision {b:.0f} images/s "
              f"({a / b:.2f}x)")


if __name__ == "__main__":
    main()

"""Train-step and inference throughput of jaxvision and torchvision, side by side.

The same as ``jaxvision bench`` (see ``jaxvision/bench.py``); runs from a checkout without
installing, importing only jax, flax, optax, numpy, torch and torchvision:

    python scripts/bench.py --model resnet50 --batch 16 --image-size 224
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxvision.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

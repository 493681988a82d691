"""Fine-tune your own model whose backbone starts from torchvision's weights.

    python examples/finetune_torchvision.py --weights resnet18-f37072fd.pth [--steps 200]
    python examples/finetune_torchvision.py --tiny    # random torchvision weights (needs torch)

``jv.place_pretrained`` fills ``params/backbone`` and ``batch_stats/backbone`` of your variables
from the ``.pth`` file (or a directory written by ``jaxvision convert``), strictly, and reports
what it placed; the backbone then trains at a tenth of the head's learning rate.
"""
import os
import tempfile

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

import jaxvision as jv
from custom_head_linen import QuadrantNet, accuracy, parse, train

OUT_INDICES = (2, 3, 4)  # as QuadrantNet creates its backbone


def random_torchvision_weights(name: str, directory: str) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = os.path.join(directory, f"{name}_random.pth")
    torch.save(getattr(torchvision.models, name)().state_dict(), path)
    return path


def backbone_and_rest(lr: float):
    """Backbone at lr / 10, everything else at lr (optax.multi_transform on the paths)."""
    def labels(params):
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict(
            {k: "backbone" if k[0] == "backbone" else "new" for k in flat})

    return optax.multi_transform({"backbone": optax.adamw(lr / 10), "new": optax.adamw(lr)},
                                 labels)


def main(argv=None):
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--weights")
    known, rest = pre.parse_known_args(argv)
    args = parse(rest)
    model = QuadrantNet(args.backbone)
    variables = jax.jit(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, args.size, args.size, 3))))()
    with tempfile.TemporaryDirectory() as tmp:
        weights = known.weights or (random_torchvision_weights(args.backbone, tmp) if args.tiny
                                    else None)
        if weights is None:
            raise SystemExit("--weights PATH (a torchvision .pth of the backbone) or --tiny")
        variables, report = jv.place_pretrained(variables, "backbone", args.backbone, weights,
                                                features_only=True, out_indices=OUT_INDICES,
                                                return_report=True)
    print(f"{weights}: {str(report).splitlines()[0]}")
    variables, losses = train(model, variables, backbone_and_rest(1e-3), args.steps, args.batch,
                              args.size)
    acc = accuracy(model, variables, args.batch, args.size)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; accuracy {acc:.2f}")
    return losses, acc, report


if __name__ == "__main__":
    main()

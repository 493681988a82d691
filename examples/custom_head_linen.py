"""A custom head on a jaxvision backbone + FPN, trained by your own optax loop (no jaxvision
engine).  The task (toy, generated here): which quadrant holds the bright square.

    python examples/custom_head_linen.py [--backbone resnet18] [--steps 200] [--tiny]

The backbone is a submodule of your model (``name="backbone"``), so its variables sit under
``params/backbone`` and ``batch_stats/backbone`` and torchvision weights can be placed there
(see finetune_torchvision.py).
"""
import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxvision as jv
from jaxvision.necks import FPN


class QuadrantNet(nn.Module):
    backbone: str = "resnet18"
    num_classes: int = 4
    fpn_channels: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats = jv.create_model(self.backbone, features_only=True, out_indices=(2, 3, 4),
                                name="backbone")(x, train=train)
        pyramid = FPN(self.fpn_channels, name="neck")(feats, train=train)
        # the head: pool every level, concatenate, dropout, classify
        pooled = jnp.concatenate([p.mean(axis=(1, 2)) for p in pyramid.values()], axis=-1)
        pooled = nn.Dropout(0.2, deterministic=not train)(pooled)
        return nn.Dense(self.num_classes, name="head")(pooled)


def toy_batch(rng: np.random.Generator, batch: int, size: int):
    """Images with one bright square; the label is the quadrant that holds its centre."""
    images = rng.normal(0.0, 0.1, (batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 4, batch)
    side = size // 4
    for img, label in zip(images, labels):
        top = rng.integers(0, size // 2 - side + 1) + (size // 2) * (label // 2)
        left = rng.integers(0, size // 2 - side + 1) + (size // 2) * (label % 2)
        img[top:top + side, left:left + side] += 1.0
    return jnp.asarray(images), jnp.asarray(labels)


def make_train_step(model, tx):
    @jax.jit
    def train_step(params, batch_stats, opt_state, images, labels, key):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                          train=True, rngs={"dropout": key},
                                          mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return train_step


def train(model, variables, tx, steps: int, batch: int, size: int, seed: int = 0):
    """Your loop: plain jit + optax; returns the trained variables and the losses."""
    step = make_train_step(model, tx)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    rng, key, losses = np.random.default_rng(seed), jax.random.key(seed), []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                    *toy_batch(rng, batch, size), sub)
        losses.append(float(loss))
    return {"params": params, "batch_stats": batch_stats}, losses


def accuracy(model, variables, batch: int, size: int, seed: int = 1) -> float:
    images, labels = toy_batch(np.random.default_rng(seed), batch, size)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return float((logits.argmax(-1) == labels).mean())


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="3 steps of batch 4 at 32 px (a smoke test)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps, args.batch, args.size = 3, 4, 32
    return args


def main(argv=None):
    args = parse(argv)
    model = QuadrantNet(args.backbone)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3))))()
    tx = optax.adamw(1e-3)
    variables, losses = train(model, variables, tx, args.steps, args.batch, args.size)
    acc = accuracy(model, variables, args.batch, args.size)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; accuracy {acc:.2f}")
    return losses, acc


if __name__ == "__main__":
    main()

"""The same custom head on a jaxvision backbone + FPN, written in Flax NNX and trained by an NNX
optimizer loop.  The jaxvision parts stay Linen modules, bridged by ``jaxvision.nnx.to_nnx``
(Flax's ``nnx.bridge.ToNNX`` + BatchNorm statistics updated in training).

    python examples/custom_head_nnx.py [--backbone resnet18] [--steps 200] [--tiny]
"""
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxvision as jv
from jaxvision.necks import FPN
from jaxvision.nnx import linen_variables, to_nnx
from custom_head_linen import parse, toy_batch


class QuadrantNet(nnx.Module):
    def __init__(self, backbone: str, size: int, rngs: nnx.Rngs, num_classes: int = 4,
                 fpn_channels: int = 64):
        sample = jnp.zeros((1, size, size, 3))
        linen_backbone = jv.create_model(backbone, features_only=True, out_indices=(2, 3, 4))
        self.backbone = to_nnx(linen_backbone, sample, rngs=rngs)
        # the neck takes the backbone's maps: initialise it on their shapes
        feats = self.backbone(sample)
        self.neck = to_nnx(FPN(fpn_channels), feats, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.head = nnx.Linear(fpn_channels * len(feats), num_classes, rngs=rngs)

    def __call__(self, x, train: bool = False):
        pyramid = self.neck(self.backbone(x, train=train), train=train)
        pooled = jnp.concatenate([p.mean(axis=(1, 2)) for p in pyramid.values()], axis=-1)
        return self.head(self.dropout(pooled, deterministic=not train))


@nnx.jit
def train_step(model, optimizer, images, labels):
    def loss_fn(model):
        logits = model(images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main(argv=None):
    args = parse(argv)
    model = QuadrantNet(args.backbone, args.size, nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    rng, losses = np.random.default_rng(0), []
    for _ in range(args.steps):
        losses.append(float(train_step(model, optimizer, *toy_batch(rng, args.batch, args.size))))
    images, labels = toy_batch(np.random.default_rng(1), args.batch, args.size)
    acc = float((nnx.jit(lambda m, x: m(x))(model, images).argmax(-1) == labels).mean())
    # the backbone's Linen variables, e.g. to save or to evaluate with the Linen model
    backbone_variables = linen_variables(model.backbone)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; accuracy {acc:.2f}; backbone collections "
          f"{sorted(backbone_variables)}")
    return losses, acc


if __name__ == "__main__":
    main()

"""Image classification: softmax cross-entropy (label smoothing, aux heads), top-1 / top-5."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw

from jaxvision.layers import lowering
from jaxvision.tasks.base import Task, read_image
from jaxvision.tasks.batch_mix import check_alpha, erase, mix_batch

# Aux-head loss weights of the models that have them, keyed by the outputs tuple they return in
# train mode: GoogLeNet's paper (and torchvision's port) weighs its two aux heads 0.3 each,
# Inception v3 its one aux head 0.4.
AUX_WEIGHTS = {"GoogLeNetOutputs": (0.3, 0.3), "InceptionOutputs": (0.4,)}


def split_outputs(out):
    """(main logits, [(weight, aux logits), ...]) of a model's train- or eval-mode output."""
    if not isinstance(out, (tuple, list)):
        return out, []
    weights = AUX_WEIGHTS.get(type(out).__name__)
    aux = [a for a in out[1:] if a is not None]
    if aux and weights is None:
        raise ValueError(f"classification: the model returned {type(out).__name__} with "
                         f"{len(aux)} auxiliary outputs and no known loss weights "
                         f"(known: {', '.join(AUX_WEIGHTS)})")
    return out[0], list(zip(weights or (), aux))


class Classification(Task):
    name = "classification"
    data_task = "classification"
    best_metric = "val_top1"
    best_mode = "max"
    meta_keys = ("model", "num_classes")

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, mix_prob: float = 1.0, erasing_noise: bool = False):
        self.num_classes, self.label_smoothing = int(num_classes), float(label_smoothing)
        check_alpha("train.mixup_alpha", mixup_alpha)
        check_alpha("train.cutmix_alpha", cutmix_alpha)
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"train.mix_prob must be in [0, 1], got {mix_prob}")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.mix_prob, self.erasing_noise = float(mix_prob), bool(erasing_noise)

    @classmethod
    def from_config(cls, config, num_classes):
        t = config.train
        return cls(num_classes, t.label_smoothing, t.get("mixup_alpha", 0.0),
                   t.get("cutmix_alpha", 0.0), t.get("mix_prob", 1.0),
                   config.data.augment.get("random_erasing_noise", False))

    @classmethod
    def train_transform(cls, data):
        """Random resized crop, flip, the augmentation policy and random erasing of
        ``data.augment`` (torchvision's classification reference)."""
        from jaxvision.data import transforms as T
        from jaxvision.data.erasing import RandomErasing
        from jaxvision.data.errors import DataError
        from jaxvision.data.policies import build_policy

        c = data.cfg
        a = c.augment
        erasing = None
        if a.random_erasing:
            try:
                erasing = RandomErasing(a.random_erasing, tuple(a.random_erasing_scale),
                                        tuple(a.random_erasing_ratio))
            except ValueError as e:
                raise DataError(f"data.augment.random_erasing: {e}") from None
        return T.TrainTransform(c.image_size, a.random_resized_crop, tuple(a.scale),
                                tuple(a.ratio), a.hflip, c.interpolation,
                                build_policy(a, c.interpolation), erasing)

    @classmethod
    def eval_transform(cls, data):
        from jaxvision.data import transforms as T

        return T.EvalTransform(data.eval_image_size, data.resize_size, data.cfg.interpolation)

    def train_batch(self, batch, key):
        """After normalising: the workers' RandomErasing boxes, then MixUp / CutMix, whose
        soft targets (``target``) the loss then reads instead of the labels."""
        k_erase, k_mix = jax.random.split(key)
        images = batch["image"]
        if "erase" in batch:
            images = erase(images, batch["erase"], k_erase if self.erasing_noise else None)
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            return {**batch, "image": images}
        targets = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.float32)
        images, targets = mix_batch(k_mix, images, targets, self.mixup_alpha,
                                    self.cutmix_alpha, self.mix_prob)
        return {**batch, "image": images, "target": targets}

    def loss(self, outputs, batch):
        """Cross-entropy against the one-hot labels, or the soft ``target`` of MixUp/CutMix,
        smoothed as torch's ``CrossEntropyLoss(label_smoothing)`` smooths probabilities:
        ``(1 - eps) * target + eps / classes``. Accuracy counts the target's largest class, as
        torchvision's reference does."""
        logits, aux = split_outputs(outputs)
        if "target" in batch:
            soft = batch["target"]
            labels = jnp.argmax(soft, -1)
        else:
            labels = batch["label"]
            soft = jax.nn.one_hot(labels, self.num_classes)
        targets = optax.smooth_labels(soft, self.label_smoothing)
        ce = lambda z: optax.softmax_cross_entropy(z.astype(jnp.float32), targets).mean()
        loss = ce(logits)
        for w, a in aux:
            loss = loss + w * ce(a)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return loss, {"correct": correct}

    def eval_sums(self, outputs, batch):
        logits = split_outputs(outputs)[0].astype(jnp.float32)
        valid = batch["valid"].astype(jnp.float32)
        labels = batch["label"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jax.lax.top_k(logits, min(5, self.num_classes))[1]
        hit5 = jnp.any(top5 == labels[:, None], axis=-1)
        return {"loss_sum": jnp.sum(ce * valid),
                "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
                "top5": jnp.sum(hit5 * valid), "count": jnp.sum(valid)}

    def train_summary(self, sums):
        return {"accuracy": float(sums["correct"]) / float(sums["count"])}

    def summary(self, sums):
        n = max(float(sums["count"]), 1.0)
        return {"val_loss": float(sums["loss_sum"]) / n, "val_top1": float(sums["top1"]) / n,
                "val_top5": float(sums["top5"]) / n, "val_count": int(sums["count"])}

    def draw(self, images, batch, outputs, class_names):
        """Each image with its predicted class name; the true one in brackets when wrong."""
        pred = np.asarray(split_outputs(outputs)[0]).argmax(-1)
        tiles = []
        for img, p, y in zip(images, pred, batch["label"]):
            canvas = Image.new("RGB", (96, 112), "white")
            canvas.paste(Image.fromarray(img).resize((96, 96), Image.NEAREST), (0, 0))
            ImageDraw.Draw(canvas).text((2, 98), f"{class_names[p]}"
                                        + ("" if p == y else f" ({class_names[y]})"),
                                        fill="green" if p == y else "red")
            tiles.append(np.asarray(canvas))
        return tiles

    def predict(self, model, variables, paths, data, topk: int = 5, temperature: float = 1.0,
                conv_lowering=None, **_):
        """``path: name prob, ...`` for the top-k classes of each image; the probabilities are
        ``softmax(logits / temperature)`` (above 1 softer, below 1 sharper)."""
        top = top_classes(model, variables, paths, data.preprocessing, data.class_names, topk,
                          temperature, conv_lowering)
        return [path + ": " + ", ".join(f"{name} {prob:.3f}" for name, prob in row)
                for path, row in zip(paths, top)]


def top_classes(model, variables, paths, preprocessing, names, topk: int = 5,
                temperature: float = 1.0, conv_lowering=None):
    """``[(name, probability), ...]``, the top-k classes of each image at ``paths``, preprocessed
    as ``preprocessing`` says (crop_size, resize_size, interpolation, mean, std); probabilities
    ``softmax(logits / temperature)``; ``names`` None: the class indices."""
    from jaxvision.data.transforms import eval_image
    from jaxvision.layers.normalize import normalize

    p = preprocessing
    images = [eval_image(read_image(path), p["crop_size"], p["resize_size"], p["interpolation"])
              for path in paths]
    fwd = lowering.jit(lambda v, x: model.apply(v, normalize(x, p["mean"], p["std"]),
                                                train=False), conv_lowering)
    outputs = fwd(variables, np.stack(images))
    probs = np.asarray(jax.nn.softmax(split_outputs(outputs)[0] / temperature, -1))
    names = names or [str(i) for i in range(probs.shape[-1])]
    k = min(topk, probs.shape[-1])
    return [[(names[i], float(row[i])) for i in np.argsort(-row)[:k]] for row in probs]

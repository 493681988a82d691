"""MixUp / CutMix on the device against torchvision.transforms.v2's, given the same lambda and
box, and the classification loss on their soft targets against torch's CrossEntropyLoss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision.transforms.v2 as v2

from jaxvision.tasks import Classification
from jaxvision.tasks.batch_mix import box_at, cutmix, mix_batch, mixup

B, H, W, K = 5, 9, 12, 7


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, H, W, 3)).astype(np.float32), rng.integers(0, K, B)


def _tv(transform, x, labels, params):
    transform.make_params = lambda flat: params
    out, soft = transform(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(labels))
    return out.permute(0, 2, 3, 1).numpy(), soft.numpy()


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.87, 1.0])
def test_mixup_equals_torchvision(lam):
    x, labels = _batch()
    want_x, want_y = _tv(v2.MixUp(alpha=0.2, num_classes=K), x, labels, {"lam": lam})
    got_x, got_y = mixup(x, jax.nn.one_hot(labels, K), lam)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam,cx,cy", [(0.3, 5, 4), (0.05, 0, 8), (0.9, 11, 0), (1.0, 6, 6)])
def test_cutmix_box_and_mix_equal_torchvision(monkeypatch, lam, cx, cy):
    x, labels = _batch(1)
    cut = v2.CutMix(alpha=1.0, num_classes=K)
    centre = iter([torch.tensor([cx]), torch.tensor([cy])])
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(centre))
    monkeypatch.setattr(cut._dist, "sample", lambda shape: torch.tensor(lam))
    params = v2.CutMix.make_params(cut, [torch.zeros(B, 3, H, W)])
    monkeypatch.undo()
    box = tuple(int(v) for v in box_at(cx, cy, jnp.float32(lam), H, W))
    assert box == params["box"]
    want_x, want_y = _tv(cut, x, labels, params)
    got_x, got_y = cutmix(x, jax.nn.one_hot(labels, K), box)
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-7)


def test_mix_batch_chooses_one_per_batch_under_jit():
    x, labels = _batch(2)
    y = jax.nn.one_hot(labels, K)
    run = jax.jit(jax.vmap(lambda k: mix_batch(k, x, y, 0.2, 1.0, prob=0.5)))
    xs, ys = run(jax.random.split(jax.random.key(0), 800))
    np.testing.assert_allclose(ys.sum(-1), 1.0, rtol=1e-5)
    untouched = np.all(xs == x, axis=(1, 2, 3, 4)) & np.all(ys == y, axis=(1, 2))
    # CutMix keeps every pixel of one image or its neighbour, MixUp (0 < lam < 1) blends them
    rolled = np.roll(x, 1, axis=0)
    is_cut = np.all((xs == x) | (xs == rolled), axis=(1, 2, 3, 4)) & ~untouched
    # fair coins: within 4 standard deviations
    assert abs(untouched.mean() - 0.5) < 4 * np.sqrt(0.25 / 800)
    assert abs(is_cut.sum() / (~untouched).sum() - 0.5) < 4 * np.sqrt(0.25 / (~untouched).sum())
    assert mix_batch(jax.random.key(1), x, y) == (x, y)


def test_soft_target_loss_equals_torch_with_label_smoothing():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(B, K)).astype(np.float32)
    soft = rng.dirichlet(np.ones(K), B).astype(np.float32)
    task = Classification(K, label_smoothing=0.1, mixup_alpha=0.2)
    loss, sums = task.loss(jnp.asarray(logits), {"label": np.zeros(B, np.int32),
                                                 "target": soft})
    want = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(torch.tensor(logits),
                                                          torch.tensor(soft))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    # accuracy counts the target's largest class, as torchvision's reference
    assert sums["correct"] == np.sum(logits.argmax(-1) == soft.argmax(-1))


def test_train_step_mixes_with_its_own_rng():
    import flax.linen as nn

    from jaxvision.layers.normalize import normalize
    from jaxvision.train.state import TrainState
    from jaxvision.train.step import make_train_step

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(K)(x.reshape(x.shape[0], -1))

    model, tx = Tiny(), optax.sgd(0.1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, H, W, 3)))
    x = np.random.default_rng(4).integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    batch = {"image": x, "label": np.arange(B, dtype=np.int32) % K,
             "erase": np.array([[1, 1, 3, 3]] * B, np.int32)}
    norm = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    task = Classification(K, 0.1, mixup_alpha=0.2, cutmix_alpha=1.0)
    step = jax.jit(make_train_step(model, tx, task, norm=norm))
    state = TrainState.create(variables, tx, 0, False)
    a, b = step(state, batch)[1], step(state, batch)[1]
    assert a["loss_sum"] == b["loss_sum"] and np.isfinite(a["loss_sum"])
    plain = task.loss(model.apply(variables, normalize(x, *norm)), batch)[0]
    assert not np.isclose(float(a["loss_sum"]) / B, float(plain))


@pytest.mark.parametrize("kw,field", [(dict(mixup_alpha=-1.0), "train.mixup_alpha"),
                                      (dict(cutmix_alpha=float("nan")), "train.cutmix_alpha"),
                                      (dict(mix_prob=1.5), "train.mix_prob")])
def test_bad_mix_parameters_name_their_field(kw, field):
    with pytest.raises(ValueError, match=field):
        Classification(K, **kw)

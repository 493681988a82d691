"""Data to the device: uint8 batches normalised in the steps as the host used to, the threaded
eval loader's batches equal to the single-threaded ones, device prefetch that resumes exactly."""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.data import Data, default_data_config
from jaxvision.tasks import build_data
from jaxvision.layers.normalize import normalize_batch
from jaxvision.train.prefetch import DevicePrefetch
from jaxvision.train.state import TrainState
from jaxvision.train.step import make_eval_step, make_mesh, make_train_step, shard_batch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def host_normalize(image):
    """The host path every transform used before: float32 (x / 255 - mean) / std."""
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def host_batch_images(batch):
    """The images the host path made: detection normalised the resized image, then pasted it
    into a zero canvas; the other tasks normalised everything (segmentation's black eval
    padding included, which becomes -mean/std)."""
    if "image_size" not in batch:
        return host_normalize(batch["image"])
    out = np.zeros(batch["image"].shape, np.float32)
    for i, (h, w) in enumerate(batch["image_size"]):
        out[i, :h, :w] = host_normalize(batch["image"][i, :h, :w])
    return out


def _data(task, **kw):
    c = default_data_config()
    c.update(image_size=24, resize_size=24, batch_size=4, eval_batch_size=6, mean=MEAN, std=STD)
    c.shapes.update(num_train=16, num_val=7, image_size=24, num_classes=3)
    c.segmentation.eval_size = 32  # eval pads 24 -> 32 with black
    c.detection.update(canvas=48, scale_range=(0.7, 1.3))
    c.update(kw)
    return build_data(c, "resnet18", task)


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_device_normalisation_equals_the_host_path(task):
    data = _data(task)
    norm = jax.jit(lambda b: normalize_batch(b, (data.mean, data.std)))
    train = next(iter(data.train_loader(seed=0)))
    evalb = next(iter(data.eval_loader()))
    worst = 0.0
    for batch in (train, evalb):
        assert batch["image"].dtype == np.uint8
        got = np.asarray(norm(batch)["image"])
        assert got.dtype == np.float32
        want = host_batch_images(batch)
        worst = max(worst, float(np.abs(got - want).max()))
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    if task == "detection":  # the canvas outside each image is 0 after normalising
        h, w = (int(v) for v in evalb["image_size"][0])
        assert h < 48 or w < 48
        assert (np.asarray(norm(evalb)["image"])[0, h:] == 0).all()
    if task == "segmentation":  # eval padding is black before normalising: -mean/std
        np.testing.assert_allclose(np.asarray(norm(evalb)["image"])[0, -1, -1],
                                   -np.array(MEAN) / np.array(STD), rtol=1e-6)
    print(f"{task}: max |device - host| = {worst:.2e}")


class Tiny(nn.Module):
    """Stands in for a model: what the step feeds it is all that is checked."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("accum", [1, 2])
def test_steps_on_uint8_batches_equal_steps_on_host_normalised_batches(accum):
    data = _data("classification")
    norm = (data.mean, data.std)
    batch = next(iter(data.train_loader(seed=0)))
    host = {**batch, "image": host_normalize(batch["image"])}
    model = Tiny()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)))
    tx = optax.sgd(0.1)
    step = jax.jit(make_train_step(model, tx, 3, accum_steps=accum, norm=norm))
    mesh = make_mesh()
    results = [jax.device_get(step(TrainState.create(variables, tx, 0, False),
                                   shard_batch(mesh, b))) for b in (batch, host)]
    (s_dev, m_dev), (s_host, m_host) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                 (s_dev.params, m_dev), (s_host.params, m_host))
    evalb = next(iter(data.eval_loader()))
    ev = jax.jit(make_eval_step(model, 3, norm=norm))
    got = ev(variables, evalb)
    want = ev(variables, {**evalb, "image": host_normalize(evalb["image"])})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6), got, want)


def test_uint8_batch_without_mean_std_is_refused():
    batch = {"image": np.zeros((2, 4, 4, 3), np.uint8)}
    with pytest.raises(ValueError, match=r"uint8 .*norm=\(data.mean, data.std\)"):
        normalize_batch(batch, None)
    floats = {"image": np.zeros((2, 4, 4, 3), np.float32)}
    assert normalize_batch(floats, None) is floats  # already normalised by its maker


class SlowSource:
    """A source whose examples take uneven time, so threads finish them out of order."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        time.sleep(0.02 * ((i * 7) % 3))
        return self.inner[i]


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_threaded_eval_loader_gives_the_same_batches(task):
    base = _data(task)
    gathered = {}
    for workers in (0, 2):
        d = _data(task, num_workers=workers)
        d = Data(d.train_source, SlowSource(base.val_source), d.class_names, d.cfg, d.mean,
                 d.std, d.resize_size, d.task)
        gathered[workers] = [list(d.eval_loader(p, 2)) for p in range(2)]
    for a, b in zip(gathered[0], gathered[2]):
        assert len(a) == len(b) == 2  # 7 examples padded to 12: 6 per process, 3 a batch
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    # every example once: process 0 takes 0, 2, 4 | 6, pad, pad; process 1 1, 3, 5 | pads
    valid = [b["valid"].tolist() for proc in gathered[2] for b in proc]
    assert valid == [[True] * 3, [True, False, False], [True] * 3, [False] * 3]


def test_prefetch_resumes_at_the_first_batch_not_trained_on():
    data = _data("classification")
    puts = []

    def put(b):
        puts.append(b)
        return b

    it = DevicePrefetch(iter(data.train_loader(seed=3)), put, size=2)
    for _ in range(5):
        next(it)
    assert len(puts) == 7  # two sent ahead of the five handed out
    state = it.get_state()
    fresh = iter(data.train_loader(seed=3))
    fresh.set_state(state)
    for _ in range(3):
        want, got = next(it), next(fresh)
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])


def test_eval_prefetch_yields_every_batch_in_order():
    data = _data("segmentation")
    plain = list(data.eval_loader())
    mesh = make_mesh()
    sent = list(DevicePrefetch(iter(data.eval_loader()), lambda b: shard_batch(mesh, b),
                               track_state=False))
    assert len(sent) == len(plain) == 2
    for a, b in zip(plain, sent):
        assert isinstance(b["image"], jax.Array) and b["image"].dtype == jnp.uint8
        np.testing.assert_array_equal(a["mask"], np.asarray(b["mask"]))
        np.testing.assert_array_equal(a["image"], np.asarray(b["image"]))
    with pytest.raises(ValueError, match="track_state=False"):
        DevicePrefetch(iter(plain), lambda b: b, track_state=False).get_state()

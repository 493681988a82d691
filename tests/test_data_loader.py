"""build_data + grain loaders: contract shapes, iterator-state round trip, eval coverage, tfds."""
import numpy as np
import pytest

from jaxvision.data import DataError, default_data_config
from jaxvision.tasks import build_data


def _cfg(**kw):
    c = default_data_config()
    c.image_size, c.batch_size, c.eval_batch_size = 24, 8, 16
    c.shapes.num_train, c.shapes.num_val, c.shapes.image_size = 64, 37, 24
    c.update(kw)
    return c


def test_train_batches_follow_the_contract():
    data = build_data(_cfg(), "resnet18")
    assert (data.num_classes, data.num_train, data.num_val) == (4, 64, 37)
    b = next(iter(data.train_loader(seed=0)))
    # uint8 pixels: the steps normalise them on the device (tests/test_data_device.py)
    assert b["image"].shape == (8, 24, 24, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    assert b["image"].min() < 64 and b["image"].max() > 192
    local = next(iter(data.train_loader(seed=0, process_index=1, process_count=2)))
    assert local["image"].shape == (4, 24, 24, 3)


def test_train_loader_deterministic_and_infinite():
    data = build_data(_cfg(), "resnet18")
    a, b = iter(data.train_loader(seed=5)), iter(data.train_loader(seed=5))
    # 64 / 8 = 8 steps per epoch: 12 batches cross the epoch boundary
    for _ in range(12):
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
    c = next(iter(data.train_loader(seed=6)))
    assert not np.array_equal(c["image"], next(iter(data.train_loader(seed=5)))["image"])


def check_resume(data, seed, skip):
    """A loader restored from its state after ``skip`` batches goes on with the same ones."""
    it = iter(data.train_loader(seed=seed))
    for _ in range(skip):
        next(it)
    state = it.get_state()
    after = [next(it) for _ in range(3)]
    fresh = iter(data.train_loader(seed=seed))
    fresh.set_state(state)
    for want in after:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_iterator_state_round_trip():
    check_resume(build_data(_cfg(), "resnet18"), 1, 5)


def test_reading_thread_changes_no_batch_nor_state(monkeypatch):
    """On the CPU backend the training process reads inline; elsewhere (or in a worker) one
    thread reads ahead. A run saved by one resumes in the other on the same batches."""
    from jaxvision.data import loader

    assert (loader.read_threads(0), loader.read_threads(2)) == (0, 1)  # this machine: CPU
    data = build_data(_cfg(), "resnet18")
    inline = iter(data.train_loader(seed=3))
    for _ in range(5):
        next(inline)
    state, want = inline.get_state(), [next(inline) for _ in range(4)]
    monkeypatch.setattr(loader, "read_threads", lambda num_workers: 1)
    threaded = iter(data.train_loader(seed=3))
    threaded.set_state(state)
    for w in want:
        got = next(threaded)
        np.testing.assert_array_equal(got["image"], w["image"])
        np.testing.assert_array_equal(got["label"], w["label"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_every_example_once_with_padded_mask(process_count):
    data = build_data(_cfg(), "resnet18")  # 37 val examples, eval batch 16
    local = 16 // process_count
    seen = []
    for p in range(process_count):
        batches = list(data.eval_loader(p, process_count))
        for b in batches:
            assert b["image"].shape == (local, 24, 24, 3) and b["valid"].shape == (local,)
        assert all(b["valid"].all() for b in batches[:-1])
        seen += [lab for b in batches for lab in b["label"][b["valid"]]]
    assert len(seen) == 37
    want = [int(data.val_source[i]["label"]) for i in range(37)]
    assert sorted(seen) == sorted(want)
    # deterministic: a second pass is identical
    first = list(data.eval_loader())
    np.testing.assert_array_equal(first[-1]["image"], list(data.eval_loader())[-1]["image"])
    assert first[-1]["valid"].sum() == 37 - 2 * 16


def test_bad_config_errors():
    with pytest.raises(DataError, match="data.source"):
        build_data(_cfg(source="coco"))
    data = build_data(_cfg(batch_size=128))
    with pytest.raises(DataError, match="batch_size 128 exceeds"):
        data.train_loader(seed=0)
    data = build_data(_cfg(batch_size=6))
    with pytest.raises(DataError, match="not divisible"):
        data.train_loader(seed=0, process_index=0, process_count=4)


def test_tfds_source_with_mock_data():
    # mock_data + array_record data_source run without TensorFlow (not installed here)
    tfds = pytest.importorskip("tensorflow_datasets")
    c = _cfg(source="tfds", batch_size=4, eval_batch_size=4)
    c.tfds.name, c.tfds.val_split = "mnist", "test"
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        data = build_data(c)
        assert data.class_names == [str(i) for i in range(10)] and data.num_train == 10
        b = next(iter(data.train_loader(seed=0)))  # grey 28x28x1 -> RGB 24x24
        assert b["image"].shape == (4, 24, 24, 3) and b["label"].dtype == np.int32
        batches = list(data.eval_loader())
        assert sum(int(x["valid"].sum()) for x in batches) == 10
        c.tfds.label_key = "digit"
        with pytest.raises(DataError, match="label_key 'digit'"):
            build_data(c)
    c.tfds.name = ""
    with pytest.raises(DataError, match="data.tfds.name"):
        build_data(c)

"""Image folders in torchvision's ImageFolder layout: modes, splits and every error we raise."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import DataError, default_data_config
from jaxvision.data.transforms import undecoded_jpeg
from jaxvision.tasks import build_data


def _save(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


def _rgb(seed, size=(9, 7)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), np.uint8))


def _tree(root, split="train", classes=("cat", "dog"), n=3):
    for c in classes:
        for i in range(n):
            _save(f"{root}/{split}/{c}/{i}.png", _rgb(hash((c, i)) % 1000))


def _cfg(root, image_size=8, **kw):
    c = default_data_config()
    c.source, c.image_size, c.batch_size, c.eval_batch_size = "imagefolder", image_size, 2, 4
    c.imagefolder.root = str(root)
    c.imagefolder.update(kw)
    return c


def test_train_val_folders_and_image_modes(tmp_path):
    _tree(tmp_path, "train", n=2)
    _tree(tmp_path, "val", n=1)
    d = tmp_path / "train" / "dog"
    rgb = np.asarray(_rgb(0))
    _save(f"{d}/grey.jpg", Image.fromarray(rgb[..., 0]))
    _save(f"{d}/pal.png", _rgb(1).convert("P"))
    _save(f"{d}/rgba.png", _rgb(2).convert("RGBA"))
    _save(f"{d}/cmyk.tiff", _rgb(3).convert("CMYK"))
    _save(f"{d}/deep.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    _save(f"{d}/tiny.png", _rgb(4, size=(3, 5)))  # 3 wide, 5 high
    (d / "notes.txt").write_text("not an image extension: ignored")
    data = build_data(_cfg(tmp_path, skip_corrupt=False))
    assert data.class_names == ["cat", "dog"] and (data.num_train, data.num_val) == (10, 2)
    for i in range(data.num_train):
        img = np.asarray(data.train_source[i]["image"])
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
    deep = [data.train_source[i] for i in range(10)
            if data.train_source.items[i][0].endswith("deep.png")][0]
    # 16-bit values are rescaled, not clipped at 255
    np.testing.assert_array_equal(np.asarray(deep["image"])[..., 0], rgb[..., 0])
    it = iter(data.train_loader(seed=0))
    for _ in range(5):  # an epoch: the 3x5 image goes through RandomResizedCrop too
        assert next(it)["image"].shape == (2, 8, 8, 3)
    assert sum(int(b["valid"].sum()) for b in data.eval_loader()) == 2


def test_single_folder_split_by_val_fraction(tmp_path):
    _tree(tmp_path, "all", n=10)
    c = _cfg(tmp_path / "all", val_fraction=0.25)
    a, b = build_data(c), build_data(c)
    assert (a.num_train, a.num_val) == (15, 5)
    assert a.val_source.items == b.val_source.items  # deterministic split
    assert not set(a.val_source.items) & set(a.train_source.items)
    with pytest.raises(DataError, match="val_fraction"):
        build_data(_cfg(tmp_path / "all", val_fraction=1.5))


def test_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="root is empty"):
        build_data(_cfg(""))
    with pytest.raises(DataError, match="missing.*does not exist"):
        build_data(_cfg(tmp_path / "missing"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train: is empty"):
        build_data(_cfg(tmp_path / "empty"))
    _tree(tmp_path / "r", "train")
    (tmp_path / "r" / "train" / "bird").mkdir()
    with pytest.raises(DataError, match="bird.*class folder 'bird' holds no images"):
        build_data(_cfg(tmp_path / "r"))
    _tree(tmp_path / "m", "train")
    _tree(tmp_path / "m", "val", classes=("cat", "cow"))
    with pytest.raises(DataError, match=r"missing \['dog'\], extra \['cow'\]"):
        build_data(_cfg(tmp_path / "m"))


def test_corrupt_file_named_or_skipped_and_counted(tmp_path):
    _tree(tmp_path, "train")
    _tree(tmp_path, "val")
    bad = tmp_path / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png at all")
    data = build_data(_cfg(tmp_path))
    idx = [p for p, _ in data.train_source.items].index(str(bad))
    with pytest.raises(DataError, match=f"{bad}: cannot be read.*skip_corrupt"):
        data.train_source[idx]
    data = build_data(_cfg(tmp_path, skip_corrupt=True))
    ex = data.train_source[idx]
    assert np.asarray(ex["image"]).shape == (7, 9, 3)
    assert data.train_source.num_skipped == 1 and data.train_source.skipped == {str(bad)}
    assert data.num_skipped == 1
    for p, _ in data.train_source.items:
        open(p, "wb").write(b"junk")
    with pytest.raises(DataError, match="every image under this split is corrupt"):
        data.train_source[0]


def test_nested_images_single_class_and_skipped_files_logged(tmp_path, caplog):
    # torchvision's ImageFolder walks each class folder recursively
    _tree(tmp_path, "train")
    _tree(tmp_path, "val")
    _save(f"{tmp_path}/train/cat/2024/june/deep.png", _rgb(5))
    data = build_data(_cfg(tmp_path))
    paths = [p for p, _ in data.train_source.items]
    assert f"{tmp_path}/train/cat/2024/june/deep.png" in paths and len(paths) == 7
    _tree(tmp_path / "one", "train", classes=("cat",))
    with pytest.raises(DataError, match="single class folder \\('cat'\\).*at least 2"):
        build_data(_cfg(tmp_path / "one", val_fraction=0.5))
    bad = tmp_path / "train" / "dog" / "1.png"
    bad.write_bytes(b"junk")
    data = build_data(_cfg(tmp_path, skip_corrupt=True))
    idx = [p for p, _ in data.train_source.items].index(str(bad))
    with caplog.at_level("WARNING", logger="jaxvision.data"):
        data.train_source[idx]
        data.train_source[idx]  # logged once per file
    msgs = [r.getMessage() for r in caplog.records if r.name == "jaxvision.data"]
    assert len(msgs) == 1 and str(bad) in msgs[0] and "1 replaced so far" in msgs[0]


# -- data.imagefolder.draft: train JPEGs decoded at reduced size where the random crop allows,
# against the full decode that torchvision does

def _photo(seed, size=(640, 480)):
    """Smooth content plus noise: a JPEG that compresses like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.BICUBIC), np.float32)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255)
                           .astype(np.uint8))


def _jpeg_folder(root):
    for split in ("train", "val"):
        for c in ("a", "b"):
            os.makedirs(f"{root}/{split}/{c}")
            for i in range(2):
                _photo(i + 2 * (c == "b")).save(f"{root}/{split}/{c}/{i}.jpg", quality=90)
    _photo(9).convert("L").save(f"{root}/train/a/grey.jpg", quality=90)
    _photo(8).save(f"{root}/train/b/lossless.png")  # not a JPEG: decoded in full as before


def test_draft_matches_full_decode_within_tolerance(tmp_path):
    _jpeg_folder(tmp_path)
    full, lazy = (build_data(_cfg(tmp_path, 48, draft=d)) for d in (False, True))
    assert [undecoded_jpeg(lazy.train_source[i]["image"]) for i in range(len(lazy.train_source))
            ] == [True] * 5 + [False]  # a/0, a/1, a/grey, b/0, b/1, b/lossless.png
    t = full.train_transform()  # the same transform: only what the source hands it differs
    diffs = []
    for seed in range(6):
        for i in range(len(full.train_source)):
            a = t.random_map(full.train_source[i], np.random.default_rng(seed))["image"]
            b = t.random_map(lazy.train_source[i], np.random.default_rng(seed))["image"]
            assert b.shape == a.shape == (48, 48, 3) and b.dtype == np.uint8
            diffs.append(np.abs(a.astype(int) - b).mean())
    # the same crop boxes (same draws from the header's size); pixels within ~1 level of 255
    # (measured: mean 0.4, worst image 0.9); a wrong box would differ by tens of levels
    assert 0 < np.mean(diffs) < 1.0 and max(diffs) < 2.5, diffs
    batch = next(iter(lazy.train_loader(seed=0)))
    assert batch["image"].shape == (2, 48, 48, 3) and batch["image"].dtype == np.uint8


def test_draft_errors_name_the_setting_and_the_file(tmp_path):
    _jpeg_folder(tmp_path)
    with pytest.raises(DataError, match="draft=True.*skip_corrupt"):
        build_data(_cfg(tmp_path, draft=True, skip_corrupt=True))
    bad = tmp_path / "train" / "a" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:2000])  # a valid header, then nothing
    data = build_data(_cfg(tmp_path, draft=True))
    with pytest.raises(DataError, match=f"{bad}: cannot be decoded.*draft"):
        data.train_transform().random_map(data.train_source[0], np.random.default_rng(0))

"""The torch-free .pth reader: equal to torch.load(weights_only=True) bit for bit, refusing code."""
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torchvision

import jaxvision as jv
from jaxvision.convert import ConversionError, load_state_dict, pth
from tv_parity import assert_close, images, nchw, tv_model

FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization


def assert_bitwise_equal(got, want, where):
    assert list(got) == list(want), f"{where}: keys differ"
    for key, w in want.items():
        w = w.detach()
        if w.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the bits
            assert str(got[key].dtype) == "bfloat16", f"{where} {key}: {got[key].dtype}"
            w, g = w.view(torch.int16).numpy(), got[key].view(np.int16)
        else:
            w, g = w.numpy(), got[key]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{where} {key}"
        assert g.tobytes() == w.tobytes(), f"{where} {key}: values differ"


def awkward_state_dict():
    """Every storage type, half precisions, views that start mid-storage or are transposed or
    strided, an empty tensor, a scalar, a Parameter and num_batches_tracked (int64)."""
    torch.manual_seed(0)
    sd = tv_model("mobilenet_v3_small").state_dict()
    for i, key in enumerate(k for k in list(sd) if sd[k].is_floating_point()):
        sd[key] = sd[key].to(torch.bfloat16 if i % 2 else torch.float16)
    base = torch.randn(6, 8)
    sd.update({
        "view.transposed": base[:, 1::2].t(), "view.offset": base[3:], "view.shared": base[1],
        "float64": torch.randn(2, 3).double(), "int32": torch.arange(5, dtype=torch.int32),
        "int16": torch.tensor([-3, 4], dtype=torch.int16),
        "int8": torch.tensor([-3, 4], dtype=torch.int8),
        "uint8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(3.5),
        "parameter": torch.nn.Parameter(torch.randn(3)),
    })
    return sd


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(kind, format) -> path of a file written by torch.save."""
    root = tmp_path_factory.mktemp("pth")
    sds = {"resnet18": tv_model("resnet18").state_dict(), "awkward": awkward_state_dict()}
    out = {}
    for kind, sd in sds.items():
        for fmt, zipped in FORMATS.items():
            out[kind, fmt] = root / f"{kind}-{fmt}.pth"
            torch.save(sd, out[kind, fmt], _use_new_zipfile_serialization=zipped)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["resnet18", "awkward"])
def test_numpy_reader_equals_torch_bit_for_bit(saved, kind, fmt):
    path = saved[kind, fmt]
    want = torch.load(path, weights_only=True)
    got = pth.load(path)
    assert_bitwise_equal(got, want, path.name)
    assert type(got) is type(want) and got._metadata == want._metadata
    assert got["view.transposed"].flags.c_contiguous if kind == "awkward" else True


def test_hidden_torch_selects_the_numpy_reader(saved, monkeypatch):
    """With torch unimportable, create_model reads the .pth itself and gives torch's logits."""
    tmodel = tv_model("resnet18")
    x = images((1, 64, 64, 3))
    with torch.no_grad():
        want = tmodel(nchw(x)).numpy()
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError):
        import torch as _  # noqa: F401
    model, variables = jv.create_model("resnet18", pretrained=saved["resnet18", "zip"])
    assert_close(model.apply(variables, x, train=False), want, what="numpy reader")


def test_without_torch_installed_in_a_fresh_process(saved, tmp_path):
    """A process whose import system has no torch at all reads both formats to the same bits."""
    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTorch())
import numpy as np
from jaxvision.convert import load_state_dict
for fmt in ("zip", "legacy"):
    sd = load_state_dict({str(saved["awkward", "zip"].parent)!r} + f"/awkward-{{fmt}}.pth")
    np.savez({str(tmp_path)!r} + f"/{{fmt}}.npz", **{{k: (v.view(np.int16) if
             str(v.dtype) == "bfloat16" else v) for k, v in sd.items()}})
assert "torch" not in sys.modules
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    for fmt in FORMATS:
        want = torch.load(saved["awkward", fmt], weights_only=True)
        with np.load(tmp_path / f"{fmt}.npz") as got:
            for key, w in want.items():
                w = w.detach()
                w = (w.view(torch.int16) if w.dtype == torch.bfloat16 else w).numpy()
                assert (got[key].dtype, got[key].tobytes()) == (w.dtype, w.tobytes()), key


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(saved, root):
    """name -> path of a file both readers must refuse."""
    _Evil.marker = root / "pwned"
    files = {}
    files["os.system, zip"] = root / "evil.pth"
    torch.save({"conv1.weight": _Evil()}, files["os.system, zip"])
    files["os.system, raw pickle"] = root / "evil-raw.pth"
    with open(files["os.system, raw pickle"], "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f, protocol=2)
    files["whole model"] = root / "module.pth"
    torch.save(torchvision.models.squeezenet1_1(), files["whole model"])
    for fmt in FORMATS:
        data = saved["resnet18", fmt].read_bytes()
        files[f"truncated {fmt}"] = root / f"truncated-{fmt}.pth"
        files[f"truncated {fmt}"].write_bytes(data[: len(data) // 2])
    files["empty"] = root / "empty.pth"
    files["empty"].write_bytes(b"")
    files["text"] = root / "text.pth"
    files["text"].write_text("hello, not torch\n")
    return files


EXPECTED = {"os.system, zip": "holds a pickled Python object (posix.system)",
            "os.system, raw pickle": "holds a pickled Python object (posix.system)",
            "whole model":
                "holds a pickled Python object (torchvision.models.squeezenet.SqueezeNet)",
            "truncated zip": "not a readable torch weights file",
            "truncated legacy": "not a readable torch weights file",
            "empty": "not a readable torch weights file",
            "text": "not a readable torch weights file"}


@pytest.mark.parametrize("reader", ["numpy", "torch"])
def test_code_and_broken_files_are_refused_by_both_readers(saved, tmp_path, reader):
    for what, path in _bad_files(saved, tmp_path).items():
        with pytest.raises(ConversionError) as e:
            load_state_dict(path, reader=reader)
        assert str(e.value).startswith(f"{path}: {EXPECTED[what]}"), (what, str(e.value))
    assert not (tmp_path / "pwned").exists()


def _zip_with_tensor(path, numel, offset, size, stride, state=None):
    """A torch-format zip whose one tensor claims the given layout over a storage of ``numel``
    float32s (torch.save cannot write an impossible layout, so the pickle is made here);
    ``state``: then a BUILD opcode sets it on the tensor."""

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (Storage(), offset, size, stride, False, {}), *([state] if state else []))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(
                obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": Tensor()})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", np.arange(numel, dtype=np.float32).tobytes())
    return path


def test_tensor_layouts_are_checked_against_their_storage(tmp_path):
    ok = _zip_with_tensor(tmp_path / "ok.pth", 12, 2, (2, 3), (1, 4))
    np.testing.assert_array_equal(pth.load(ok)["w"], np.arange(12.0)[2:].reshape(-1)[
        np.array([[0, 4, 8], [1, 5, 9]])])
    np.testing.assert_array_equal(torch.load(ok, weights_only=True)["w"].numpy(),
                                  pth.load(ok)["w"])
    past = _zip_with_tensor(tmp_path / "past.pth", 12, 4, (3, 4), (4, 1))
    with pytest.raises(ConversionError, match=r"past.pth: .*reaches past its storage of 12"):
        pth.load(past)
    negative = _zip_with_tensor(tmp_path / "neg.pth", 12, 0, (3,), (-1,))
    with pytest.raises(ConversionError, match=r"neg.pth: .*bad tensor layout"):
        pth.load(negative)
    rebuilt = _zip_with_tensor(tmp_path / "build.pth", 12, 0, (3,), (1,), {"stride": (-1,)})
    with pytest.raises(ConversionError, match=r"build.pth: .*tried to set the state of a tensor"):
        pth.load(rebuilt)


def test_reader_is_chosen_by_argument_or_environment(saved, monkeypatch):
    monkeypatch.setenv("JAXVISION_PTH_READER", "numpy")
    sd = load_state_dict(saved["resnet18", "zip"])
    assert isinstance(sd["conv1.weight"], np.ndarray)
    assert hasattr(load_state_dict(saved["resnet18", "zip"], reader="torch")["conv1.weight"],
                   "detach")
    monkeypatch.setenv("JAXVISION_PTH_READER", "pickle")
    with pytest.raises(ValueError, match="pth reader 'pickle' .*auto, torch, numpy"):
        load_state_dict(saved["resnet18", "zip"])


@pytest.mark.sweep
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_every_classifier_state_dict_reads_bit_for_bit(name, tmp_path):
    path = tmp_path / f"{name}.pth"
    torch.save(torchvision.models.get_model(name).state_dict(), path)
    assert_bitwise_equal(pth.load(path), torch.load(path, weights_only=True), name)

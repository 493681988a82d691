"""torch ``.pth`` files read without torch: a restricted unpickler that rebuilds tensors as numpy.

A ``.pth`` is a pickle whose tensors point at raw storages kept beside it: in the zip format
(torch >= 1.6) as ``<name>/data/<key>`` entries next to ``<name>/data.pkl``, in the legacy
format (still served for some older torchvision weights) appended after the pickle, each as an
int64 element count and the bytes. Only the globals a state_dict needs are resolved, each to a
function of this module (never to torch or to anything the file names): tensors
(``_rebuild_tensor_v2``, ``_rebuild_parameter``), storage types, ``OrderedDict`` (with its
``_metadata``) and ``_codecs.encode`` (bytes under pickle protocol 2). Any other global is
refused before it is looked up, so no code from the file runs: the promise of torch's
``weights_only=True``, whose result this equals bit for bit (tests/test_pth_reader.py).

The old tar format (torch < 0.4) is not read: torch's own ``weights_only`` loader refuses it too.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from jaxvision.convert.merge import ConversionError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _StorageType(NamedTuple):  # immutable: a BUILD opcode cannot change it
    dtype: Any


class _Frozen:
    """No BUILD opcode may change an object after its checks (a stride made negative later
    would let as_strided read outside the buffer)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"a pickle tried to set the state of a {self.kind}")


class _Storage(_Frozen):
    """One storage of the file: its bytes arrive when first needed (legacy: after the pickle)."""

    __slots__ = ("key", "dtype", "numel", "array", "base", "offset")
    kind = "storage"

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.array: np.ndarray | None = None
        self.base: _Storage | None = None  # legacy views of another storage
        self.offset = 0

    def data(self) -> np.ndarray:
        if self.base is not None:
            return self.base.data()[self.offset:self.offset + self.numel]
        if self.array is None:
            raise ValueError(f"storage {self.key} has no data")
        return self.array


class _Tensor(_Frozen):
    """A tensor awaiting its storage's bytes."""

    __slots__ = ("storage", "offset", "size", "stride")
    kind = "tensor"

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise ValueError(f"a tensor's storage is a {type(storage).__name__}")
        size, stride = tuple(size), tuple(stride)
        if (len(size) != len(stride) or not isinstance(offset, int) or offset < 0
                or not all(isinstance(n, int) and n >= 0 for n in size + stride)):
            raise ValueError(f"bad tensor layout: offset {offset}, size {size}, stride {stride}")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        data = self.storage.data()
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if extent > data.size:  # as_strided would read past the buffer
            raise ValueError(f"a tensor of size {self.size}, stride {self.stride} at offset "
                             f"{self.offset} reaches past its storage of {data.size} elements")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size,
                                               [s * item for s in self.stride], writeable=False)
        return np.array(view, order="C")  # contiguous, owns its memory


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding != "latin1":
        raise ValueError("_codecs.encode is allowed only for protocol 2's bytes (latin1)")
    return codecs.encode(text, encoding)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _encode,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storage_for):
        super().__init__(file)
        self._storage_for = storage_for

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ForbiddenGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        return self._storage_for(pid)


def _load_zip(f, path: str):
    with zipfile.ZipFile(f) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError("a zip without a single <name>/data.pkl: not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        names = set(zf.namelist())
        order = "little"
        if f"{prefix}byteorder" in names:
            order = zf.read(f"{prefix}byteorder").decode().strip()
        storages: dict[str, _Storage] = {}

        def storage_for(pid):
            _, kind, key, _location, numel = pid[:5]
            key = str(key)
            if key not in storages:
                storage = _Storage(key, kind.dtype, int(numel))
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise ValueError(f"storage {entry} is missing from the archive")
                raw = zf.read(entry)
                dtype = storage.dtype.newbyteorder("<" if order == "little" else ">")
                if len(raw) < storage.numel * dtype.itemsize:
                    raise ValueError(f"storage {entry} holds {len(raw)} bytes, expected "
                                     f"{storage.numel * dtype.itemsize}")
                storage.array = np.frombuffer(raw, dtype, storage.numel).astype(
                    storage.dtype, copy=False)
                storages[key] = storage
            return storages[key]

        with zf.open(pkl[0]) as data_pkl:
            return _Unpickler(io.BufferedReader(data_pkl), storage_for).load()


def _load_legacy(f):
    # torch.save(_use_new_zipfile_serialization=False): magic, protocol, sys_info, the object,
    # the storage keys, then each storage as <int64 numel><bytes> in that order
    plain = _Unpickler(f, lambda pid: (_ for _ in ()).throw(pickle.UnpicklingError("no storage")))
    if plain.load() != _LEGACY_MAGIC:
        raise ValueError("neither a zip archive nor torch's legacy format (no magic number)")
    plain.load()  # protocol version
    sys_info = plain.load()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    storages: dict[str, _Storage] = {}

    def storage_for(pid):
        _, kind, key, _location, numel, view = pid[:6] if len(pid) > 5 else (*pid, None)
        key = str(key)
        if key not in storages:
            storages[key] = _Storage(key, kind.dtype, int(numel))
        if view is None:
            return storages[key]
        view_key, offset, view_numel = view
        if str(view_key) not in storages:
            sub = _Storage(str(view_key), kind.dtype, int(view_numel))
            sub.base, sub.offset = storages[key], int(offset)
            storages[str(view_key)] = sub
        return storages[str(view_key)]

    obj = _Unpickler(f, storage_for).load()
    for key in _Unpickler(f, storage_for).load():
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q" if little else ">q", f.read(8) or b"\0" * 9)
        dtype = storage.dtype.newbyteorder("<" if little else ">")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"storage {key} is cut short: {len(raw)} of "
                             f"{numel * dtype.itemsize} bytes")
        storage.array = np.frombuffer(raw, dtype).astype(storage.dtype, copy=False)
    return obj


def _materialise(obj):
    if isinstance(obj, _Tensor):
        return obj.numpy()
    if isinstance(obj, dict):  # in place: an OrderedDict keeps its _metadata
        for key, value in obj.items():
            obj[key] = _materialise(value)
        return obj
    if isinstance(obj, list):
        obj[:] = [_materialise(v) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def load(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` wrote to ``path``, its tensors as numpy arrays (bfloat16 as
    ``ml_dtypes.bfloat16``). Raises ConversionError naming the file for anything else."""
    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        raise unreadable(path, ValueError("the file is empty"))
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
            f.seek(0)
            obj = _load_zip(f, path) if is_zip else _load_legacy(f)
        return _materialise(obj)
    except ForbiddenGlobal as e:
        raise refused(path, e.name) from None
    except zipfile.BadZipFile as e:
        raise unreadable(path, ValueError(f"a damaged or truncated zip archive: {e}")) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError,
            TypeError, AttributeError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise unreadable(path, e) from None


def refused(path: str, name: str) -> ConversionError:
    return ConversionError(
        f"{path}: holds a pickled Python object ({name}), not only tensors; refused without "
        "running anything. If it is a whole model, save model.state_dict() instead: "
        "torch.save(model.state_dict(), path)")


def unreadable(path: str, error: BaseException) -> ConversionError:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return ConversionError(f"{path}: not a readable torch weights file ({first})")

"""Read PyTorch zip checkpoints (`torch.save` since 1.6) lazily, without importing torch.

Why our own reader: importing torch costs ~1-2.5 s and ~220 MB per job, and `torch.load`
materialises every tensor. A torch zip is a pickle of the object tree plus one *stored*
(uncompressed) zip member per storage, so tensors can be described as (file, byte offset,
dtype, shape) and read row by row later. llama.cpp's old converter did the same.

Safety: the unpickler resolves only an explicit allowlist (OrderedDict, the tensor rebuild
helpers, storage types) - stricter than `torch.load(weights_only=True)`. Any other global,
e.g. `os.system` in a crafted pickle, is refused before anything is called.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

from ..errors import Llama2binError
from .base import FilePool, RawTensor

_STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    # Non-float storages appear for bookkeeping tensors (e.g. a step counter); they can be
    # described but not read as weights.
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass
class TorchTensor:
    """A tensor inside a torch zip, not yet read."""

    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return TorchTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _UnsafeGlobal(Exception):
    pass


class _WeightsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise _UnsafeGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        return _Storage(pid[1].dtype, str(pid[2]), int(pid[4]))


class TorchZip:
    """An opened torch zip checkpoint: `.obj` is the unpickled tree with `TorchTensor` leaves."""

    def __init__(self, path: str, pool: FilePool):
        self.path = path
        self.pool = pool
        try:
            zf = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise Llama2binError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise Llama2binError(f"{path}: is a directory, expected a .pt/.pth file") from None
        except PermissionError:
            raise Llama2binError(f"{path}: permission denied") from None
        except (zipfile.BadZipFile, OSError, EOFError):
            raise Llama2binError(
                f"{path}: not a PyTorch zip checkpoint (truncated, or saved with the pre-1.6 format)"
            ) from None
        with zf:
            self._members = {info.filename: info for info in zf.infolist()}
            pkl = [n for n in self._members if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise Llama2binError(f"{path}: not a PyTorch checkpoint (no data.pkl in the zip)")
            self._prefix = pkl[0][: -len("data.pkl")]
            byteorder = self._prefix + "byteorder"
            try:
                if byteorder in self._members and zf.read(byteorder) != b"little":
                    raise Llama2binError(f"{path}: big-endian checkpoints are not supported")
                data = zf.read(pkl[0])
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise Llama2binError(f"{path}: corrupt zip member {pkl[0]}: {e}") from None
        try:
            self.obj = _WeightsOnlyUnpickler(io.BytesIO(data)).load()
        except _UnsafeGlobal as e:
            raise Llama2binError(
                f"{path}: refused: the pickle references {e}, which is not a weight "
                "(only tensors and plain data are loaded, as with weights_only=True)"
            ) from None
        except Exception as e:  # any malformed pickle: one clear line, never a traceback
            raise Llama2binError(f"{path}: corrupt checkpoint pickle: {type(e).__name__}: {e}") from None
        self._offsets: dict[str, int] = {}

    def _storage_offset(self, storage: _Storage, name: str) -> int:
        """Byte offset of a storage's data in the zip file (members are stored uncompressed)."""
        if storage.key in self._offsets:
            return self._offsets[storage.key]
        member = f"{self._prefix}data/{storage.key}"
        info = self._members.get(member)
        if info is None:
            raise Llama2binError(f"{self.path}: tensor {name}: storage {member} missing (truncated checkpoint?)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise Llama2binError(f"{self.path}: tensor {name}: storage {member} is compressed; re-save with torch.save")
        fd = self.pool.fd(self.path)
        header = os.pread(fd, 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise Llama2binError(f"{self.path}: corrupt zip local header for {member}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        offset = info.header_offset + 30 + name_len + extra_len
        if offset + info.file_size > os.fstat(fd).st_size:
            raise Llama2binError(f"{self.path}: tensor {name}: data runs past the end of the file (truncated)")
        self._offsets[storage.key] = offset
        return offset

    def tensor(self, t: TorchTensor, name: str) -> RawTensor:
        """A lazy reader for `t`, which the checkpoint stores under `name`."""
        if t.storage.dtype not in ("F32", "F16", "BF16", "F64"):
            raise Llama2binError(f"{self.path}: tensor {name} has dtype {t.storage.dtype}, not a float weight")
        if not t.contiguous:
            raise Llama2binError(f"{self.path}: tensor {name} is stored non-contiguously; re-save it with .contiguous()")
        if t.storage_offset + math.prod(t.shape) > t.storage.numel:
            raise Llama2binError(f"{self.path}: tensor {name} is larger than its storage")
        itemsize = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[t.storage.dtype]
        base = self._storage_offset(t.storage, name)
        return RawTensor(
            name=name,
            shape=t.shape,
            path=self.path,
            offset=base + t.storage_offset * itemsize,
            dtype=t.storage.dtype,
            pool=self.pool,
            key=t.storage.key,
        )


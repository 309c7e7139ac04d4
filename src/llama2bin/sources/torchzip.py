"""Read PyTorch zip checkpoints (`torch.save` since 1.6) lazily, without importing torch.

Why our own reader: importing torch costs ~1-2.5 s and ~220 MB per job, and `torch.load`
materialises every tensor. A torch zip is a pickle of the object tree plus one *stored*
(uncompressed) zip member per storage, so tensors can be described as (file, byte offset,
dtype, shape) and read row by row later. llama.cpp's old converter did the same.

Safety: the unpickler resolves only an explicit allowlist (OrderedDict, the tensor rebuild
helpers, storage types) - stricter than `torch.load(weights_only=True)`. Any other global,
e.g. `os.system` in a crafted pickle, is refused before anything is called. The file must be
a regular file (safe_io); the pickle is size-capped and must be stored, not deflated; every
argument of a tensor rebuild is type-checked; each storage's declared size must fit its member.
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
from ..safe_io import open_regular
from .base import DTYPE_ITEMSIZE, FilePool, RawTensor

# A state dict's pickle describes each tensor in ~100-200 bytes: a 70B model's is ~150 KB, a
# llama2.c checkpoint with optimizer state a few hundred KB. 16 MiB is far above any real one
# and bounds the objects a hostile pickle can make us build (~8 bytes per opcode byte at worst).
MAX_PICKLE_BYTES = 16 << 20
# zipfile reads the whole central directory and builds a ZipInfo (~0.5 KB) per entry. torch.save
# writes ~100 bytes of it per storage (~70 KB for a 70B model); 16 MiB bounds the entries built.
MAX_CENTRAL_DIRECTORY_BYTES = 16 << 20
_EOCD_SIG, _ZIP64_LOCATOR_SIG, _ZIP64_EOCD_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def central_directory_size(fd: int) -> int:
    """The central directory size a zip's end records declare (the larger of the classic and the
    zip64 record, as zipfile prefers zip64 whenever its locator is present); 0 if there is no
    end record, which zipfile then reports as "not a zip"."""
    size = os.fstat(fd).st_size
    tail_len = min(size, 22 + 0xFFFF)  # the end record, then at most a 64 KiB comment
    tail = os.pread(fd, tail_len, size - tail_len)
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or at + 22 > len(tail):
        return 0
    declared = struct.unpack_from("<I", tail, at + 12)[0]
    locator = tail[at - 20 : at] if at >= 20 else b""
    if locator[:4] == _ZIP64_LOCATOR_SIG:
        record_at = struct.unpack_from("<Q", locator, 8)[0]
        record = os.pread(fd, 56, record_at) if record_at < size else b""
        if len(record) == 56 and record[:4] == _ZIP64_EOCD_SIG:
            declared = max(declared, struct.unpack_from("<Q", record, 40)[0])
    return declared

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


class _BadPickle(Exception):
    """A pickle that unpickles but describes something no torch.save writes."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# torch's own limits: sizes and strides are int64, and no tensor has more than 64 dims. Holding
# a hostile pickle to them keeps every product of a shape small enough to compute at once.
_MAX_NDIM = 64
_MAX_INT64 = (1 << 63) - 1


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    # torch.Size pickles as a tuple; a float, bool or negative entry is not a size (never truncated).
    if (
        not isinstance(value, tuple | list)
        or len(value) > _MAX_NDIM
        or not all(_is_int(v) and 0 <= v <= _MAX_INT64 for v in value)
    ):
        raise _BadPickle(f"tensor {what} {value!r:.80} is not a tuple of at most {_MAX_NDIM} int64s >= 0")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise _BadPickle(f"a tensor's storage argument is {type(storage).__name__} {storage!r:.60}, not a storage")
    if not _is_int(storage_offset) or not 0 <= storage_offset <= _MAX_INT64:
        raise _BadPickle(f"storage_offset {storage_offset!r:.60} is not a non-negative integer (storage {storage.key})")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _BadPickle(f"tensor size {list(shape)} and stride {list(strides)} differ in length")
    return TorchTensor(storage, storage_offset, shape, strides)


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
        # torch.save writes ("storage", storage type, key (str of an int), location, numel).
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_int(pid[4])
            and 0 <= pid[4] <= _MAX_INT64
        ):
            raise _BadPickle(f"unexpected persistent id {pid!r:.80}")
        return _Storage(pid[1].dtype, pid[2], pid[4])


class TorchZip:
    """An opened torch zip checkpoint: `.obj` is the unpickled tree with `TorchTensor` leaves."""

    def __init__(self, path: str, pool: FilePool):
        self.path = path
        self.pool = pool
        # A FIFO or a device (e.g. a symlink to /dev/zero) is refused here, before zipfile reads.
        fd = open_regular(path, "PyTorch checkpoint (.pt/.pth)")
        with os.fdopen(fd, "rb") as f:
            directory = central_directory_size(fd)
            if directory > MAX_CENTRAL_DIRECTORY_BYTES:
                raise Llama2binError(
                    f"{path}: zip central directory of {directory} bytes is too large for a checkpoint "
                    f"(limit {MAX_CENTRAL_DIRECTORY_BYTES})"
                )  # ZipFile does not close a file object it was given
            data = self._read_pickle(f)
        try:
            self.obj = _WeightsOnlyUnpickler(io.BytesIO(data)).load()
        except _UnsafeGlobal as e:
            raise Llama2binError(
                f"{path}: refused: the pickle references {e}, which is not a weight "
                "(only tensors and plain data are loaded, as with weights_only=True)"
            ) from None
        except _BadPickle as e:
            raise Llama2binError(f"{path}: corrupt checkpoint pickle: {e}") from None
        except MemoryError:  # a length or memo index far beyond the (capped) pickle's size
            raise Llama2binError(f"{path}: corrupt checkpoint pickle: a length field exceeds the pickle's size") from None
        except Exception as e:  # any malformed pickle: one clear line, never a traceback
            raise Llama2binError(f"{path}: corrupt checkpoint pickle: {type(e).__name__}: {e}") from None
        self._offsets: dict[str, int] = {}
        self._ranges: list[tuple[int, int, str]] = []  # [local header, data end) of each member read

    def _read_pickle(self, f: Any) -> bytes:
        """data.pkl's bytes; notes the zip's members and their common prefix."""
        path = self.path
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            raise Llama2binError(
                f"{path}: not a PyTorch zip checkpoint (truncated, or saved with the pre-1.6 format)"
            ) from None
        with zf:
            infos = zf.infolist()
            self._members = {info.filename: info for info in infos}
            if len(self._members) != len(infos):
                names = [info.filename for info in infos]
                dup = next(name for name in names if names.count(name) > 1)
                raise Llama2binError(f"{path}: zip member {dup} appears twice (which one is meant?)")
            pkl = [n for n in self._members if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise Llama2binError(f"{path}: not a PyTorch checkpoint (no data.pkl in the zip)")
            self._prefix = pkl[0][: -len("data.pkl")]
            byteorder = self._prefix + "byteorder"
            try:
                if byteorder in self._members and self._read_member(zf, byteorder, 16) != b"little":
                    raise Llama2binError(f"{path}: big-endian checkpoints are not supported")
                return self._read_member(zf, pkl[0], MAX_PICKLE_BYTES)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise Llama2binError(f"{path}: corrupt zip member {pkl[0]}: {e}") from None

    def _read_member(self, zf: zipfile.ZipFile, member: str, max_bytes: int) -> bytes:
        """A small member's bytes: stored (never inflated) and at most `max_bytes`."""
        info = self._members[member]
        if info.compress_type != zipfile.ZIP_STORED:
            raise Llama2binError(
                f"{self.path}: zip member {member} is compressed; torch.save stores members uncompressed, so this "
                "is a re-zipped file or a zip bomb (not inflated; re-save it with torch.save)"
            )
        if info.file_size != info.compress_size or info.file_size > max_bytes:
            raise Llama2binError(f"{self.path}: zip member {member} declares {info.file_size} bytes (limit {max_bytes})")
        return zf.read(info)

    def _storage_offset(self, storage: _Storage, name: str) -> int:
        """Byte offset of a storage's data in the zip file (members are stored uncompressed),
        after checking that the storage's declared size fits in its member."""
        member = f"{self._prefix}data/{storage.key}"
        info = self._members.get(member)
        if info is None:
            raise Llama2binError(f"{self.path}: tensor {name}: storage {member} missing (truncated checkpoint?)")
        itemsize = DTYPE_ITEMSIZE[storage.dtype]
        if storage.numel * itemsize > info.file_size:
            raise Llama2binError(
                f"{self.path}: tensor {name}: storage {member} declares {storage.numel} elements "
                f"({storage.numel * itemsize} bytes) but the member holds {info.file_size} bytes"
            )
        if storage.key in self._offsets:
            return self._offsets[storage.key]
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise Llama2binError(
                f"{self.path}: tensor {name}: storage {member} is compressed; torch.save stores storages "
                "uncompressed (not inflated; re-save it with torch.save)"
            )
        fd = self.pool.fd(self.path)
        header = os.pread(fd, 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise Llama2binError(f"{self.path}: corrupt zip local header for {member}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        # The local header must name the member the directory does, and no two members' bytes
        # may overlap: otherwise one storage could alias another's data.
        # (the local name is decoded as zipfile decodes the directory's: UTF-8 if flagged, else cp437)
        local_name = os.pread(fd, name_len, info.header_offset + 30).decode(
            "utf-8" if info.flag_bits & 0x800 else "cp437", "replace"
        )
        if local_name != info.orig_filename:
            raise Llama2binError(f"{self.path}: zip directory entry {member} points at another member's local header")
        offset = info.header_offset + 30 + name_len + extra_len
        end = offset + info.file_size
        for begin, other_end, other in self._ranges:
            if info.header_offset < other_end and begin < end:
                raise Llama2binError(f"{self.path}: storage {member} overlaps {other} (one storage aliasing another)")
        self._ranges.append((info.header_offset, end, member))
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
        itemsize = DTYPE_ITEMSIZE[t.storage.dtype]
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


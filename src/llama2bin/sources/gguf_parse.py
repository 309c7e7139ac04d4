"""A bounded parser for GGUF headers from untrusted files.

Why our own, not gguf.GGUFReader: GGUFReader memory-maps the whole file (every page it touches
counts against RSS) and trusts the header - a count of 2^60 array elements or a tensor past the
end of the file is not its concern. Verification still uses GGUFReader, as an independent second
reading of what we write (checks/gguf_readback.py).

Guarantees, each failure one `llama2bin: error:` line naming the file, byte offset, key or tensor:
- the file is opened through safe_io (a FIFO, a device, a directory: refused at once);
- magic "GGUF", version 2 or 3 (version 1 and big-endian files are refused, as by llama.cpp);
- the tensor and key counts are capped (MAX_TENSORS, MAX_KVS) and must fit in the file;
- every string and array length is checked against the bytes left in the file and the header cap
  (MAX_HEADER_BYTES) before anything is allocated, and all arrays together hold at most
  MAX_ARRAY_STRINGS strings (each costs a Python object); numeric arrays are read as numpy
  arrays (their bytes, no per-element objects);
- value types are known ones; arrays of arrays are refused (llama.cpp refuses them too), so
  nothing nests; booleans are 0 or 1; keys are non-empty UTF-8 and unique;
- general.alignment, when present, is a UINT32 power of two;
- tensor names are UTF-8, at most 63 bytes, unique; 1 to 4 dimensions, each >= 1, whose product
  stays below 2^56 (no overflow anywhere after); a known ggml type, a row length that is a whole
  number of its blocks; offsets multiples of the alignment; every tensor inside the file, and no
  two tensors' bytes overlap.
Reading is bounded too: the header is read in pieces of at most 1 MiB (or one string/array),
never the whole file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..errors import Llama2binError
from ..safe_io import file_size, open_regular
from .gguf_file import (
    DEFAULT_ALIGNMENT,
    GGML_TYPES,
    GGUF_MAGIC,
    MAX_DIMS,
    MAX_TENSOR_NAME_BYTES,
    READABLE_VERSIONS,
    SCALAR_CODES,
    ValueType,
    pad_to,
    tensor_nbytes,
    type_name,
)

MAX_TENSORS: Final = 1 << 16  # a 70B llama has 723 tensors
MAX_KVS: Final = 1 << 16  # llama GGUFs have ~30 keys
MAX_HEADER_BYTES: Final = 256 << 20  # Llama 3's header is ~8 MB (tokens, merges)
MAX_ARRAY_STRINGS: Final = 1 << 22  # tokens + merges of the largest vocabularies are < 1M
MAX_ELEMENTS: Final = 1 << 56
_READ_PIECE: Final = 1 << 20
_ARRAY_DTYPES: Final = {
    ValueType.UINT8: "<u1", ValueType.INT8: "<i1", ValueType.UINT16: "<u2", ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4", ValueType.INT32: "<i4", ValueType.FLOAT32: "<f4", ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8", ValueType.FLOAT64: "<f8", ValueType.BOOL: "<u1",
}


@dataclass(frozen=True)
class GgufValue:
    """A metadata value: scalars as Python int/float/bool, STRING as bytes, ARRAY as a numpy array
    (numeric and BOOL elements) or a list of bytes (STRING elements), with `sub_type` set."""

    type: ValueType
    value: Any
    sub_type: ValueType | None = None


@dataclass(frozen=True)
class GgufTensorInfo:
    name: str
    ne: tuple[int, ...]  # innermost first
    ggml_type: int
    offset: int  # absolute file offset of its data
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: (rows, cols) for a matrix."""
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class GgufHeader:
    path: str
    version: int
    kv: dict[str, GgufValue]
    tensors: tuple[GgufTensorInfo, ...]
    alignment: int
    data_offset: int
    file_size: int


class _Reader:
    """Sequential reads from the start of a file by pread, in bounded pieces."""

    def __init__(self, fd: int, path: str, size: int):
        self.fd, self.path, self.size = fd, path, size
        self.pos = 0
        self._buf = b""
        self._buf_start = 0

    def fail(self, message: str, at: int | None = None) -> Llama2binError:
        return Llama2binError(f"{self.path}: {message} (byte {self.pos if at is None else at})")

    def check_length(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"{what} of {n} bytes goes beyond the end of the file ({self.size - self.pos} bytes left)")
        if self.pos + n > MAX_HEADER_BYTES:
            raise self.fail(f"{what} makes the header larger than {MAX_HEADER_BYTES >> 20} MiB")

    def take(self, n: int, what: str) -> bytes:
        self.check_length(n, what)
        off = self.pos - self._buf_start
        if off + n > len(self._buf):
            try:
                self._buf = os.pread(self.fd, max(n, min(_READ_PIECE, self.size - self.pos)), self.pos)
            except OSError as e:
                raise self.fail(f"cannot read: {e.strerror}") from None
            self._buf_start, off = self.pos, 0
            if len(self._buf) < n:
                raise self.fail("file changed size while being read")
        self.pos += n
        return self._buf[off : off + n]

    def unpack(self, code: str, what: str) -> Any:
        return struct.unpack("<" + code, self.take(struct.calcsize("<" + code), what))[0]

    def string(self, what: str) -> bytes:
        n = self.unpack("Q", f"length of {what}")
        return self.take(n, what)


def _utf8(r: _Reader, raw: bytes, what: str, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail(f"{what} is not valid UTF-8", at) from None


class _Parser:
    def __init__(self, r: _Reader):
        self.r = r
        self.strings = 0

    def value_type(self, what: str) -> ValueType:
        at = self.r.pos
        raw = self.r.unpack("I", what)
        try:
            return ValueType(raw)
        except ValueError:
            raise self.r.fail(f"{what} {raw} is not a GGUF value type", at) from None

    def value(self, vtype: ValueType, key: str) -> GgufValue:
        r = self.r
        if vtype == ValueType.BOOL:
            at = r.pos
            b = r.unpack("B", f"value of {key}")
            if b > 1:
                raise r.fail(f"boolean {key} is {b}, not 0 or 1", at)
            return GgufValue(vtype, bool(b))
        if vtype in SCALAR_CODES:
            return GgufValue(vtype, r.unpack(SCALAR_CODES[vtype], f"value of {key}"))
        if vtype == ValueType.STRING:
            return GgufValue(vtype, r.string(f"string {key}"))
        sub = self.value_type(f"element type of array {key}")
        at = r.pos
        count = r.unpack("Q", f"length of array {key}")
        if sub == ValueType.ARRAY:
            raise r.fail(f"array {key} holds arrays (nested arrays are not supported, as in llama.cpp)", at)
        if sub == ValueType.STRING:
            r.check_length(8 * count, f"array {key} of {count} strings")  # each at least its length field
            self.strings += count
            if self.strings > MAX_ARRAY_STRINGS:
                raise r.fail(f"array {key}: more than {MAX_ARRAY_STRINGS} strings in the header's arrays", at)
            return GgufValue(vtype, [r.string(f"string {i} of {key}") for i in range(count)], sub)
        dtype = np.dtype(_ARRAY_DTYPES[sub])
        data = np.frombuffer(r.take(count * dtype.itemsize, f"array {key} of {count} {sub.name}"), dtype=dtype)
        if sub == ValueType.BOOL and data.size and data.max() > 1:
            raise r.fail(f"array {key} holds a boolean that is not 0 or 1", at)
        return GgufValue(vtype, data, sub)


def parse_gguf_header(fd: int, path: str) -> GgufHeader:
    """Parse and check the header of the open GGUF file `fd` (see the module docstring)."""
    size = file_size(fd)
    r = _Reader(fd, path, size)
    p = _Parser(r)
    if size < 4 or os.pread(fd, 4, 0) != GGUF_MAGIC:
        raise Llama2binError(f"{path}: not a GGUF file (no GGUF magic)")
    r.take(4, "magic")
    version = r.unpack("I", "version")
    if version not in READABLE_VERSIONS:
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise Llama2binError(f"{path}: GGUF version {version} is not supported (2 or 3){hint}")
    n_tensors, n_kv = r.unpack("Q", "tensor count"), r.unpack("Q", "key count")
    if n_tensors > MAX_TENSORS:
        raise Llama2binError(f"{path}: tensor count {n_tensors} is beyond any llama model (limit {MAX_TENSORS})")
    if n_kv > MAX_KVS:
        raise Llama2binError(f"{path}: key count {n_kv} is beyond any GGUF (limit {MAX_KVS})")
    r.check_length(n_kv * 13 + n_tensors * 28, f"{n_kv} keys and {n_tensors} tensor infos")  # their smallest sizes

    kv: dict[str, GgufValue] = {}
    for _ in range(n_kv):
        at = r.pos
        key = _utf8(r, r.string("key"), "key", at)
        if not key:
            raise r.fail("empty key", at)
        if key in kv:
            raise r.fail(f"duplicate key {key!r:.80}", at)
        kv[key] = p.value(p.value_type(f"type of {key}"), key)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        a = kv["general.alignment"]
        if a.type != ValueType.UINT32 or a.value <= 0 or a.value & (a.value - 1):
            raise Llama2binError(f"{path}: general.alignment must be a UINT32 power of two, got {a.value!r}")
        alignment = a.value

    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        at = r.pos
        name = _utf8(r, r.string(f"name of tensor {i}"), f"name of tensor {i}", at)
        if not name or len(name.encode()) > MAX_TENSOR_NAME_BYTES:
            raise r.fail(f"tensor name {name[:80]!r} is empty or longer than {MAX_TENSOR_NAME_BYTES} bytes", at)
        if name in names:
            raise r.fail(f"duplicate tensor name {name!r}", at)
        names.add(name)
        n_dims = r.unpack("I", f"dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")
        ne = tuple(r.unpack("Q", f"dimension of {name}") for _ in range(n_dims))
        numel = 1
        for n in ne:
            numel *= n
            if n == 0 or numel >= MAX_ELEMENTS:
                raise r.fail(f"tensor {name} has dimensions {list(ne)}: " + ("a zero" if n == 0 else "their product overflows"))
        ggml_type = r.unpack("I", f"type of {name}")
        if ggml_type not in GGML_TYPES:
            raise r.fail(f"tensor {name} has unknown type {ggml_type}")
        if ne[0] % GGML_TYPES[ggml_type][1]:
            raise r.fail(f"tensor {name}: row length {ne[0]} is not a whole number of {type_name(ggml_type)} blocks")
        rel = r.unpack("Q", f"offset of {name}")
        if rel % alignment:
            raise r.fail(f"tensor {name}: offset {rel} is not a multiple of the alignment {alignment}")
        infos.append((name, ne, ggml_type, rel, tensor_nbytes(ggml_type, ne)))

    data_offset = pad_to(r.pos, alignment)
    tensors = tuple(GgufTensorInfo(name, ne, t, data_offset + rel, nbytes) for name, ne, t, rel, nbytes in infos)
    for t in tensors:
        if t.offset + t.nbytes > size:
            raise Llama2binError(
                f"{path}: tensor {t.name} ({t.nbytes} bytes at {t.offset}) ends beyond the end of the file ({size} bytes)"
            )
    ordered = sorted(tensors, key=lambda t: t.offset)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.offset + a.nbytes > b.offset:
            raise Llama2binError(f"{path}: tensors {a.name} and {b.name} overlap (bytes {b.offset}..{a.offset + a.nbytes})")
    return GgufHeader(path, version, kv, tensors, alignment, data_offset, size)


def read_gguf_header(path: str) -> GgufHeader:
    fd = open_regular(path, "GGUF file")
    try:
        return parse_gguf_header(fd, path)
    finally:
        os.close(fd)

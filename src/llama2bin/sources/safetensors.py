"""Read .safetensors files lazily: parse the header, describe every tensor as a RawTensor.

Why our own reader rather than the `safetensors` package: its numpy API cannot return
bfloat16 (numpy has no such dtype), and its torch API would import torch and materialise
whole tensors; `safe_open` maps the file, and every page a read touches then counts in this
process's RSS until the map is dropped. The format is simple enough to read directly:
8 bytes little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
then the data, each tensor contiguous and row-major at `8 + N + data_offsets[0]`. Rows are
then read with os.preadv (see RawTensor), straight from the page cache into one buffer.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from ..errors import Llama2binError
from ..safe_io import parse_json
from .base import DTYPE_ITEMSIZE, FilePool, RawTensor

# A header is a few hundred bytes per tensor; Llama-scale checkpoints have ~300 tensors per
# file (~100 KB of header). 16 MiB is far above any real header and bounds what a hostile
# length (or 100 MB of `__metadata__`) can make us read and parse. The safetensors package
# allows 100 MB; parsing that much JSON costs gigabytes of Python objects, so we stop earlier.
MAX_HEADER_BYTES = 16 << 20

METADATA_KEY = "__metadata__"

# Bytes per element of every dtype the format defines, so that data_offsets can be checked
# against the shape even for tensors we would not read. Unknown (newer, sub-byte) dtypes are
# still range-checked; reading them is refused in `tensor()`.
_ITEMSIZE = {
    **DTYPE_ITEMSIZE,
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8,
}  # fmt: skip


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (not a bool, not a float like 64.9: never truncated)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numel_upto(shape: list[int], limit: int) -> int:
    """math.prod(shape), or limit + 1 once it exceeds `limit`: a hostile header's thousands of
    huge dims are never multiplied out in full."""
    if 0 in shape:
        return 0
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > limit:
            return limit + 1
    return numel


class SafetensorsFile:
    """One .safetensors file: `names` in file order, `tensor(name) -> RawTensor` (nothing read yet).

    The header is checked whole before any tensor is described: strict JSON (no duplicate
    names, no NaN), integer dims, data_offsets matching dtype x shape, inside the data
    section and not overlapping another tensor's bytes (no tensor aliasing another)."""

    def __init__(self, path: str, pool: FilePool):
        self.path = path
        self.pool = pool
        fd = pool.fd(path)
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise Llama2binError(f"{path}: too short ({size} bytes) to be a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            raise Llama2binError(
                f"{path}: not a safetensors file (header length {header_len} in a {size}-byte file)"
            )
        if header_len > MAX_HEADER_BYTES:
            raise Llama2binError(f"{path}: safetensors header of {header_len} bytes is too large (limit {MAX_HEADER_BYTES})")
        raw = os.pread(fd, header_len, 8)
        if len(raw) != header_len:
            raise Llama2binError(f"{path}: changed size while its header was read")
        header = parse_json(raw, f"{path}: safetensors header")
        if not isinstance(header, dict):
            raise Llama2binError(f"{path}: corrupt safetensors header: not a JSON object")
        meta = header.pop(METADATA_KEY, {})
        # The format defines __metadata__ as a string -> string map.
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise Llama2binError(f"{path}: corrupt safetensors header: {METADATA_KEY} is not a map of strings")
        self.metadata: dict[str, Any] = meta
        self._data_start = 8 + header_len
        self._entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
        ranges: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            self._entries[name], begin, end = self._check_entry(name, entry, size)
            ranges.append((begin, end, name))
        ranges.sort()
        # Bytes of the data section no tensor covers (gaps, trailing bytes): readers ignore them;
        # verifying a file llama2bin wrote flags them (verify_hf).
        self.unaccounted_bytes = size - self._data_start - sum(end - begin for begin, end, _ in ranges)
        for (_, prev_end, prev), (begin, end, name) in zip(ranges, ranges[1:], strict=False):
            if begin < prev_end:
                raise Llama2binError(
                    f"{path}: tensor {name}: bytes [{begin}, {end}) overlap tensor {prev}'s (one tensor aliasing another)"
                )

    def _check_entry(self, name: str, entry: Any, size: int) -> tuple[tuple[str, tuple[int, ...], int], int, int]:
        """((dtype, shape, absolute offset), begin, end) of one header entry, all of it checked."""
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise Llama2binError(f"{self.path}: tensor {name}: malformed header entry {entry!r:.120}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise Llama2binError(f"{self.path}: tensor {name}: dtype {dtype!r:.60} is not a string")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise Llama2binError(f"{self.path}: tensor {name}: shape {shape!r:.80} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise Llama2binError(f"{self.path}: tensor {name}: data_offsets {offsets!r:.80} are not two non-negative integers")
        begin, end = offsets
        if begin > end:
            raise Llama2binError(f"{self.path}: tensor {name}: invalid offsets [{begin}, {end}]")
        if self._data_start + end > size:
            raise Llama2binError(f"{self.path}: tensor {name}: data runs past the end of the file (truncated)")
        itemsize = _ITEMSIZE.get(dtype)
        if itemsize is not None and end - begin != _numel_upto(shape, size) * itemsize:
            raise Llama2binError(
                f"{self.path}: tensor {name}: {end - begin} bytes of data for shape {shape} {dtype}"
            )
        return (dtype, tuple(shape), self._data_start + begin), begin, end

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def tensor(self, name: str) -> RawTensor:
        dtype, shape, offset = self._entries[name]
        if dtype not in DTYPE_ITEMSIZE:
            raise Llama2binError(f"{self.path}: tensor {name} has dtype {dtype}; only F32, F16 and BF16 weights are read")
        return RawTensor(name=name, shape=shape, path=self.path, offset=offset, dtype=dtype, pool=self.pool, key=name)

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

import json
import math
import os
import struct
from typing import Any

from ..errors import Llama2binError
from .base import DTYPE_ITEMSIZE, FilePool, RawTensor

# A header is a few hundred bytes per tensor; Llama-scale checkpoints have ~300 tensors per
# file. 100 MB is far above any real header and bounds what a hostile length can make us read.
MAX_HEADER_BYTES = 100 << 20

METADATA_KEY = "__metadata__"


class SafetensorsFile:
    """One .safetensors file: `names` in file order, `tensor(name) -> RawTensor` (nothing read yet)."""

    def __init__(self, path: str, pool: FilePool):
        self.path = path
        self.pool = pool
        fd = pool.fd(path)
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        if len(head) < 8:
            raise Llama2binError(f"{path}: too short ({size} bytes) to be a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise Llama2binError(
                f"{path}: not a safetensors file (header length {header_len} in a {size}-byte file)"
            )
        raw = os.pread(fd, header_len, 8)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Llama2binError(f"{path}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise Llama2binError(f"{path}: corrupt safetensors header: not a JSON object")
        meta = header.pop(METADATA_KEY, None)
        self.metadata: dict[str, Any] = meta if isinstance(meta, dict) else {}
        self._data_start = 8 + header_len
        self._entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
        for name, entry in header.items():
            self._entries[name] = self._check_entry(name, entry, size)

    def _check_entry(self, name: str, entry: Any, size: int) -> tuple[str, tuple[int, ...], int]:
        try:
            dtype = entry["dtype"]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise Llama2binError(f"{self.path}: tensor {name}: malformed header entry {entry!r:.120}") from None
        if any(s < 0 for s in shape) or not 0 <= begin <= end:
            raise Llama2binError(f"{self.path}: tensor {name}: invalid shape {list(shape)} or offsets [{begin}, {end}]")
        if self._data_start + end > size:
            raise Llama2binError(f"{self.path}: tensor {name}: data runs past the end of the file (truncated)")
        itemsize = DTYPE_ITEMSIZE.get(dtype)
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            raise Llama2binError(
                f"{self.path}: tensor {name}: {end - begin} bytes of data for shape {list(shape)} {dtype}"
            )
        return dtype, shape, self._data_start + begin

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

"""The GGUF header as bytes: typed key/value metadata, tensor infos, padding to the data section.

Byte for byte what gguf-py's GGUFWriter writes for the same keys (in the same order) and tensor
infos (tests/test_gguf_header.py compares them): `write_header_to_file` + `write_kv_data_to_file`
+ `write_ti_data_to_file` + the zero padding it writes before the first tensor. Written here
rather than through GGUFWriter because the writer's API is file-at-a-time (it wants every tensor
before it writes a byte), while our layouts need the header and every tensor's offset up front,
to fill all outputs with positional writes in one pass over the source; importing the gguf
package also costs the writer's hot path ~0.3 s (yaml, requests).

Conventions copied from GGUFWriter, because they change bytes:
- keys are written in insertion order; `add_string` drops an empty string and `add_array` an empty
  array (the key is then absent), so `KV` lists built by gguf_plan skip them the same way;
- an array's element type is that of its elements: Python str/bytes -> STRING, float -> FLOAT32,
  int -> INT32, bool -> BOOL (GGUFValueType.get_type), unless given;
- FLOAT32 values are rounded from Python floats by struct "f" (round to nearest even);
- a tensor's offset is relative to the data section, each tensor padded to the alignment, and
  the file ends with the last tensor's padding.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sources.gguf_file import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    SCALAR_CODES,
    GgmlType,
    ValueType,
    pad_to,
    tensor_nbytes,
)

# numpy dtypes that pack numeric arrays exactly as struct does element by element
_ARRAY_DTYPES = {
    ValueType.UINT8: "<u1", ValueType.INT8: "<i1", ValueType.UINT16: "<u2", ValueType.INT16: "<i2",
    ValueType.UINT32: "<u4", ValueType.INT32: "<i4", ValueType.FLOAT32: "<f4", ValueType.UINT64: "<u8",
    ValueType.INT64: "<i8", ValueType.FLOAT64: "<f8", ValueType.BOOL: "?",
}


@dataclass(frozen=True)
class KV:
    """One metadata entry. For ARRAY, `sub_type` is the element type (None: from the elements)."""

    key: str
    type: ValueType
    value: Any
    sub_type: ValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the header describes it: name, ne (innermost first), type."""

    name: str
    ne: tuple[int, ...]
    ggml_type: GgmlType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.ne)


def element_type(value: Any) -> ValueType:
    """gguf.GGUFValueType.get_type for one element."""
    if isinstance(value, str | bytes | bytearray):
        return ValueType.STRING
    if isinstance(value, bool):  # before int: bool is an int
        return ValueType.BOOL
    if isinstance(value, int):
        return ValueType.INT32
    if isinstance(value, float):
        return ValueType.FLOAT32
    raise ValueError(f"no GGUF type for {type(value).__name__}")


def pack_string(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return struct.pack("<Q", len(raw)) + raw


def pack_value(vtype: ValueType, value: Any, sub_type: ValueType | None = None) -> bytes:
    """A value without its type tag (the tag precedes it in a KV)."""
    if vtype in SCALAR_CODES:
        return struct.pack("<" + SCALAR_CODES[vtype], value)
    if vtype == ValueType.STRING:
        return pack_string(value)
    if vtype == ValueType.ARRAY:
        if len(value) == 0:
            raise ValueError("GGUF arrays are never empty (GGUFWriter refuses them)")
        ltype = sub_type if sub_type is not None else element_type(value[0])
        if ltype == ValueType.ARRAY:
            raise ValueError("arrays of arrays are not written (llama.cpp cannot read them)")
        head = struct.pack("<IQ", ltype, len(value))
        if ltype == ValueType.STRING:
            return head + b"".join(pack_string(v) for v in value)
        if ltype == ValueType.BOOL:  # struct "?" writes 0/1 per truthiness
            return head + bytes(1 if v else 0 for v in value)
        return head + np.asarray(value, dtype=_ARRAY_DTYPES[ltype]).tobytes()
    raise ValueError(f"unknown GGUF value type {vtype!r}")


def pack_kv(kv: KV) -> bytes:
    return pack_string(kv.key) + struct.pack("<I", kv.type) + pack_value(kv.type, kv.value, kv.sub_type)


def pack_tensor_info(info: TensorInfo, offset: int) -> bytes:
    ne = info.ne
    return pack_string(info.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, info.ggml_type, offset)


@dataclass(frozen=True)
class GgufHeaderBytes:
    """A serialized header and where everything after it goes (absolute file offsets)."""

    header: bytes  # magic .. tensor infos, plus the zero padding up to the data section
    data_offset: int
    tensor_offsets: tuple[int, ...]  # absolute, one per tensor info
    size: int  # the whole file, the last tensor's padding included


def build_header(kvs: Sequence[KV], tensors: Sequence[TensorInfo], alignment: int = DEFAULT_ALIGNMENT) -> GgufHeaderBytes:
    """The header GGUFWriter writes for `kvs` then `tensors`, in these orders."""
    keys = [kv.key for kv in kvs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate GGUF key")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate GGUF tensor name")
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs))]
    parts += [pack_kv(kv) for kv in kvs]
    relative = []
    offset = 0
    for info in tensors:
        parts.append(pack_tensor_info(info, offset))
        relative.append(offset)
        offset += pad_to(info.nbytes, alignment)
    body = b"".join(parts)
    data_offset = pad_to(len(body), alignment)
    header = body + bytes(data_offset - len(body))
    return GgufHeaderBytes(header, data_offset, tuple(data_offset + r for r in relative), data_offset + offset)

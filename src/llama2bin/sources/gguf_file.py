"""GGUF, the file llama.cpp reads: the numbers and names its byte layout fixes.

Shared by the GGUF source (sources/gguf.py, gguf_parse.py), the GGUF outputs (formats/gguf_*) and
their checks, so that writer and reader take every constant from one place. The layout, from
llama.cpp's ggml/src/gguf.cpp and gguf-py (the `gguf` package), all little-endian:

    "GGUF"  uint32 version (3)  uint64 tensor_count  uint64 kv_count
    kv_count x   (string key, uint32 value type, value)
    tensor_count x (string name, uint32 n_dims, n_dims x uint64 ne, uint32 ggml type, uint64 offset)
    zero padding to a multiple of `general.alignment` (32 unless the key says otherwise)
    tensor data: each tensor at data_start + offset, offsets multiples of the alignment, each
    tensor zero-padded to the alignment

A string is a uint64 byte length and that many UTF-8 bytes (no terminator). An array value is a
uint32 element type, a uint64 count and the elements (llama.cpp refuses arrays of arrays; so do
we). `ne` lists a tensor's dimensions innermost first: numpy's (rows, cols) is ne = [cols, rows].
Q and K rows are stored in Meta's interleaved rotary order, the canonical order of this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

import numpy as np

from ..model import LAYER_TENSORS, TensorNaming
from ..rope_freqs import LLAMA3, RopeScaling, default_inv_freq

GGUF_MAGIC: Final = b"GGUF"
GGUF_VERSION: Final = 3  # what we write; version 2 has the same layout and is read too
READABLE_VERSIONS: Final = (2, 3)  # version 1 (uint32 counts) is refused by llama.cpp as well
DEFAULT_ALIGNMENT: Final = 32  # GGUF_DEFAULT_ALIGNMENT
QUANTIZATION_VERSION: Final = 2  # GGML_QNT_VERSION: general.quantization_version
MAX_TENSOR_NAME_BYTES: Final = 63  # GGML_MAX_NAME is 64 including the terminating NUL
MAX_DIMS: Final = 4  # GGML_MAX_DIMS


class ValueType(IntEnum):
    """GGUF metadata value types (gguf.GGUFValueType, enum gguf_type in gguf.h)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct codes (little-endian) of the fixed-size value types; BOOL is one byte, 0 or 1.
SCALAR_CODES: Final = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "?",
    ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d",
}


class GgmlType(IntEnum):
    """The tensor types llama2bin writes and reads (ggml_type ids)."""

    F32 = 0
    F16 = 1
    Q8_0 = 8
    BF16 = 30


# (elements per block, bytes per block). Q8_0: a float16 scale d, then 32 int8 q (block_q8_0).
BLOCK: Final = {GgmlType.F32: (1, 4), GgmlType.F16: (1, 2), GgmlType.Q8_0: (32, 34), GgmlType.BF16: (1, 2)}
Q8_0_BLOCK: Final = 32

# Every ggml type llama.cpp knows: id -> (name, values per block, bytes per block) (gguf-py's
# GGML_QUANT_SIZES), so that a GGUF holding types we do not decode is still measured and checked
# (inspect), and refused by name when read.
GGML_TYPES: Final = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}
for _t in GgmlType:
    assert GGML_TYPES[_t][1:] == BLOCK[_t]


class FileType(IntEnum):
    """general.file_type (gguf.LlamaFileType): what most tensors are; 1-D tensors stay F32."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q8_0 = 7
    MOSTLY_BF16 = 32


def type_name(ggml_type: int) -> str:
    return GGML_TYPES[ggml_type][0] if ggml_type in GGML_TYPES else f"unknown type {ggml_type}"


def tensor_nbytes(ggml_type: int, ne: Sequence[int]) -> int:
    """Bytes of a tensor of type `ggml_type` with dimensions `ne` (innermost first); the row
    length ne[0] must be a whole number of blocks."""
    _, elems, nbytes = GGML_TYPES[ggml_type]
    if ne[0] % elems:
        raise ValueError(f"row length {ne[0]} is not a multiple of {type_name(ggml_type)}'s block of {elems}")
    return math.prod(ne) // elems * nbytes


def pad_to(n: int, alignment: int) -> int:
    """n rounded up to a multiple of `alignment` (GGML_PAD)."""
    return -(-n // alignment) * alignment


# ---- tensor names: canonical (llama2.c/Meta) <-> GGUF (llama.cpp's LLM_TENSOR_NAMES) -------------

GGUF_LAYER_NAMES: Final = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}
assert set(GGUF_LAYER_NAMES) == set(LAYER_TENSORS)
# Layer numbers as llama.cpp writes them: no leading zeros, at most six digits.
GGUF_NAMING: Final = TensorNaming({"tok_embeddings": "token_embd.weight", "norm": "output_norm.weight",
                                   "output": "output.weight"}, GGUF_LAYER_NAMES, "blk.", r"0|[1-9]\d{0,5}")
# Llama 3.1+ rope scaling: per-dimension frequency factors, a generated F32 tensor (not a weight).
ROPE_FREQS: Final = "rope_freqs.weight"


def gguf_tensor_name(canonical: str) -> str:
    """The GGUF name of a canonical tensor ("layers.3.attention.wq" -> "blk.3.attn_q.weight")."""
    return GGUF_NAMING.external(canonical)


def canonical_tensor_name(gguf_name: str) -> str | None:
    """The canonical name of a llama GGUF weight, or None if it is not one."""
    return GGUF_NAMING.canonical(gguf_name)


# ---- rope_freqs.weight: Llama 3 rope scaling as the converter writes it ---------------------------


def _rdiv(scalar: float, t: np.float32) -> np.float32:
    """torch's `python scalar / float32 tensor`: the reciprocal, then a product (Tensor.__rtruediv__)."""
    return np.float32(np.float32(1) / t) * np.float32(scalar)


def llama3_rope_factors(head_size: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """rope_freqs.weight as LlamaModel.generate_extra_tensors computes it, bit for bit.

    Its torch float32 steps one by one: `1.0 / (base ** (arange(0, dim, 2) / dim))` is
    rope_freqs.default_inv_freq (torch's powf reproduced by torch_cpu_math); then per frequency,
    on 0-d tensors, `2 * math.pi / freq` and `old_context_len / wavelen` are reciprocal-then-
    product (Tensor.__rtruediv__), Python floats meet tensors rounded to float32, and the list of
    1s, factors and tensors becomes float32."""
    assert scaling.rope_type == LLAMA3
    f32 = np.float32
    low, high, old = scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max_position_embeddings
    assert low is not None and high is not None and old is not None
    low_wavelen, high_wavelen = old / low, old / high  # Python floats, as in the converter
    out = np.empty(head_size // 2, dtype=np.float32)
    for i, freq in enumerate(default_inv_freq(theta, head_size)):
        wavelen = _rdiv(2 * math.pi, freq)
        if wavelen < f32(high_wavelen):
            out[i] = 1
        elif wavelen > f32(low_wavelen):
            out[i] = f32(scaling.factor)
        else:
            smooth = (_rdiv(old, wavelen) - f32(low)) / f32(high - low)
            out[i] = _rdiv(1, (f32(1) - smooth) / f32(scaling.factor) + smooth)
    return out

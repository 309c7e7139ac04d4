"""Independent read-back of a GGUF output: parsed by gguf's GGUFReader, compared with the source.

Independent of the writer twice over: the file is parsed by llama.cpp's own gguf-py reader
(not by sources/gguf_parse.py nor by the serializer), and every expected tensor value is
computed from the source's float32 values by plain numpy formulas written here, not by the
encoders of formats/gguf_encode.py:

- F32: bit for bit the source;
- F16: bit for bit `astype(float16)` of the source (IEEE round to nearest even);
- BF16: the correctly rounded bfloat16 of the source, chosen between the two neighbouring
  bfloat16 values in float64 arithmetic (ties to even), not by the writer's bit trick;
- Q8_0: per block of 32, the float16 scale equals a fresh `(amax / 127).astype(float16)`, and
  q equals roundf(x * (1 / d)) in float32 computed with floor (gguf-py's np_roundf idea); every
  value lies within the exact bound of that arithmetic: |x - q*d16| <= d32/2 + |q| * |d32 - d16|
  (q is rounded with the float32 scale d32 while d16 is stored, so "within d/2" alone can fail by
  up to 127 * 2^-11 * d32: ~6% of d). The worst |x - q*d16| / d16 is reported.
- metadata: every key of the file against the keys the source implies (type, value, order - the
  order is part of the byte-level parity with the converter), plus the llama.* hyper-parameters
  checked against the source's ModelConfig directly.

Memory: GGUFReader maps the whole file; each row chunk's pages are released (madvise
MADV_DONTNEED) once compared, so resident memory stays at a chunk, not the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..formats.gguf_header import KV
from ..formats.gguf_plan import GGUF_FILE_TYPES, MATRIX_TYPE
from ..formats.gguf_write import GgufLayout, GgufModelInfo, gguf_layout
from ..safe_io import open_regular
from ..sources.base import Source, row_chunks
from ..sources.gguf_file import ROPE_FREQS, GgmlType, ValueType
from .tensor import TensorCheckResult, TensorStats

_PAGE = mmap.PAGESIZE


def _sha256(path: str) -> str:
    fd = open_regular(path, "GGUF output")
    try:
        h, offset = hashlib.sha256(), 0
        while block := os.pread(fd, 1 << 20, offset):
            h.update(block)
            offset += len(block)
        return h.hexdigest()
    finally:
        os.close(fd)


def _field_value(field: Any) -> tuple[list[int], Any]:
    """(types, value) of a GGUFReader field: scalars as Python values, strings as bytes, arrays as
    lists (of bytes for strings)."""
    types = [int(t) for t in field.types]
    if types[0] == ValueType.STRING:
        return types, bytes(field.parts[field.data[0]])
    if types[0] == ValueType.ARRAY:
        if types[-1] == ValueType.STRING:
            return types, [bytes(field.parts[i]) for i in field.data]
        return types, [field.parts[i].tolist()[0] for i in field.data]
    return types, field.parts[field.data[0]].tolist()[0]


def _expected_value(kv: KV) -> tuple[list[int], Any]:
    def norm(vtype: ValueType, v: Any) -> Any:
        if vtype == ValueType.STRING:
            return v.encode("utf-8") if isinstance(v, str) else bytes(v)
        if vtype == ValueType.FLOAT32:
            return float(np.float32(v))
        if vtype == ValueType.BOOL:
            return bool(v)
        return v

    if kv.type == ValueType.ARRAY:
        assert kv.sub_type is not None
        return [int(kv.type), int(kv.sub_type)], [norm(kv.sub_type, v) for v in kv.value]
    return [int(kv.type)], norm(kv.type, kv.value)


def check_metadata(reader: Any, layout: GgufLayout, where: str) -> list[str]:
    failures = []
    got = {f.name: f for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    want = {kv.key: kv for kv in layout.kvs}
    for key in sorted(set(want) - set(got)):
        failures.append(f"{where}: metadata key {key} is missing")
    for key in sorted(set(got) - set(want)):
        failures.append(f"{where}: unexpected metadata key {key}")
    for key in sorted(set(got) & set(want)):
        if _field_value(got[key]) != _expected_value(want[key]):
            types, value = _field_value(got[key])
            shown = f"an array of {len(value)}" if isinstance(value, list) else repr(value)[:80]
            failures.append(f"{where}: metadata {key} is {shown} (types {types}), expected {_expected_value(want[key])[1]!r:.80}")
    if not failures and list(got) != list(want):
        failures.append(f"{where}: metadata keys are not in the expected order")
    cfg = layout.config
    direct = {  # the hyper-parameters, straight from the source's config
        "llama.embedding_length": cfg.dim, "llama.feed_forward_length": cfg.hidden_dim, "llama.block_count": cfg.n_layers,
        "llama.attention.head_count": cfg.n_heads, "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.context_length": cfg.max_seq_len, "llama.vocab_size": cfg.vocab_size,
        "llama.rope.dimension_count": cfg.head_size, "llama.rope.freq_base": float(np.float32(cfg.rope_theta)),
        "llama.attention.layer_norm_rms_epsilon": float(np.float32(cfg.norm_eps)),
        "general.file_type": int(GGUF_FILE_TYPES[layout.format]), "general.architecture": b"llama",
    }
    for key, value in direct.items():
        if key not in got or _field_value(got[key])[1] != value:
            failures.append(f"{where}: metadata {key} does not hold the source's {value!r}")
    return failures


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """Correctly rounded bfloat16 bits of finite float32 `x`, ties to even, in float64."""
    bits = x.view(np.uint32)
    low = (bits & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)  # toward zero
    high_bits = (bits & np.uint32(0xFFFF0000)) + np.uint32(0x10000)  # away from zero
    high = high_bits.view(np.float32).astype(np.float64)
    xd = x.astype(np.float64)
    d_low, d_high = np.abs(xd - low), np.abs(high - xd)
    even_low = ((bits >> 16) & 1) == 0
    take_high = (d_high < d_low) | ((d_high == d_low) & ~even_low)
    return np.where(take_high, high_bits >> 16, bits >> 16).astype(np.uint16)


def _q8_0_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float32 d, float16 d, int8 q) of blocks of 32 as ggml's reference quantizer defines them."""
    blocks = x.reshape(-1, 32)
    d32 = np.abs(blocks).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        ident = np.where(d32 == 0, np.float32(0), np.float32(1) / d32).astype(np.float32)
        ident[~np.isfinite(ident)] = 0  # see formats/gguf_encode.py: both references give q = 0
        t = blocks * ident[:, None]
    a = np.abs(t)
    rounded = np.floor(a) + np.floor(2 * (a - np.floor(a)))  # round half away from zero, exactly
    return d32, d32.astype(np.float16), (np.sign(t) * rounded).astype(np.int8)


class _Compare:
    def __init__(self, reader: Any, where: str, result: TensorCheckResult):
        self.reader, self.where, self.result = reader, where, result
        self.mm = getattr(reader.data, "_mmap", None)
        self.worst_q8_ratio = 0.0

    def release(self, arr: np.ndarray) -> None:
        """Drop the mapped pages behind `arr` from this process (the kernel keeps them cached)."""
        if self.mm is None or arr.size == 0:
            return
        start = arr.__array_interface__["data"][0] - self.reader.data.__array_interface__["data"][0]
        begin = start // _PAGE * _PAGE
        self.mm.madvise(mmap.MADV_DONTNEED, begin, start + arr.nbytes - begin)

    def tensor(self, source: Source, name: str, tensor: Any, ggml_type: GgmlType) -> None:
        ref = source.tensor(name)
        stats = TensorStats(tensor.name, list(ref.shape), ggml_type.name.lower(), 32 if ggml_type == GgmlType.Q8_0 else None)
        data = tensor.data.reshape(ref.rows, -1)
        failed = False
        for start, stop in row_chunks(ref):
            x = np.ascontiguousarray(ref.read_rows(start, stop)).reshape(-1)
            raw = np.ascontiguousarray(data[start:stop]).reshape(-1)
            got, problem = self._decode_and_check(x, raw, ggml_type)
            self.release(data[start:stop])
            stats.add(x, got)
            if problem and not failed:
                failed = True
                self.result.failures.append(f"{self.where}: tensor {tensor.name} rows {start}..{stop}: {problem}")
        self.result.tensors.append(stats.finish())

    def _decode_and_check(self, x: np.ndarray, raw: np.ndarray, ggml_type: GgmlType) -> tuple[np.ndarray, str | None]:
        if ggml_type == GgmlType.F32:
            got = raw.view(np.float32)
            same = np.array_equal(got.view(np.uint32), x.view(np.uint32))
            return got, None if same else "float32 values differ from the source"
        if ggml_type == GgmlType.F16:
            got = raw.view(np.float16)
            ok = np.array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))
            return got.astype(np.float32), None if ok else "float16 values are not the source rounded to nearest even"
        if ggml_type == GgmlType.BF16:
            bits = raw.view(np.uint16)
            got = (bits.astype(np.uint32) << 16).view(np.float32)
            same = np.array_equal(bits, _bf16_reference(x))
            return got, None if same else "bfloat16 values are not the source correctly rounded"
        blocks = raw.reshape(-1, 34)
        d16 = np.ascontiguousarray(blocks[:, :2]).view(np.float16).reshape(-1)
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8)
        got = (q.astype(np.float32) * d16.astype(np.float32)[:, None]).reshape(-1)
        d32, want_d16, want_q = _q8_0_reference(x)
        err = np.abs(got.astype(np.float64) - x.astype(np.float64)).reshape(-1, 32)
        bound = d32.astype(np.float64)[:, None] * (0.5 + 2.0**-20) + np.abs(q) * np.abs(
            d32.astype(np.float64) - d16.astype(np.float64))[:, None]
        nonzero = d16 != 0
        if nonzero.any():
            ratio = err[nonzero].max(axis=1) / d16[nonzero].astype(np.float64)
            self.worst_q8_ratio = max(self.worst_q8_ratio, float(ratio.max()))
        if not np.array_equal(d16.view(np.uint16), want_d16.view(np.uint16)):
            return got, "Q8_0 scales differ from a fresh quantization"
        if not np.array_equal(q, want_q):
            return got, "Q8_0 values differ from a fresh quantization"
        if (err > bound).any():
            return got, "a Q8_0 value lies beyond the quantization bound"
        return got, None


def verify_gguf(path: str, source: Source, info: GgufModelInfo, format_name: str) -> TensorCheckResult:
    """Read `path` back with GGUFReader and compare it with `source` (see the module docstring)."""
    from gguf import GGUFReader  # the verify-time dependency: llama.cpp's own gguf-py

    layout = gguf_layout(format_name, source.config, info)
    q8 = MATRIX_TYPE[GGUF_FILE_TYPES[format_name]] == GgmlType.Q8_0
    result = TensorCheckResult(path, format_name, os.path.getsize(path), _sha256(path), 32 if q8 else None, {},
                               source.describe(), source_quantized=getattr(source, "quantized", None))
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as e:  # GGUFReader's own refusals
        raise Llama2binError(f"{path}: gguf's GGUFReader cannot read it: {e}") from None
    result.header = {f.name: _field_value(f)[1] for f in reader.fields.values()
                     if not f.name.startswith("GGUF.") and len(f.data) <= 1}
    result.header = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in result.header.items()}
    if os.path.getsize(path) != layout.size:
        result.failures.append(f"{path}: {os.path.getsize(path)} bytes, expected {layout.size}")
    result.failures += check_metadata(reader, layout, path)
    compare = _Compare(reader, path, result)
    by_name = {t.name: t for t in reader.tensors}
    want = {sec.gguf_name: sec for sec in layout.sections}
    if set(by_name) != set(want):
        missing, extra = sorted(set(want) - set(by_name)), sorted(set(by_name) - set(want))
        result.failures.append(f"{path}: tensors differ from the source's: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, sec in want.items():
        t = by_name.get(name)
        if t is None:
            continue
        if int(t.tensor_type) != sec.ggml_type or tuple(int(n) for n in t.shape) != tuple(reversed(sec.shape)):
            result.failures.append(f"{path}: tensor {name} is {t.tensor_type.name} {list(t.shape)}, "
                                   f"expected {sec.ggml_type.name} {list(reversed(sec.shape))}")
            continue
        if sec.tensor == ROPE_FREQS:
            if not np.array_equal(np.asarray(t.data).view(np.uint32), layout.generated[ROPE_FREQS].view(np.uint32)):
                result.failures.append(f"{path}: tensor {name} is not the rope scaling factors of the source")
            continue
        compare.tensor(source, sec.tensor, t, sec.ggml_type)
    if q8:
        result.header["q8_0_worst_error_over_d"] = round(compare.worst_q8_ratio, 6)
    return result

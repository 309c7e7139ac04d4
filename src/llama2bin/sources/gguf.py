"""A llama GGUF as a checkpoint (`--gguf FILE`, config `source: gguf`).

The header is read by our bounded parser (gguf_parse.py); the model is general.architecture
"llama" with llama.* hyper-parameters, and tensors of type F32, F16, BF16 or Q8_0 named as
llama.cpp names them (gguf_file.py), each mapped to its canonical name. Q and K are already in
the interleaved rotary order. Rows are read lazily with preadv into reused buffers, never by
mapping the file (a mapping's touched pages count against the job's memory): F16/BF16 widen
to float32 exactly; Q8_0 blocks dequantize to q * d in float32 - exact as well (8-bit q times an
11-bit float16 mantissa fits float32's 24), which is what ggml's dequantize_row_q8_0 computes.

A Q8_0 tensor is also offered as stored (encoding Q8_0, `group_size` 32, `read_q8`: int8 q and
the float16 scales widened to float32, exact), as every Q8_0 TensorRef is (sources/base.py), so a
writer targeting Q8_0 at group size 32 (v1/v2) copies q and scales instead of quantizing the
dequantized values a second time; the source's `quantization` records that it is Q8_0 (outputs
in float are then dequantized, and verify says so).

Rope scaling: linear from llama.rope.scaling.type/factor; Llama 3's from the rope_freqs tensor
(see GgufSource._rope_scaling). Like a rotary base other than 10000, it needs --allow-rope-theta.

Refused, each by name: another architecture; hyper-parameters missing or out of range, given
per layer (arrays), or that the formats cannot express - other rope scaling types, rope_freqs
factors that are not published Llama 3 settings, a rotary dimension count, key or value length
other than the head size, experts; tensor types other than the four; unknown or missing tensors.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..constants import DEFAULT_MAX_SEQ_LEN
from ..errors import Llama2binError
from ..model import ModelConfig
from ..rope_freqs import LINEAR, LLAMA3, RopeScaling
from .base import FilePool, RawTensor, Source, SourceQuantization, TensorEncoding, TensorRef, check_tensors, split_classifier
from .gguf_file import (
    Q8_0_BLOCK,
    ROPE_FREQS,
    GgmlType,
    ValueType,
    canonical_tensor_name,
    gguf_tensor_name,
    llama3_rope_factors,
    type_name,
)
from .gguf_parse import GgufHeader, GgufValue, parse_gguf_header
from .policy import rope_departures

_INT_TYPES = (ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32,
              ValueType.INT32, ValueType.UINT64, ValueType.INT64)
_FLOAT_TYPES = (ValueType.FLOAT32, ValueType.FLOAT64)
_RAW_DTYPES = {GgmlType.F32: "F32", GgmlType.F16: "F16", GgmlType.BF16: "BF16"}
_A = "llama."


@dataclass
class GgufQ8Tensor(TensorRef):
    """A Q8_0 tensor of a GGUF: blocks of (float16 d, 32 int8 q) from `offset` on."""

    name: str
    shape: tuple[int, ...]
    path: str
    offset: int
    pool: FilePool = field(repr=False, compare=False)
    group_size: int = Q8_0_BLOCK
    encoding = TensorEncoding.Q8_0

    def _blocks(self, start: int, stop: int) -> np.ndarray:
        per_row = self.cols // Q8_0_BLOCK
        raw = np.empty((stop - start) * per_row * 34, dtype=np.uint8)
        if os.preadv(self.pool.fd(self.path), [raw], self.offset + start * per_row * 34) != raw.size:
            raise Llama2binError(f"{self.path}: tensor {self.name} is truncated (file too short)")
        return raw.reshape(-1, 34)

    def read_q8(self, start: int, stop: int, q_out: np.ndarray | None = None,
                s_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as stored: (int8 q, flat; float32 scales, one per 32 values); the
        blocks are read whole, so `q_out`/`s_out` are not needed."""
        blocks = self._blocks(start, stop)
        scales = np.ascontiguousarray(blocks[:, :2]).view("<f2").reshape(-1).astype(np.float32)
        return np.ascontiguousarray(blocks[:, 2:]).view(np.int8).reshape(-1), scales

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.read_rows_into(start, stop, np.empty((stop - start) * self.cols, dtype=np.float32))

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        q, scales = self.read_q8(start, stop)
        values = out[: q.size].reshape(-1, Q8_0_BLOCK)
        np.multiply(q.reshape(-1, Q8_0_BLOCK), scales[:, None], out=values)  # int8 * float32: exact
        return values.reshape(stop - start, self.cols)


def _describe(v: GgufValue) -> str:
    if v.type == ValueType.ARRAY:
        return f"an array of {len(v.value)} {v.sub_type.name if v.sub_type is not None else ''}"
    return f"{v.type.name} {v.value!r:.60}"


class _Keys:
    """Typed access to the metadata, each refusal naming the key."""

    def __init__(self, header: GgufHeader):
        self.kv, self.path = header.kv, header.path

    def has(self, key: str) -> bool:
        return key in self.kv

    def string(self, key: str) -> str | None:
        v = self.kv.get(key)
        if v is None:
            return None
        if v.type != ValueType.STRING:
            raise Llama2binError(f"{self.path}: {key} must be a string, got {_describe(v)}")
        try:
            return v.value.decode("utf-8")
        except UnicodeDecodeError:
            raise Llama2binError(f"{self.path}: {key} is not valid UTF-8") from None

    def int(self, key: str, default: int | None = None) -> int:
        v = self.kv.get(key)
        if v is None:
            if default is None:
                raise Llama2binError(f"{self.path}: no {key}")
            return default
        if v.type not in _INT_TYPES:
            what = " (per-layer values are not supported)" if v.type == ValueType.ARRAY else ""
            raise Llama2binError(f"{self.path}: {key} must be an integer, got {_describe(v)}{what}")
        return int(v.value)

    def float(self, key: str, default: float | None = None) -> float:
        v = self.kv.get(key)
        if v is None:
            if default is None:
                raise Llama2binError(f"{self.path}: no {key}")
            return default
        if v.type not in _FLOAT_TYPES or not math.isfinite(v.value) or v.value <= 0:
            raise Llama2binError(f"{self.path}: {key} must be a positive finite number, got {_describe(v)}")
        return float(v.value)


def _check_expressible(keys: _Keys, head_size: int) -> None:
    """Refuse llama.* settings that change the computation beyond what ModelConfig describes."""
    if keys.float(_A + "rope.scale_linear", 1.0) != 1.0:  # an old spelling of linear scaling
        raise Llama2binError(f"{keys.path}: {_A}rope.scale_linear is set: write it as rope.scaling.type linear")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if keys.has(_A + key) and keys.int(_A + key) != head_size:
            raise Llama2binError(
                f"{keys.path}: {_A}{key} = {keys.int(_A + key)}, but the head size is {head_size} (embedding_length / head_count)"
            )
    experts = keys.int(_A + "expert_count", 0)
    if experts:
        raise Llama2binError(f"{keys.path}: {_A}expert_count = {experts}: mixture-of-experts models are not supported")


class GgufSource(Source):
    kind = "gguf"

    def __init__(self, path: str, max_seq_len: int | None = None, allow_rope_theta: bool = False):
        self.path = path
        self._pool = FilePool()
        try:
            self.header = parse_gguf_header(self._pool.fd(path), path)
            self._open(max_seq_len, allow_rope_theta)
        except BaseException:
            self._pool.close()
            raise

    def _open(self, max_seq_len: int | None, allow_rope_theta: bool) -> None:
        header, path = self.header, self.path
        keys = _Keys(header)
        arch = keys.string("general.architecture")
        if arch != "llama":
            raise Llama2binError(f"{path}: general.architecture = {arch!r}: only llama GGUFs are read")
        dim, n_heads = keys.int(_A + "embedding_length"), keys.int(_A + "attention.head_count")
        head_size = dim // n_heads if n_heads > 0 else 0
        _check_expressible(keys, head_size)
        theta = keys.float(_A + "rope.freq_base", 10000.0)
        scaling, scaling_field = self._rope_scaling(keys, head_size, theta)
        theta, departures = rope_departures(path, _A + "rope.freq_base", theta, scaling, scaling_field, allow_rope_theta)
        refs: dict[str, TensorRef] = {}
        for info in header.tensors:
            if info.name == ROPE_FREQS:
                continue
            name = canonical_tensor_name(info.name)
            if name is None:
                raise Llama2binError(f"{path}: unexpected tensor {info.name}: not part of a llama model")
            if info.ggml_type in _RAW_DTYPES:
                dtype = _RAW_DTYPES[GgmlType(info.ggml_type)]
                refs[name] = RawTensor(info.name, info.shape, path, info.offset, dtype, self._pool)
            elif info.ggml_type == GgmlType.Q8_0:
                refs[name] = GgufQ8Tensor(info.name, info.shape, path, info.offset, self._pool)
            else:
                raise Llama2binError(f"{path}: tensor {info.name} has type {type_name(info.ggml_type)}: "
                                     "llama2bin reads F32, F16, BF16 and Q8_0 GGUFs")
        embd = refs.get("tok_embeddings")
        if embd is None:
            raise Llama2binError(f"{path}: missing tensor token_embd.weight")
        tokens = header.kv.get("tokenizer.ggml.tokens")
        vocab_default = len(tokens.value) if tokens is not None and tokens.type == ValueType.ARRAY else embd.shape[0]
        shared = split_classifier(refs)
        if max_seq_len is None:
            max_seq_len = keys.int(_A + "context_length", DEFAULT_MAX_SEQ_LEN)
        config = ModelConfig(
            dim=dim,
            hidden_dim=keys.int(_A + "feed_forward_length"),
            n_layers=keys.int(_A + "block_count"),
            n_heads=n_heads,
            n_kv_heads=keys.int(_A + "attention.head_count_kv", n_heads),
            vocab_size=keys.int(_A + "vocab_size", vocab_default),
            max_seq_len=max_seq_len,
            shared_classifier=shared,
            norm_eps=keys.float(_A + "attention.layer_norm_rms_epsilon"),
            rope_theta=theta,
            rope_scaling=scaling,
            accepted_departures=departures,
            bos_id=keys.int("tokenizer.ggml.bos_token_id") if keys.has("tokenizer.ggml.bos_token_id") else None,
            eos_ids=(keys.int("tokenizer.ggml.eos_token_id"),) if keys.has("tokenizer.ggml.eos_token_id") else (),
        )
        config.validate(path)
        check_tensors(path, config, refs, display=gguf_tensor_name, implied_by="its llama.* metadata")
        self.config = config
        self._refs = refs
        if any(t.encoding == TensorEncoding.Q8_0 for t in refs.values()):
            self.quantization = SourceQuantization("gguf-q8_0", Q8_0_BLOCK)

    def _rope_scaling(self, keys: _Keys, head_size: int, theta: float) -> tuple[RopeScaling | None, str]:
        """Linear scaling from rope.scaling.type/factor; Llama 3 scaling from rope_freqs.weight,
        which stores only the per-frequency factors: they are accepted when they are exactly what
        the converter computes for factor (their largest) with the published low_freq_factor 1,
        high_freq_factor 4 and original context 8192 (Llama 3.1, 3.2), else refused - we cannot
        tell what other parameters produced them."""
        kind = keys.string(_A + "rope.scaling.type")
        freqs = next((t for t in self.header.tensors if t.name == ROPE_FREQS), None)
        if kind not in (None, "none", LINEAR):
            raise Llama2binError(f"{self.path}: {_A}rope.scaling.type = {kind!r}: llama2bin computes linear and llama3 "
                                 "rope scaling only")
        if kind == LINEAR:
            if freqs is not None:
                raise Llama2binError(f"{self.path}: both linear rope scaling and {ROPE_FREQS}: which is meant?")
            return RopeScaling(LINEAR, keys.float(_A + "rope.scaling.factor")), f"{_A}rope.scaling"
        if freqs is None:
            return None, ""
        if freqs.ggml_type != GgmlType.F32 or freqs.ne != (head_size // 2,):
            raise Llama2binError(f"{self.path}: {ROPE_FREQS} must be F32 [{head_size // 2}], "
                                 f"is {type_name(freqs.ggml_type)} {list(freqs.ne)}")
        stored = RawTensor(ROPE_FREQS, (head_size // 2,), self.path, freqs.offset, "F32", self._pool).read_rows(0, 1)
        factor = float(stored.reshape(-1)[-1])
        if not math.isfinite(factor) or factor < 1:
            raise Llama2binError(f"{self.path}: {ROPE_FREQS} ends with {factor!r}, not a Llama 3 scaling factor")
        scaling = RopeScaling(LLAMA3, factor, 1.0, 4.0, 8192)
        if llama3_rope_factors(head_size, theta, scaling).tobytes() != stored.tobytes():
            raise Llama2binError(f"{self.path}: {ROPE_FREQS} is not Llama 3 scaling of factor {factor:g} with low_freq_factor 1, "
                                 "high_freq_factor 4 and original context 8192: its parameters cannot be told")
        return scaling, ROPE_FREQS

    def describe(self) -> dict[str, Any]:
        types: dict[str, int] = {}
        for info in self.header.tensors:
            types[type_name(info.ggml_type)] = types.get(type_name(info.ggml_type), 0) + 1
        described = {**super().describe(), "gguf_version": self.header.version, "tensor_types": dict(sorted(types.items()))}
        if self.quantization is not None:
            described["source_quantized"] = self.quantization.to_json()
        return described

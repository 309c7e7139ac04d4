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
  up to 127 * 2^-11 * d32: ~6% of d); in a block whose 1/d overflows (max |x| below ~3.7e-37)
  both references write q = 0 and d16 = 0, so there the bound is max |x|. The worst
  |x - q*d16| / d16 is reported.
- metadata: every key of the file against the keys the source implies (type, value, order - the
  order is part of the byte-level parity with the converter), plus the llama.* hyper-parameters
  checked against the source's ModelConfig directly.

Structure (keys, tensor names, types, shapes, data offsets) comes from GGUFReader; the tensor
bytes are then read at GGUFReader's offsets with preadv, in row chunks on worker processes (as
checks/tensor.py does for .bin), block by block: GGUFReader's whole-file mapping is never walked,
so resident memory stays at a few chunks, not the file. The sha256 is computed by a side process.
Statistics per tensor are those of checks/tensor.py (max error, RMSE, relative error, SNR, and
for Q8_0 the histogram of per-block max errors), so the reports show GGUF outputs like .bin ones.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..formats.gguf_encode import encoded_nbytes
from ..formats.gguf_header import KV
from ..formats.gguf_plan import GGUF_FILE_TYPES, MATRIX_TYPE
from ..formats.gguf_write import GgufLayout, GgufModelInfo, gguf_layout
from ..formats.output import Output
from ..formats.q8_0 import process_scratch
from ..parallel import ForkedCall, ForkPool, default_workers
from ..safe_io import open_regular
from ..sources.base import Source, row_chunks
from ..sources.gguf_file import GgmlType, ValueType
from .tensor import _HIST_EDGES, COMPILED_KERNEL_MIN_WEIGHTS, TensorCheckResult, TensorStats, sha256_file


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


def _f16_reference(x: np.ndarray) -> np.ndarray:
    """float16 bits of float32 `x`: numpy's cast (IEEE round to nearest even)."""
    return x.astype(np.float16).view(np.uint16)


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """Correctly rounded bfloat16 bits of finite float32 `x`, ties to even, in float64."""
    bits = x.view(np.uint32)
    low_bits = bits & np.uint32(0xFFFF0000)  # toward zero
    high_bits = low_bits + np.uint32(0x10000)  # away from zero
    xd = x.astype(np.float64)
    d_low = np.abs(xd - low_bits.view(np.float32).astype(np.float64))
    d_high = np.abs(high_bits.view(np.float32).astype(np.float64) - xd)
    odd_low = ((bits >> 16) & 1) == 1
    take_high = (d_high < d_low) | ((d_high == d_low) & odd_low)
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


@dataclass
class _ChunkResult:
    failure: str | None = None
    n: int = 0
    max_abs_err: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    worst_over_d: float = 0.0  # Q8_0: max |w - q*d| / d
    hist: np.ndarray | None = None  # Q8_0: per-block max error histogram (checks/tensor.py's bins)
    digest: bytes = b""  # sha256 of the chunk's stored bytes (for the weights' fingerprint)


@dataclass(frozen=True)
class _Task:
    tensor: str  # canonical name
    gguf_name: str
    ggml_type: GgmlType
    offset: int  # of the tensor's data, as GGUFReader reports it
    start: int
    stop: int


BLOCK = 1 << 16  # values per step: temporaries stay in L2
# The compiled check (gguf_readback_jit.py) is loaded from as many F16, BF16 and Q8_0 values as
# the .bin check's (COMPILED_KERNEL_MIN_WEIGHTS); once loaded (the job server) it is used at any size.
_jit: Any = None  # gguf_readback_jit once loaded in this process (forked workers inherit it)
_use_jit = False  # set before the workers fork


def load_compiled() -> bool:
    """Import and compile (or load from numba's cache) the compiled checks; False without numba."""
    global _jit
    if _jit is None:
        from ..formats.q8_fast import import_compiled

        _jit = import_compiled(__package__ + ".gguf_readback_jit", lambda kernel: kernel.warm_up())
    return _jit is not None


def _check_block(x: np.ndarray, raw: np.ndarray, ggml_type: GgmlType, out: _ChunkResult, gmax: list[np.ndarray]) -> str | None:
    """One block of values: the problem found, or None; statistics added to `out`."""
    if ggml_type == GgmlType.F32:
        got = raw.view(np.float32)
        if not np.array_equal(got.view(np.uint32), x.view(np.uint32)):
            return "float32 values differ from the source"
        out.n += x.size  # bit-identical: zero error
        return None
    if _use_jit and ggml_type in (GgmlType.F16, GgmlType.BF16):
        if (verdict := _jit.check_16bit(ggml_type, x, raw, out)) is not False:
            return verdict
    if ggml_type == GgmlType.F16:
        got = raw.view(np.float16)
        if not np.array_equal(got.view(np.uint16), _f16_reference(x)):
            return "float16 values are not the source rounded to nearest even"
        got = got.astype(np.float32)
    elif ggml_type == GgmlType.BF16:
        bits = raw.view(np.uint16)
        if not np.array_equal(bits, _bf16_reference(x)):
            return "bfloat16 values are not the source correctly rounded"
        got = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        blocks = raw.reshape(-1, 34)
        d16 = np.ascontiguousarray(blocks[:, :2]).view(np.float16).reshape(-1)
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8)
        if _use_jit and (verdict := _jit.check_q8_0(x, q, d16, out, gmax)) is not False:
            return verdict
        d32, want_d16, want_q = _q8_0_reference(x)
        if not np.array_equal(d16.view(np.uint16), want_d16.view(np.uint16)):
            return "Q8_0 scales differ from a fresh quantization"
        if not np.array_equal(q, want_q):
            return "Q8_0 values differ from a fresh quantization"
        got = (q.astype(np.float32) * d16.astype(np.float32)[:, None]).reshape(-1)
        err = np.abs(got.astype(np.float64) - x.astype(np.float64)).reshape(-1, 32).max(axis=1)
        # q is rounded with the float32 d (x * fl(1/d32) is within 127 * 2^-23 of x / d32) but the
        # float16 d is stored: |w - q*d16| <= d32 * (1/2 + 2^-14) + |q| * |d32 - d16|
        bound = d32.astype(np.float64) * (0.5 + 2.0**-14) + np.abs(q).max(axis=1) * np.abs(
            d32.astype(np.float64) - d16.astype(np.float64))
        with np.errstate(divide="ignore", over="ignore"):
            flushed = (d32 != 0) & ~np.isfinite(np.float32(1) / d32)
        if flushed.any():  # 1/d overflowed (max |x| < ~3.7e-37): q = 0 and d16 = 0, so the error is |x|
            bound = np.where(flushed, np.abs(x.reshape(-1, 32)).max(axis=1).astype(np.float64), bound)
        if (err > bound).any():
            return "a Q8_0 value lies beyond the quantization bound"
        nonzero = d16 != 0
        if nonzero.any():
            out.worst_over_d = max(out.worst_over_d, float((err[nonzero] / d16[nonzero].astype(np.float64)).max()))
        gmax.append(err)
    diff = got.astype(np.float64) - x.astype(np.float64)
    ref = x.astype(np.float64)
    out.n += x.size
    out.max_abs_err = max(out.max_abs_err, float(np.abs(diff).max(initial=0.0)))
    out.sq_err += float(np.sum(diff * diff))  # pairwise, not BLAS: the same bits everywhere (as checks/tensor.py)
    out.sq_ref += float(np.sum(ref * ref))
    return None


def _check_chunk(task: _Task, source: Source, fd: int, path: str) -> _ChunkResult:
    """Rows [start, stop) of one tensor, read by preadv at GGUFReader's offset (no mapping)."""
    ref_t = source.tensor(task.tensor)
    cols = ref_t.cols
    per_row = encoded_nbytes(task.ggml_type, cols)
    raw = np.empty((task.stop - task.start) * per_row, dtype=np.uint8)
    if os.preadv(fd, [raw], task.offset + task.start * per_row) != raw.size:
        raise Llama2binError(f"{path}: file shrank while being verified")
    # into this process's reused buffer: a fresh 8 MiB array per chunk is fresh pages to fault in
    count = (task.stop - task.start) * cols
    x = np.ascontiguousarray(ref_t.read_rows_into(task.start, task.stop, process_scratch().get("readback_x", count, np.float32)),
                             dtype=np.float32).reshape(-1)
    out = _ChunkResult(digest=hashlib.sha256(raw).digest())
    gmax: list[np.ndarray] = []
    bytes_per_value = encoded_nbytes(task.ggml_type, 32) / 32
    for b in range(0, x.size, BLOCK):  # BLOCK is whole Q8_0 blocks and whole bytes of every type
        n = min(BLOCK, x.size - b)
        problem = _check_block(x[b : b + n], raw[int(b * bytes_per_value) : int((b + n) * bytes_per_value)],
                               task.ggml_type, out, gmax)
        if problem:
            return _ChunkResult(f"{path}: tensor {task.gguf_name} rows {task.start}..{task.stop}: {problem}")
    if gmax:
        errs = np.concatenate(gmax)
        counts = np.bincount(np.searchsorted(_HIST_EDGES, errs, side="right"), minlength=len(_HIST_EDGES) + 1)
        out.hist = counts[1 : len(_HIST_EDGES)].astype(np.int64)
        out.hist[-1] += int(np.count_nonzero(errs == _HIST_EDGES[-1]))
    return out


def _compare_tensors(tasks: list[_Task], source: Source, path: str, result: TensorCheckResult,
                     shapes: dict[str, tuple[int, ...]], workers: int | None) -> float:
    """Run the chunk checks on worker processes; fold their results per tensor, in task order
    (statistics never depend on timing). Returns the worst Q8_0 |w - q*d| / d; sets the weights'
    fingerprint (`weights_sha256`: name, type and the sha256 of each tensor's chunk digests, in
    canonical order, as checks/tensor.py takes it over what it reads)."""
    global _use_jit
    checked = sum((t.stop - t.start) * source.tensor(t.tensor).cols for t in tasks if t.ggml_type != GgmlType.F32)
    _use_jit = checked > 0 and (checked >= COMPILED_KERNEL_MIN_WEIGHTS or _jit is not None) and load_compiled()
    fd = open_regular(path, "GGUF output")
    worst = 0.0
    digests: dict[str, bytes] = {}
    tensor_digest = hashlib.sha256()
    try:
        with ForkPool(tasks, lambda t: _check_chunk(t, source, fd, path), workers or default_workers(result.size)) as pool:
            stats: TensorStats | None = None
            failed = False
            hist: np.ndarray | None = None
            for i, (task, r) in enumerate(zip(tasks, pool.results(), strict=True)):
                if stats is None:
                    q8 = task.ggml_type == GgmlType.Q8_0
                    stats = TensorStats(task.tensor, list(shapes[task.tensor]), task.ggml_type.name.lower(),
                                        32 if q8 else None, hf_name=task.gguf_name)
                    failed, hist = False, (np.zeros(len(_HIST_EDGES) - 1, np.int64) if q8 else None)
                    tensor_digest = hashlib.sha256()
                tensor_digest.update(r.digest)
                if not failed and r.failure:
                    result.failures.append(r.failure)
                    failed = True
                elif not failed:
                    stats.max_abs_err = max(stats.max_abs_err, r.max_abs_err)
                    stats._sq_err, stats._sq_ref, stats._n = stats._sq_err + r.sq_err, stats._sq_ref + r.sq_ref, stats._n + r.n
                    worst = max(worst, r.worst_over_d)
                    if hist is not None and r.hist is not None:
                        hist += r.hist
                if i + 1 == len(tasks) or tasks[i + 1].tensor != task.tensor:
                    if hist is not None and not failed:
                        stats.group_err_hist = hist.tolist()
                    result.tensors.append(stats.finish())
                    digests[task.tensor] = tensor_digest.digest()
                    stats = None
    finally:
        os.close(fd)
    h = hashlib.sha256()
    for name in shapes:  # canonical order
        if name in digests:
            t = next(t for t in tasks if t.tensor == name)
            h.update(f"{name}\0{t.ggml_type.name.lower()}\0".encode() + digests[name])
    result.weights_sha256 = h.hexdigest()
    return worst


def verify_gguf(
    path: str, source: Source, info: GgufModelInfo, format_name: str, threads: int | None = None
) -> TensorCheckResult:
    """Read `path` back with GGUFReader and compare it with `source` (see the module docstring)."""
    from gguf import GGUFReader  # the verify-time dependency: llama.cpp's own gguf-py

    layout = gguf_layout(format_name, source.config, info)
    q8 = MATRIX_TYPE[GGUF_FILE_TYPES[format_name]] == GgmlType.Q8_0
    with ForkedCall(sha256_file, path) as digest:  # a side process hashes the file meanwhile
        result = TensorCheckResult(path, format_name, os.path.getsize(path), "", 32 if q8 else None, {},
                                   source.describe(),
                                   source_quantized=source.quantization.to_json() if source.quantization else None)
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError, KeyError, IndexError) as e:  # GGUFReader's own refusals
            raise Llama2binError(f"{path}: gguf's GGUFReader cannot read it: {e}") from None
        header = {f.name: _field_value(f)[1] for f in reader.fields.values()
                  if not f.name.startswith("GGUF.") and len(f.data) <= 1}
        result.header = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in header.items()}
        if result.size != layout.size:
            result.failures.append(f"{path}: {result.size} bytes, expected {layout.size}")
        result.failures += check_metadata(reader, layout, path)
        by_name = {t.name: t for t in reader.tensors}
        want = {sec.gguf_name: sec for sec in layout.sections}
        if set(by_name) != set(want):
            missing, extra = sorted(set(want) - set(by_name)), sorted(set(by_name) - set(want))
            result.failures.append(f"{path}: tensors differ from the source's: missing {missing[:3]}, unexpected {extra[:3]}")
        tasks = []
        for name, sec in want.items():
            t = by_name.get(name)
            if t is None:
                continue
            if int(t.tensor_type) != sec.ggml_type or tuple(int(n) for n in t.shape) != tuple(reversed(sec.shape)):
                result.failures.append(f"{path}: tensor {name} is {t.tensor_type.name} {list(t.shape)}, "
                                       f"expected {sec.ggml_type.name} {list(reversed(sec.shape))}")
            elif sec.tensor in layout.generated:
                if not np.array_equal(np.asarray(t.data).view(np.uint32), layout.generated[sec.tensor].view(np.uint32)):
                    result.failures.append(f"{path}: tensor {name} is not the rope scaling factors of the source")
            else:
                tasks += [_Task(sec.tensor, name, sec.ggml_type, int(t.data_offset), a, b)
                          for a, b in row_chunks(source.tensor(sec.tensor))]
        del reader, by_name  # the mapping: nothing of the tensors was read through it
        worst = _compare_tensors(tasks, source, path, result, source.config.shapes(), threads) if tasks else 0.0
        if q8:
            result.header["q8_0_worst_error_over_d"] = round(worst, 6)
        result.sha256 = digest.result()
    return result


def check_gguf_output(output: Output, source: Source, quiet: bool = False, threads: int | None = None,
                      tokenizer: str | None = None) -> TensorCheckResult:
    """verify's tensor check of an opened GGUF output: its metadata as the source's ModelConfig
    (GgufOutput.header_failures), then `verify_gguf`, the keys expected from the source with the
    file's own general.name (a label, not a property of the source) and the tokenizer the export
    was given (`tokenizer`, else the source's own; see formats/gguf_output.gguf_model_info)."""
    from ..formats.gguf_output import GgufOutput, gguf_model_info

    assert isinstance(output, GgufOutput), "the GGUF family's check"
    described = {**source.describe(), "config": source.config.to_json()}
    failures = output.header_failures(source.config)
    if failures:  # a different model: comparing tensors would only add noise
        return TensorCheckResult(output.display_name, output.spec.name, output.size, sha256_file(output.path), None,
                                 output.header_json(), described, failures=failures)
    info = gguf_model_info(source, output.model_name or "", tokenizer)
    result = verify_gguf(output.path, source, info, output.spec.name, threads)
    result.file, result.source = output.display_name, described
    return result

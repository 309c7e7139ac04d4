"""Round-trip verification: read an output back and compare every tensor with the source.

Any output (formats.output.Output: a .bin, an hf directory) is checked the same way: its header
against the source's config (the output's own `header_failures`), then every tensor, dispatched
on the encoding the output stores it in (`_CHUNK_CHECKS`): float32 must be bit-identical to the
float32 source; Q8_0 tensors must carry the very scales and q the writer computes from the
source (q8_chunk.py: decided from the error statistics, quantizing again only the few groups
they cannot vouch for), or, carried over from a Q8_0 source, its very q and scales. Per-tensor
error statistics are collected on the way; they are what the quantization-error reports show.

Speed: tensors are compared in row chunks by worker processes (parallel.ForkPool), block by
block in reused buffers (for big models in one compiled pass, q8_chunk_jit.py); meanwhile a side
process computes the file's sha256 and the parent v0's rope tables (formats/rope.py). Tensors
are read with preadv (TensorRef), or, for the compiled pass, a chunk of a float32 or bfloat16
checkpoint mapped and unmapped again (q8_chunk.stats_of_mapped_source), so RSS stays at a few
chunks per process whatever the tensor size.

The weights' fingerprint (`weights_sha256`) is taken over the bytes each chunk reads - float32
values, or Q8_0 q and scales - tensor by tensor in canonical order, so v1 and v2 (the same q
and scales in another file layout) get the same one and different quantizations different ones.
Statistics are sums in a fixed order (numerics.py), never BLAS: the same bits on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .. import parallel
from ..formats import json_version
from ..formats.output import Output
from ..formats.q8_0 import Scratch, process_scratch
from ..formats.rope import rope_chunks, rope_json
from ..model import ModelConfig
from ..parallel import ForkedCall, ForkPool, workers_for
from ..progress import Progress
from ..rope_freqs import RopeScaling
from ..safe_io import open_regular
from ..sources.base import Source, TensorEncoding, TensorRef, row_chunks
from . import numerics, q8_chunk
from .result_json import RopeTablesJson, SourceJson, SourceQuantizedJson

# Per-group max errors are summarised in these log-spaced histogram bins (for reports).
_HIST_EDGES = np.array([0.0, *numerics.powers_of_ten(-36, 0, 4)])


@dataclass
class TensorStats:
    name: str
    shape: list[int]
    encoding: str
    group_size: int | None
    max_abs_err: float = 0.0
    rmse: float = 0.0
    rel_err: float = 0.0
    snr_db: float | None = None  # None: exact (infinite SNR)
    group_err_hist: list[int] | None = None
    hf_name: str | None = None  # the tensor's name in the output when not canonical (hf directory, GGUF)
    _sq_err: float = 0.0
    _sq_ref: float = 0.0
    _n: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        diff = got.astype(np.float64) - ref.astype(np.float64)
        self.max_abs_err = max(self.max_abs_err, float(np.abs(diff).max(initial=0.0)))
        ref64 = ref.astype(np.float64)
        self._sq_err += float(np.sum(diff * diff))  # pairwise, not BLAS: the same bits everywhere
        self._sq_ref += float(np.sum(ref64 * ref64))
        self._n += ref.size

    def finish(self) -> TensorStats:
        self.rmse = math.sqrt(self._sq_err / self._n) if self._n else 0.0
        self.rel_err = math.sqrt(self._sq_err / self._sq_ref) if self._sq_ref else 0.0
        if self._sq_err > 0 and self._sq_ref > 0:
            self.snr_db = 10 * float(numerics.log10(self._sq_ref / self._sq_err))
        return self

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_") and not (k == "hf_name" and v is None)}


@dataclass
class TensorCheckResult:
    """The round trip of one output: header fields and every tensor against the source."""

    file: str
    format: str  # the registered format's name: "0", "1", "1f", "2", "hf"
    size: int
    sha256: str
    group_size: int | None
    header: dict[str, Any]  # the output's own header, as its format has it (config.json for hf)
    source: SourceJson
    failures: list[str] = field(default_factory=list)
    tensors: list[TensorStats] = field(default_factory=list)
    # SourceQuantization.to_json() when the source was itself a Q8_0 .bin: a float32 output then
    # holds dequantized values, not the original weights (issue 12.2).
    source_quantized: SourceQuantizedJson | None = None
    # v0 only: the rotary base of the stored tables and which readers use them (formats.rope.rope_json).
    rope_tables: RopeTablesJson | None = None
    # sha256 over every weight's bytes in canonical order (see the module's docstring); None when
    # the header already failed and no tensor was read
    weights_sha256: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def version(self) -> int | str:
        """The JSON `version` value (0, 1, 2 as ints, as before formats had names; else the name)."""
        return json_version(self.format)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d = {"file": d.pop("file"), "version": self.version, **d}  # `version` where reports always read it
        d["tensors"] = [t.to_json() for t in self.tensors]
        d["passed"] = self.passed
        return d


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    # One reused 1 MiB buffer: no fresh pages per read, and SHA-256 reads it from L2 (hashing
    # straight from a multi-MiB buffer runs at ~60% of that speed).
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    # Regular files only: a FIFO in place of an exported file would block the read forever.
    with os.fdopen(open_regular(path, "file to verify"), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def check_tensors(output: Output, source: Source, quiet: bool = False, threads: int | None = None) -> TensorCheckResult:
    """Compare the opened `output` with `source`; the result lists every failure (empty = passed).
    `threads`: at most this many worker processes comparing chunks (default: parallel.default_workers;
    one for a file under parallel.SMALL_WORK_BYTES, whatever `threads` allows)."""
    result = TensorCheckResult(
        file=output.display_name,
        format=output.spec.name,
        size=output.size,
        sha256="",  # below: hashed in a side process while the tensors are compared
        group_size=output.group_size,
        header=output.header_json(),
        source={**source.describe(), "config": source.config.to_json()},
        source_quantized=source.quantization.to_json() if source.quantization is not None else None,
    )
    result.failures += output.header_failures(source.config)
    if result.failures:  # a different model: comparing tensors would only add noise
        result.sha256 = sha256_file(output.hashed_path)
        return result
    _check_tensors(output, source, result, threads, quiet)
    return result


@dataclass
class _ChunkResult:
    """What one chunk adds to its tensor's TensorStats (or the first failure found in it)."""

    failure: str | None = None
    n: int = 0
    max_abs_err: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    hist: np.ndarray | None = None
    digest: bytes = b""  # sha256 of the chunk's bytes (float32 values, or q then scales)


# Elements per block of a float32 comparison: its temporaries stay in L2.
_VERIFY_BLOCK = 1 << 16

# Q8_0 weights to check (a model's, in all) from which the compiled kernel (q8_chunk_jit) repays
# importing numba (~0.4 s): ~2 ns less per weight, so from ~200M weights on; below, numpy, unless
# the kernel is loaded already (a job server's worker inherits it), when it costs nothing.
COMPILED_KERNEL_MIN_WEIGHTS = 1 << 28
_compiled_kernel = False  # set before the workers fork, which inherit it


def _check_tensors(output: Output, source: Source, result: TensorCheckResult, workers: int | None,
                   quiet: bool) -> None:
    """Every weight of `output` against the source, in row chunks on worker processes, plus the
    sha256 (in a side process) and v0's rope tables. Chunk results are consumed in file order,
    so the statistics and each tensor's first failure never depend on timing."""
    tasks: list[tuple[str, int, int]] = []
    checked: list[str] = []
    for name in source.config.shapes():
        got, ref = output.tensors[name], source.tensor(name)
        want = output.expected_encoding(name)
        if got.encoding != want or got.encoding not in _CHUNK_CHECKS:
            result.failures.append(f"tensor {got.name}: stored as {got.encoding}, not {want}")
            continue
        checked.append(name)
        # chunks hold whole groups of the output and, for a Q8_0 source, of the source too
        align = math.lcm(got.group_size or 1, ref.group_size or 1)
        tasks += [(name, start, stop) for start, stop in row_chunks(ref, align)]
    last_chunk = {name: i for i, (name, _, _) in enumerate(tasks)}
    total = sum(output.tensors[name].numel for name in checked)
    quantized = sum(output.tensors[n].numel for n in checked if output.tensors[n].encoding == TensorEncoding.Q8_0)

    def job(task: tuple[str, int, int]) -> _ChunkResult:
        name, start, stop = task
        got = output.tensors[name]
        return _CHUNK_CHECKS[got.encoding](got, source.tensor(name), start, stop, process_scratch())

    global _compiled_kernel
    with contextlib.ExitStack() as stack:
        # the file's hash first (a process: a thread would fight for the GIL): it runs while numba
        # loads and the workers start
        digest = stack.enter_context(ForkedCall(sha256_file, output.hashed_path,
                                                fork=output.size >= parallel.SMALL_WORK_BYTES))
        _compiled_kernel = ((quantized >= COMPILED_KERNEL_MIN_WEIGHTS or q8_chunk.compiled_loaded())
                            and q8_chunk.load_compiled())
        pool = stack.enter_context(ForkPool(tasks, job, workers_for(output.size, workers)))
        # v0's rope tables here while the workers run; not in a forked child: torch's OpenMP (the
        # fallback without MKL) may hang there if this process used it before
        progress = Progress(total, f"verify {result.file}", unit="el", quiet=quiet)
        try:
            stats: TensorStats | None = None
            hist: np.ndarray | None = None
            failed = False
            digests: dict[str, bytes] = {}
            for i, ((name, _, _), r) in enumerate(zip(tasks, pool.results(), strict=True)):
                got = output.tensors[name]
                if stats is None:  # a tensor's first chunk
                    stats = TensorStats(name, list(got.shape), got.encoding.value, got.group_size,
                                        hf_name=got.name if got.name != name else None)
                    hist = np.zeros(len(_HIST_EDGES) - 1, dtype=np.int64) if got.group_size else None
                    failed = False
                    digest_of_tensor = hashlib.sha256()
                digest_of_tensor.update(r.digest)
                if failed:
                    pass  # as always: a tensor's statistics stop at its first failure
                elif r.failure:
                    result.failures.append(r.failure)
                    failed = True
                else:
                    stats.max_abs_err = max(stats.max_abs_err, r.max_abs_err)
                    stats._sq_err += r.sq_err
                    stats._sq_ref += r.sq_ref
                    stats._n += r.n
                    if hist is not None and r.hist is not None:
                        hist += r.hist
                if last_chunk[name] == i:
                    if hist is not None and not failed:
                        stats.group_err_hist = hist.tolist()
                    digests[name] = digest_of_tensor.digest()
                    result.tensors.append(stats.finish())
                    progress.update(got.numel)
                    stats = None
            rope = output.rope_tables()
            if rope is not None:
                _check_rope(*rope, output.config, result, source.config.rope_theta, source.config.rope_scaling)
            result.weights_sha256 = weights_digest(source.config.shapes(), output.tensors, digests)
            result.sha256 = digest.result()
        finally:
            progress.close()


def weights_digest(canonical: Iterable[str], tensors: Mapping[str, TensorRef], digests: Mapping[str, bytes]) -> str:
    """sha256 over (name, encoding, group size, sha256 of the tensor's chunk digests) of every
    tensor, in the canonical order of `canonical` (names), whatever order the file has them in."""
    h = hashlib.sha256()
    for name in canonical:
        if name in digests:
            t = tensors[name]
            h.update(f"{name}\0{t.encoding.value}\0{t.group_size}\0".encode() + digests[name])
    return h.hexdigest()


def _check_f32(got: TensorRef, ref_t: TensorRef, start: int, stop: int, scratch: Scratch) -> _ChunkResult:
    """Rows [start, stop) of a float32 tensor: bit for bit."""
    first, count = start * ref_t.cols, (stop - start) * ref_t.cols
    ref = ref_t.read_rows_into(start, stop, scratch.get("ref", count, np.float32)).reshape(-1)
    values = got.read_rows_into(start, stop, scratch.get("got", count, np.float32)).reshape(-1)
    digest = hashlib.sha256(values).digest()
    differs = scratch.get("differs", _VERIFY_BLOCK, np.bool_)
    for b in range(0, count, _VERIFY_BLOCK):
        a, r = values[b : b + _VERIFY_BLOCK].view(np.uint32), ref[b : b + _VERIFY_BLOCK].view(np.uint32)
        if np.not_equal(a, r, out=differs[: a.size]).any():
            bad = int(np.flatnonzero(differs[: a.size])[0]) + b + first
            return _ChunkResult(f"tensor {got.name}: element {bad} differs from the float32 source", digest=digest)
    # bit-identical: zero error, and the reference's energy does not enter any statistic
    return _ChunkResult(n=count, digest=digest)


def _check_q8(t: TensorRef, ref_t: TensorRef, start: int, stop: int, scratch: Scratch) -> _ChunkResult:
    """Rows [start, stop) of a Q8_0 tensor: the writer's scales and q (q8_chunk.py says how that is
    decided without quantizing again), or, carried over from a Q8_0 source, its very q and scales."""
    first, count = start * ref_t.cols, (stop - start) * ref_t.cols
    gs = t.group_size
    assert gs
    q, scales = t.read_q8(start, stop, scratch.get("q", count, np.int8), scratch.get("scales", count // gs, np.float32))
    digest_of = hashlib.sha256(q)
    digest_of.update(scales)
    digest = digest_of.digest()
    if ref_t.encoding == TensorEncoding.Q8_0 and ref_t.group_size == gs:  # carried over as is
        carried = _check_carried(t, ref_t, start, stop, q, scales)
        carried.digest = digest
        return carried
    stats = q8_chunk.stats_of_mapped_source(ref_t, start, stop, q, scales, gs, _HIST_EDGES) if _compiled_kernel else None
    ref = None
    if stats is None or stats.wrong_q >= 0:  # (the failure message needs the values)
        ref = ref_t.read_rows_into(start, stop, scratch.get("ref", count, np.float32)).reshape(-1)
    if stats is None:
        stats = q8_chunk.chunk_stats(ref, q, scales, gs, _HIST_EDGES, scratch, compiled=_compiled_kernel)
    if stats.bad_scale >= 0:
        return _ChunkResult(f"tensor {t.name}: scale of group {stats.bad_scale + first // gs} differs from a fresh "
                            "quantization", digest=digest)
    if stats.wrong_q >= 0:
        element = stats.wrong_q
        # beyond scale/2: the message verify always gave; within it, a rounding tie broken the other way
        what = (f"element {first + element} dequantizes beyond scale/2 of the source"
                if ref is not None and q8_chunk.beyond_half_scale(ref, q, scales, gs, element)
                else f"q of element {first + element} differs from a fresh quantization")
        return _ChunkResult(f"tensor {t.name}: {what}", digest=digest)
    return _ChunkResult(n=count, max_abs_err=stats.max_abs_err, sq_err=stats.sq_err, sq_ref=stats.sq_ref,
                        hist=stats.hist, digest=digest)


def _check_carried(t: TensorRef, ref_t: TensorRef, start: int, stop: int, q: np.ndarray, scales: np.ndarray) -> _ChunkResult:
    """q and scales must be the Q8_0 source's own, bit for bit (nothing was quantized twice)."""
    src_q, src_s = ref_t.read_q8(start, stop)
    first = start * ref_t.cols
    gs = t.group_size
    assert gs
    if not np.array_equal(q, src_q):
        bad = int(np.flatnonzero(q != src_q)[0]) + first
        return _ChunkResult(f"tensor {t.name}: q of element {bad} differs from the Q8_0 source")
    if not np.array_equal(scales.view(np.uint32), src_s.view(np.uint32)):
        bad = int(np.flatnonzero(scales.view(np.uint32) != src_s.view(np.uint32))[0]) + first // gs
        return _ChunkResult(f"tensor {t.name}: scale of group {bad} differs from the Q8_0 source")
    hist = np.zeros(len(_HIST_EDGES) - 1, dtype=np.int64)
    hist[0] = scales.size  # every group exact: error 0
    return _ChunkResult(n=q.size, hist=hist)


# How a chunk of an output tensor is checked, by the encoding the output stores it in; a new
# encoding (GGUF's float16, bfloat16, ggml Q8_0 blocks) adds its check here.
_CHUNK_CHECKS: dict[TensorEncoding, Callable[[TensorRef, TensorRef, int, int, Scratch], _ChunkResult]] = {
    TensorEncoding.F32: _check_f32,
    TensorEncoding.Q8_0: _check_q8,
}


def _check_rope(cos_t: TensorRef, sin_t: TensorRef, cfg: ModelConfig, result: TensorCheckResult, theta: float,
                scaling: RopeScaling | None = None) -> None:
    """v0's tables against llama2.c's at the source's rope_theta (and scaling), in chunks of rows."""
    result.rope_tables = rope_json(theta, scaling)
    failed = set()
    for row, cos, sin in rope_chunks(cfg.head_size, cfg.max_seq_len, theta, scaling=scaling):
        for t, ref in ((cos_t, cos), (sin_t, sin)):
            got = t.read_rows(row, row + ref.shape[0])
            if t.name not in failed and not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
                failed.add(t.name)
                scaled = f" with rope scaling {scaling.describe()}" if scaling else ""
                result.failures.append(f"{t.name}: rotary table differs from llama2.c's at rope_theta {theta:g}{scaled}")


HIST_EDGES = _HIST_EDGES.tolist()

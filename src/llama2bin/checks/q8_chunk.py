"""The arithmetic of verifying one chunk of a Q8_0 tensor against its float32 source.

Two questions per chunk, both exact:

1. Is every scale the writer's, fl(max|w| / 127) of its group? Compared bit for bit with the
   source group's absmax / 127, computed as formats/q8_0.py does (no quantization).
2. Is every q the writer's rounding, rint(fl(w / scale))? Not by quantizing again: the error
   d = fl(q*s) - w is computed anyway for the statistics, and when a group's largest |d| is
   below s * (0.5 - 2**-15) every q of the group is provably the writer's (`_PROVEN`). Only
   the rare groups above that line (a value within 2**-15 of a rounding tie, an all-zero group,
   a subnormal scale, a wrong q) are quantized again, group by group, and compared q for q.

The statistics (sums of squared error and of squared source values per block, each group's
largest error, the histogram of those) are the ones verify has always written, bit for bit:
float64 sums in numpy's pairwise order over blocks of `block_elems(group_size)` elements.

`chunk_stats` runs them with numpy, or, for big models, with the fused compiled kernel of
q8_chunk_jit.py (one pass instead of a dozen; numba is imported only then, since importing it
costs more than the whole check of a small model). The two give the same bits (tested).
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ..formats.q8_0 import ABS_MASK, Scratch, block_elems, group_scales_into
from ..sources.base import RawTensor, TensorRef
from .q8_stats import ChunkStats

# Why 2**-15 proves q: with |fl(q*s) - w| < s * (0.5 - 2**-15) and |q| <= 128, the real |w/s - q|
# is below 0.5 - 2**-16 (fl(q*s) is off by at most 128 * 2**-24 * s, the subtraction is exact or
# off by 2**-24 of its result), and fl(w/s) is within 127.01 * 2**-24 < 2**-17 of w/s (|w| <= 127.01 s
# when s is the group's scale), so |fl(w/s) - q| < 0.5 and rint gives q. The bound needs normal
# floats: groups with a scale below FLT_MIN are always checked by quantizing again.
_PROVEN = 0.5 - 2.0**-15
_FLT_MIN = float(np.finfo(np.float32).tiny)
# |q*s - w| <= s/2 holds exactly in real arithmetic; float32 rounding adds at most ~2**-17 * s.
# A wrong q beyond this bound is reported as dequantizing beyond scale/2 (the message verify has
# always given); a wrong q inside it (a rounding tie broken the other way) as differing.
_Q8_SLACK = 2.0**-16


_compiled_ready = False  # the kernel is loaded in this process (inherited by forked workers)


def compiled_loaded() -> bool:
    """Whether the compiled kernel is already loaded here (e.g. by the job server before it forked
    this worker): then it costs nothing, whatever the model's size."""
    return _compiled_ready


def load_compiled() -> bool:
    """Import the numba kernel and compile it (from numba's cache after the first run); False
    without numba. Call it before forking workers, so that they inherit the compiled code."""
    global _compiled_ready
    if not _compiled_ready:
        from ..formats.q8_fast import import_compiled

        _compiled_ready = import_compiled(__package__ + ".q8_chunk_jit", lambda jit: jit.warm_up()) is not None
    return _compiled_ready


def stats_of_mapped_source(ref: TensorRef, start: int, stop: int, q: np.ndarray, scales: np.ndarray,
                           group_size: int, edges: np.ndarray) -> ChunkStats | None:
    """The compiled check of rows [start, stop) of a float32 or bfloat16 checkpoint tensor read as
    its bits straight from the page cache (q8_chunk_jit.chunk_stats_bits); None for any other
    tensor (read it with read_rows_into). Why: reading 2 bytes per bfloat16 weight into a buffer
    and widening it to 4 costs more than the compiled check of it (measured at 1.1B: 0.8 s of
    preadv and 0.8 s of widening). Unmapped before returning: RSS stays at a chunk."""
    if not isinstance(ref, RawTensor) or ref.dtype not in ("F32", "BF16"):
        return None
    from .q8_chunk_jit import chunk_stats_bits

    dtype, shift = (np.uint32, 0) if ref.dtype == "F32" else (np.uint16, 16)
    itemsize = np.dtype(dtype).itemsize
    count = (stop - start) * ref.cols
    first = ref.offset + start * ref.cols * itemsize
    fd = ref.pool.fd(ref.path)
    if count == 0 or os.fstat(fd).st_size < first + count * itemsize:
        return None  # truncated: read_rows_into says so in its own words (a mapping would SIGBUS)
    base = first - first % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, first + count * itemsize - base, access=mmap.ACCESS_READ, offset=base) as mapped:
        bits = np.frombuffer(mapped, dtype, count, first - base)
        try:
            return chunk_stats_bits(bits, shift, q, scales, group_size, edges)
        finally:
            del bits  # the mapping closes only when no array uses it


def chunk_stats(w: np.ndarray, q: np.ndarray, scales: np.ndarray, group_size: int, edges: np.ndarray,
                scratch: Scratch, compiled: bool = False) -> ChunkStats:
    """`w` float32 source values, `q` int8 and `scales` float32 as the file stores them (whole
    groups). `compiled`: use the numba kernel (after load_compiled() said True)."""
    if compiled:
        from .q8_chunk_jit import chunk_stats_jit

        return chunk_stats_jit(w, q, scales, group_size, edges)
    return chunk_stats_numpy(w, q, scales, group_size, edges, scratch)


def chunk_stats_numpy(w: np.ndarray, q: np.ndarray, scales: np.ndarray, group_size: int, edges: np.ndarray,
                      scratch: Scratch) -> ChunkStats:
    gs, count = group_size, w.size
    fresh = scratch.get("fresh", count // gs, np.float32)
    group_scales_into(w, gs, fresh, scratch)
    differs = np.not_equal(scales.view(np.uint32), fresh.view(np.uint32), out=scratch.get("sdiff", fresh.size, np.bool_))
    if differs.any():
        return ChunkStats(int(np.flatnonzero(differs)[0]), np.empty(0), 0.0, 0.0, np.empty(0, np.int64), 0.0)
    step = block_elems(gs)
    d = scratch.get("diff", min(step, count), np.float32)
    squares = scratch.get("squares", d.size, np.float64)
    gmax_bits = scratch.get("gmax", count // gs, np.uint32)  # per-group max |error|, as float32 bits
    sq_err = sq_ref = 0.0
    for b in range(0, count, step):
        x = w[b : b + step]
        n, g0, g1 = x.size, b // gs, (b + x.size) // gs
        # q*s in float32 (int8 -> float32 is exact), then - w: the dequantization error
        np.multiply(q[b : b + n].reshape(-1, gs), scales[g0:g1, None], out=d[:n].reshape(-1, gs))
        np.subtract(d[:n], x, out=d[:n])
        # squares in float64 (exact for float32 values), summed pairwise by np.add.reduce: not
        # einsum or BLAS, the same bits on every machine
        sq_err += float(np.add.reduce(np.square(d[:n], dtype=np.float64, out=squares[:n])))
        sq_ref += float(np.add.reduce(np.square(x, dtype=np.float64, out=squares[:n])))
        # the bit patterns of non-negative floats order like their values
        bits = np.bitwise_and(d[:n].view(np.uint32), ABS_MASK, out=d[:n].view(np.uint32))
        np.maximum.reduce(bits.reshape(-1, gs), axis=1, out=gmax_bits[g0:g1])
    gmax = gmax_bits.view(np.float32).astype(np.float64)
    wrong = first_wrong_q(w, q, scales, gs, gmax)
    if wrong >= 0:
        return ChunkStats(-1, np.empty(0), 0.0, 0.0, np.empty(0, np.int64), 0.0, wrong)
    # np.histogram's bins, without its per-call sort: [e_i, e_i+1), the last bin closed
    counts = np.bincount(np.searchsorted(edges, gmax, side="right"), minlength=len(edges) + 1)
    hist = counts[1 : len(edges)].astype(np.int64)
    hist[-1] += int(np.count_nonzero(gmax == edges[-1]))
    return ChunkStats(-1, gmax, sq_err, sq_ref, hist, float(gmax.max()))


def first_wrong_q(w: np.ndarray, q: np.ndarray, scales: np.ndarray, group_size: int, gmax: np.ndarray) -> int:
    """The first element whose q is not the writer's rint(fl(w / scale)), or -1. The scales must
    already equal the source's. Only the groups the error bound cannot vouch for are quantized
    again (with bfloat16 sources ~14% of them: exact ties are common with 8-bit mantissas)."""
    s64 = scales.astype(np.float64)
    # `not <` so that NaN errors are checked too
    doubt = ~(gmax < s64 * _PROVEN) | (s64 < _FLT_MIN)
    if not doubt.any():
        return -1
    gs = group_size
    groups = np.flatnonzero(doubt)
    wg = w.reshape(-1, gs)[groups]
    qg = q.reshape(-1, gs)[groups]
    sg = scales[groups]
    # formats/q8_0.quantize_into's arithmetic: w / scale in float32 (an all-zero group: / 1), rint
    divisor = np.where(sg == 0, np.float32(1), sg)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        t = np.rint(wg / divisor[:, None])
        ok = np.isfinite(wg) & (np.abs(t) <= 127)  # a source the writer refuses (NaN, Inf) fails
        wrong = ~ok | (qg.astype(np.float32) != t)
    if not wrong.any():
        return -1
    k = int(np.flatnonzero(wrong.reshape(-1))[0])
    return int(groups[k // gs] * gs + k % gs)


def beyond_half_scale(w: np.ndarray, q: np.ndarray, scales: np.ndarray, group_size: int, element: int) -> bool:
    """Whether the element's |q*s - w| (float32, as the statistics compute it) exceeds scale/2
    plus float32 rounding: a wrong q there is what verify has always called dequantizing beyond
    scale/2; a wrong q within it is a rounding tie broken the other way."""
    g = element // group_size
    with np.errstate(invalid="ignore", over="ignore"):
        err = float(np.abs(np.float32(q[element]) * scales[g] - w[element]))
    return not err <= float(scales[g]) * (0.5 + _Q8_SLACK)

"""q8_chunk.chunk_stats_numpy as one compiled pass (numba), for big models.

Why: numpy runs the check as a dozen passes over each block (scales, dequantize, subtract,
two float64 squarings, two sums, abs, two per-group max reductions of 64-element rows, which
numpy does not vectorize), ~4 ns per weight; fused, every value is loaded once: 1.7 ns per
weight measured on the 1.1B model's chunks. The float64 sums follow numpy's pairwise summation exactly
(numpy/_core/src/umath/loops_utils.h.src: 8 accumulators over leaves of at most 128 values,
halves rounded down to a multiple of 8), so the statistics are the numpy path's bit for bit;
numba compiles without fast-math, so nothing is reassociated or contracted into an FMA.

numba is optional: this module is imported only through q8_chunk.load_compiled(), which says
False when numba is not installed (verify then stays on numpy). Importing it and loading the
cached kernel costs 0.25-0.4 s, so verify only asks for it when a model is big enough to repay that.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..formats.q8_0 import block_elems
from .q8_stats import ChunkStats

# Every index is unsigned (np.uint64): numba wraps negative signed indices, and that check
# alone keeps LLVM from vectorizing these loops (measured: 1.7 vs 0.11 ns per weight).
# uint64 and int64 must never meet in one expression (numba then computes in float64).
# cache=True: compiled once into NUMBA_CACHE_DIR (formats/q8_fast.numba_cache_dir), loaded in ~0.1 s later.
njit = numba.njit(cache=True, nogil=True, error_model="numpy")
inline = numba.njit(cache=True, inline="always")
u = np.uint64


def chunk_stats_jit(w: np.ndarray, q: np.ndarray, scales: np.ndarray, group_size: int, edges: np.ndarray) -> ChunkStats:
    """q8_chunk.chunk_stats_numpy of float32 source values `w`, compiled."""
    return chunk_stats_bits(w.view(np.uint32), 0, q, scales, group_size, edges)


def chunk_stats_bits(src: np.ndarray, shift: int, q: np.ndarray, scales: np.ndarray, group_size: int,
                     edges: np.ndarray) -> ChunkStats:
    """The same of source values given as bits: float32 (uint32, shift 0) or bfloat16 (uint16,
    shift 16), e.g. mapped straight from the checkpoint (no copy, no widening pass)."""
    step = block_elems(group_size)
    ngroups = src.size // group_size
    gmax = np.empty(ngroups, np.float64)
    hist = np.zeros(len(edges) + 1, np.int64)
    w = np.empty(min(step, src.size), np.float32)
    d = np.empty_like(w)
    sums = np.zeros(2, np.float64)
    found = np.empty(2, np.int64)
    kernel(src, shift, q, scales, scales.view(np.uint32), group_size, step, edges, gmax, hist, w, w.view(np.uint32),
           d, d.view(np.uint32), sums, found)
    if found[0] >= 0 or found[1] >= 0:
        return ChunkStats(int(found[0]), np.empty(0), 0.0, 0.0, np.empty(0, np.int64), 0.0, int(found[1]))
    out = hist[1 : len(edges)].copy()
    out[-1] += hist[len(edges)]  # the kernel counts gmax == last edge apart (see below)
    return ChunkStats(-1, gmax, float(sums[0]), float(sums[1]), out, float(gmax.max()) if ngroups else 0.0)


def warm_up() -> None:
    """Compile (or load from numba's cache) here, once, before the workers fork: not in each."""
    q, scales, edges = np.zeros(64, np.int8), np.zeros(1, np.float32), np.array([0.0, 1.0])
    chunk_stats_bits(np.zeros(64, np.uint32), 0, q, scales, 64, edges)  # float32 sources
    chunk_stats_bits(np.zeros(64, np.uint16), 16, q, scales, 64, edges)  # bfloat16 sources


@inline
def sq(x: Any) -> Any:
    v = np.float64(x)
    return v * v


@inline
def leaf(a: Any, lo: Any, n: Any) -> Any:
    """numpy's pairwise_sum of squares for 8 <= n <= 128: 8 accumulators, then the rest."""
    r0, r1, r2, r3 = sq(a[lo]), sq(a[lo + u(1)]), sq(a[lo + u(2)]), sq(a[lo + u(3)])
    r4, r5, r6, r7 = sq(a[lo + u(4)]), sq(a[lo + u(5)]), sq(a[lo + u(6)]), sq(a[lo + u(7)])
    end = lo + n - n % u(8)
    i = lo + u(8)
    while i < end:
        r0 += sq(a[i])
        r1 += sq(a[i + u(1)])
        r2 += sq(a[i + u(2)])
        r3 += sq(a[i + u(3)])
        r4 += sq(a[i + u(4)])
        r5 += sq(a[i + u(5)])
        r6 += sq(a[i + u(6)])
        r7 += sq(a[i + u(7)])
        i += u(8)
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        res += sq(a[i])
        i += u(1)
    return res


@inline
def small(a: Any, lo: Any, n: Any) -> Any:  # n < 8
    res = -0.0
    i = lo
    while i < lo + n:
        res += sq(a[i])
        i += u(1)
    return res


@njit
def pairwise_sq2(a: Any, a0: Any, c: Any, c0: Any, n: Any, frames: Any, values: Any, out: Any) -> None:
    """out = (np.add.reduce(np.square(a[a0:a0+n], dtype=float64)), the same of c[c0:c0+n]),
    the same bits: numpy's recursion (halves rounded down to a multiple of 8 until at most
    128 values) walked with an explicit stack, since a numba call costs ~20 ns."""
    if n < u(8):
        out[0], out[1] = small(a, a0, n), small(c, c0, n)
        return
    top, nv = 0, 0
    frames[0, 0], frames[0, 1], frames[0, 2] = u(0), n, u(0)
    while top >= 0:
        lo, m, stage = frames[top, 0], frames[top, 1], frames[top, 2]
        if m <= u(128):  # a leaf (never below 8 values: the halves are multiples of 8)
            values[nv, 0], values[nv, 1] = leaf(a, a0 + lo, m), leaf(c, c0 + lo, m)
            nv += 1
            top -= 1
        elif stage == u(0):  # children first: the left one on top
            m2 = m // u(2)
            m2 -= m2 % u(8)
            frames[top, 2] = u(1)
            frames[top + 1, 0], frames[top + 1, 1], frames[top + 1, 2] = lo + m2, m - m2, u(0)
            frames[top + 2, 0], frames[top + 2, 1], frames[top + 2, 2] = lo, m2, u(0)
            top += 2
        else:  # both children summed: left + right
            nv -= 1
            values[nv - 1, 0] = values[nv - 1, 0] + values[nv, 0]
            values[nv - 1, 1] = values[nv - 1, 1] + values[nv, 1]
            top -= 1
    out[0], out[1] = values[0, 0], values[0, 1]


@njit
def kernel(src: Any, shift: int, q: Any, s: Any, sbits: Any, group_size: int, block: int, edges: Any, gmax: Any,
           hist: Any, w: Any, wbits: Any, d: Any, dbits: Any, sums: Any, found: Any) -> None:
    """`src`: the source values' bits, float32 (uint32, `shift` 0) or bfloat16 (uint16, `shift`
    16: its float32 is the bits shifted up), copied block by block into `w` (L2-sized), so a
    bfloat16 checkpoint is widened where it is used, not into a chunk-sized buffer first.
    found[0]: the first group whose scale differs, found[1]: the first element whose q differs
    (-1: none). After a wrong q only the scales are checked (a wrong scale anywhere in the
    chunk is what it reports first, as the numpy path does)."""
    gs, step, total = u(group_size), u(block), u(src.size)
    mask = np.uint32(0x7FFFFFFF)
    up = np.uint32(shift)
    nedges = edges.size
    last = edges[nedges - 1]
    q8max = np.float32(127.0)
    one = np.empty(1, np.float32)  # bit casts between float32 and uint32 go through memory
    one_bits = one.view(np.uint32)
    proven = 0.5 - 2.0**-15  # q8_chunk._PROVEN
    flt_min = np.float64(np.finfo(np.float32).tiny)
    wrong_q = -1
    hb = 0  # the histogram bin of the previous group
    sq_err = 0.0
    sq_ref = 0.0
    frames = np.empty((128, 3), np.uint64)  # depth <= log2(n / 128) + 1; two frames per level
    values = np.empty((64, 2), np.float64)
    pair = np.empty(2, np.float64)
    for b in range(u(0), total, step):
        n = min(step, total - b)
        for k in range(n):
            wbits[k] = np.uint32(src[b + k]) << up
        for g in range(b // gs, (b + n) // gs):
            lo = g * gs  # in the chunk (q)
            lb = lo - b  # in the block (w, d)
            # the scale: max |w| on the bit patterns (formats/q8_0.group_absmax_bits) / 127
            m = wbits[lb] & mask
            for j in range(u(1), gs):
                v = wbits[lb + j] & mask
                m = v if v > m else m
            one_bits[0] = m
            one[0] = one[0] / q8max
            if one_bits[0] != sbits[g]:
                found[0], found[1] = np.int64(g), -1
                return
            if wrong_q >= 0:
                continue
            # the error in float32, as the numpy path: q*s rounded, then - w
            sg = s[g]
            for j in range(gs):
                d[lb + j] = np.float32(q[lo + j]) * sg - w[lb + j]
            e = dbits[lb] & mask
            for j in range(u(1), gs):
                v = dbits[lb + j] & mask
                e = v if v > e else e
            one_bits[0] = e
            x = np.float64(one[0])
            gmax[g] = x
            sd = np.float64(sg)
            if not x < sd * proven or sd < flt_min:
                # not vouched for by the error bound: quantize the group again, as
                # formats/q8_0.quantize_into does, and compare q for q (q8_chunk.first_wrong_q)
                div = sg if sg != 0 else np.float32(1.0)
                wrong = False
                for j in range(gs):  # no early exit: this loop vectorizes
                    t = np.rint(w[lb + j] / div)
                    wrong |= not (np.isfinite(w[lb + j]) and abs(t) <= q8max and np.float32(q[lo + j]) == t)
                if wrong:
                    for j in range(gs):
                        t = np.rint(w[lb + j] / div)
                        if not (np.isfinite(w[lb + j]) and abs(t) <= q8max and np.float32(q[lo + j]) == t):
                            wrong_q = np.int64(lo + j)
                            break
                    continue
            # np.searchsorted(edges, x, side="right"), starting from the previous group's bin
            # (neighbouring groups' errors are alike: ~2 comparisons); NaN sorts after every edge
            if x == x:
                while hb < nedges and edges[hb] <= x:
                    hb += 1
                while hb > 0 and edges[hb - 1] > x:
                    hb -= 1
                hist[hb if hb < nedges else 0] += 1  # beyond the last edge: not kept, like bin 0
            else:
                hist[0] += 1
            if x == last:
                hist[nedges] += 1
        if wrong_q < 0:
            pairwise_sq2(d, u(0), w, u(0), n, frames, values, pair)
            sq_err += pair[0]
            sq_ref += pair[1]
    sums[0] = sq_err
    sums[1] = sq_ref
    found[0], found[1] = -1, wrong_q

"""gguf_readback's Q8_0 check of one block of values as compiled passes (numba), for big models.

Why: the numpy check (gguf_readback._check_block) runs about twenty passes over each 64Ki-value
block - the per-32 max, which numpy does not vectorize, the reference rounding, dequantizing,
float64 differences, two squared sums - ~14 ns per value: a 1.1B gguf-q8_0 verify spent 17 CPU s
where the .bin v2's takes 5. Here each value is loaded once per question.

It is the numpy check's arithmetic, not the writer's: the reference q is gguf_readback's own
floor-based round-half-away (not gguf_encode's trunc(t + 0.49999997)), and the float16 scale is
compared by the caller with numpy's cast of the float32 scales this returns. The statistics are
the numpy path's bit for bit: the per-block max error, its bound, and the float64 sums in numpy's
pairwise order (q8_chunk_jit.pairwise_sq2). A block holding NaN or Inf is left to numpy.

numba is optional: imported only through gguf_readback.load_compiled() (False without numba).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..formats.q8_0_kernel import _ABS_MASK, _INF_BITS, _Q8_MAX, _as_float
from ..sources.gguf_file import GgmlType
from .q8_chunk_jit import pairwise_sq2, u

njit = numba.njit(cache=True, nogil=True, error_model="numpy")

OK, Q_DIFFERS, BEYOND_BOUND = 0, 1, 2
WRONG = Q_DIFFERS  # a 16-bit value that is not the source's rounding
_SLACK = 0.5 + 2.0**-14  # gguf_readback's bound: d32 * (1/2 + 2^-14) + |q| * |d32 - d16|


@njit
def block_scales(bits: Any, d32: Any) -> bool:
    """d32[b] = max |x| / 127 of each block of 32 (float32, as np.abs(blocks).max(axis=1) / 127:
    on finite values the largest bit pattern with the sign cleared is the largest |x|). False,
    leaving the rest undone, at the first NaN or Inf."""
    for b in range(u(0), u(bits.size) // u(32)):
        amax = np.uint32(0)
        for j in range(u(32)):
            v = np.uint32(bits[b * u(32) + j] & _ABS_MASK)
            amax = v if v > amax else amax
        if amax >= _INF_BITS:
            return False
        d32[b] = _as_float(amax) / _Q8_MAX
    return True


@njit
def check_blocks(x: Any, q: Any, d32: Any, d16: Any, diff: Any, err: Any, frames: Any, values: Any,
                 sums: Any) -> int:
    """For finite float32 `x`, the file's int8 `q` and float16 scales `d16` (as float32), and the
    reference float32 scales `d32`: Q_DIFFERS if a q is not round-half-away(x * fl(1/d32)),
    else BEYOND_BOUND if a dequantized value lies beyond the bound, else OK with err[b] (the
    block's max |q*d16 - x|, float64) and sums = (max |diff|, sum diff^2, sum x^2)."""
    n = u(x.size)
    wrong = False
    for b in range(u(0), n // u(32)):
        d = d32[b]
        ident = np.float32(0.0) if d == np.float32(0.0) else np.float32(1.0) / d
        if not np.isfinite(ident):
            ident = np.float32(0.0)
        for j in range(u(32)):  # no early exit: this loop vectorizes
            t = x[b * u(32) + j] * ident
            a = abs(t)
            whole = np.floor(a)
            r = whole + np.floor(np.float32(2.0) * (a - whole))
            want = np.int32(-r if t < np.float32(0.0) else r)
            wrong |= np.int32(q[b * u(32) + j]) != want
    if wrong:
        return Q_DIFFERS
    beyond = False
    top = 0.0
    for b in range(u(0), n // u(32)):
        s16 = d16[b]
        e = 0.0
        qmax = np.int32(0)
        for j in range(u(32)):
            i = b * u(32) + j
            got = np.float32(q[i]) * s16
            v = np.float64(got) - np.float64(x[i])
            diff[i] = v
            e = max(e, abs(v))
            qmax = max(qmax, abs(np.int32(q[i])))
        err[b] = e
        top = max(top, e)
        s32 = np.float64(d32[b])
        # a block whose 1/d overflowed (q = 0, d16 = 0) is bounded by its max |x|, which e is
        flushed = d32[b] != np.float32(0.0) and not np.isfinite(np.float32(1.0) / d32[b])
        beyond |= not flushed and e > s32 * _SLACK + np.float64(qmax) * abs(s32 - np.float64(s16))
    if beyond:
        return BEYOND_BOUND
    pair = np.empty(2, np.float64)
    pairwise_sq2(diff, u(0), x, u(0), n, frames, values, pair)
    sums[0], sums[1], sums[2] = top, pair[0], pair[1]
    return OK


FALLBACK = 3  # a value the compiled pass leaves to numpy (NaN, Inf, or float16's values that round to inf)
_F16_TOP = np.float32(65520.0).view(np.uint32)  # |x| from here rounds to inf as float16


@njit
def check_f16(bits: Any, h: Any, got: Any, diff: Any, frames: Any, values: Any, sums: Any) -> int:
    """Is every float16 `h` the float32 `bits` rounded to nearest even? Not by converting again:
    each h must have x's sign, and |x| must lie in the stored value's rounding interval, between
    the midpoints to its neighbours (float64, exact), a midpoint itself only when h is even. OK
    with sums = (max |diff|, sum diff^2, sum x^2), else WRONG, or FALLBACK for a value numpy must
    judge (|x| >= 65520, NaN, Inf)."""
    n = u(bits.size)
    wrong = False
    for i in range(n):
        if (bits[i] & _ABS_MASK) >= _F16_TOP:
            return FALLBACK
    for i in range(n):
        m = np.int64(h[i] & np.uint16(0x7FFF))
        e, f = m >> 10, m & 0x3FF
        # from this value to the next: 2^(e - 25), and 2^-24 for subnormals (exact: an integer times 2^-24)
        step = np.float64(np.int64(1) << (max(e, np.int64(1)) - 1)) * 2.0**-24
        v = np.float64(f) * step if e == 0 else (np.float64(1024 + f)) * step
        below = step / 2.0 if (f == 0 and e >= 2) else step  # at a binade's first value, the previous binade's
        a = abs(np.float64(_as_float(bits[i])))
        up, low = v + step / 2.0, v - below / 2.0
        even = (m & 1) == 0
        inside = (a < up or (a == up and even)) and (a > low or (a == low and even))  # m = 0: low < 0
        wrong |= m >= 0x7C00 or not inside or (h[i] >> np.uint16(15)) != (bits[i] >> np.uint32(31))
        got[i] = np.float32(-v if h[i] >> np.uint16(15) else v)
    if wrong:
        return WRONG
    return _sums(bits, got, diff, frames, values, sums)


@njit
def check_bf16(bits: Any, h: Any, got: Any, diff: Any, frames: Any, values: Any, sums: Any) -> int:
    """Is every bfloat16 `h` gguf_readback._bf16_reference of the float32 `bits` (of the two
    bfloat16 values around x, the nearer in float64, a tie to the even one)? The same sums."""
    n = u(bits.size)
    wrong = False
    for i in range(n):
        if (bits[i] & _ABS_MASK) >= _INF_BITS:  # (the top of the range is computed as numpy does)
            return FALLBACK
    for i in range(n):
        low_bits = bits[i] & np.uint32(0xFFFF0000)
        high_bits = low_bits + np.uint32(0x10000)
        x = np.float64(_as_float(bits[i]))
        d_low = abs(x - np.float64(_as_float(low_bits)))
        d_high = abs(np.float64(_as_float(high_bits)) - x)
        odd = ((bits[i] >> np.uint32(16)) & np.uint32(1)) == np.uint32(1)
        want = (high_bits if d_high < d_low or (d_high == d_low and odd) else low_bits) >> np.uint32(16)
        wrong |= np.uint32(h[i]) != want
        got[i] = _as_float(np.uint32(h[i]) << np.uint32(16))
    if wrong:
        return WRONG
    return _sums(bits, got, diff, frames, values, sums)


@numba.njit(cache=True, inline="always")
def _sums(bits: Any, got: Any, diff: Any, frames: Any, values: Any, sums: Any) -> int:
    """gguf_readback._check_block's statistics of `got` against the source, numpy's bits."""
    n = u(bits.size)
    top = 0.0
    x = bits.view(np.float32)
    for i in range(n):
        v = np.float64(got[i]) - np.float64(x[i])
        diff[i] = v
        top = max(top, abs(v))
    pair = np.empty(2, np.float64)
    pairwise_sq2(diff, u(0), x, u(0), n, frames, values, pair)
    sums[0], sums[1], sums[2] = top, pair[0], pair[1]
    return OK


_MESSAGES = {GgmlType.F16: "float16 values are not the source rounded to nearest even",
             GgmlType.BF16: "bfloat16 values are not the source correctly rounded"}


def check_16bit(ggml_type: GgmlType, x: np.ndarray, raw: np.ndarray, out: Any) -> str | None | bool:
    """gguf_readback._check_block's F16 and BF16 branches (and its statistics) through the compiled
    passes; False when they cannot say (a value numpy must judge)."""
    check = check_f16 if ggml_type == GgmlType.F16 else check_bf16
    sums = np.zeros(3)
    status = check(x.view(np.uint32), raw.view(np.uint16), np.empty(x.size, np.float32), np.empty(x.size),
                   np.empty((128, 3), np.uint64), np.empty((64, 2)), sums)
    if status == FALLBACK:
        return False
    if status == WRONG:
        return _MESSAGES[ggml_type]
    out.n += x.size
    out.max_abs_err = max(out.max_abs_err, float(sums[0]))
    out.sq_err += float(sums[1])
    out.sq_ref += float(sums[2])
    return None


def check_q8_0(x: np.ndarray, q: np.ndarray, d16: np.ndarray, out: Any, gmax: list[np.ndarray]) -> str | None | bool:
    """gguf_readback._check_block's Q8_0 branch through the compiled passes: the same verdicts,
    messages and statistics (bit for bit); False when they cannot say (a NaN or Inf): numpy's
    branch then."""
    d32 = np.empty(x.size // 32, np.float32)
    if not block_scales(x.view(np.uint32), d32):
        return False
    if not np.array_equal(d16.view(np.uint16), d32.astype(np.float16).view(np.uint16)):
        return "Q8_0 scales differ from a fresh quantization"
    err, sums = np.empty(d32.size), np.zeros(3)
    status = check_blocks(x, q.reshape(-1), d32, d16.astype(np.float32), np.empty(x.size), err,
                          np.empty((128, 3), np.uint64), np.empty((64, 2)), sums)
    if status == Q_DIFFERS:
        return "Q8_0 values differ from a fresh quantization"
    if status == BEYOND_BOUND:
        return "a Q8_0 value lies beyond the quantization bound"
    nonzero = d16 != 0
    if nonzero.any():
        out.worst_over_d = max(out.worst_over_d, float((err[nonzero] / d16[nonzero].astype(np.float64)).max()))
    gmax.append(err)
    out.n += x.size
    out.max_abs_err = max(out.max_abs_err, float(sums[0]))
    out.sq_err += float(sums[1])
    out.sq_ref += float(sums[2])
    return None


def warm_up() -> None:
    """Compile (or load from numba's cache) here, before the workers fork."""
    bits, d32 = np.zeros(32, np.uint32), np.zeros(1, np.float32)
    block_scales(bits, d32)
    for check in (check_f16, check_bf16):
        check(bits, np.zeros(32, np.uint16), np.zeros(32, np.float32), np.zeros(32), np.empty((128, 3), np.uint64),
              np.empty((64, 2)), np.zeros(3))
    check_blocks(bits.view(np.float32), np.zeros(32, np.int8), d32, d32, np.zeros(32), np.zeros(1),
                 np.empty((128, 3), np.uint64), np.empty((64, 2)), np.zeros(3))

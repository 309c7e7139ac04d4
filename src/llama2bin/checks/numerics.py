"""Arithmetic that gives the same bits on every machine: what makes verify results reproducible.

A verify JSON holds statistics at full float64 precision, and the tracked reports round them to
6 significant digits; both must be the same bytes on any machine, thread count and job layout.
What numpy and BLAS do by default is not (measured on this project's machines, numpy 2.4 with
its OpenBLAS 0.3.31):
- float32 matrix products differ between OpenBLAS thread counts and between the kernels it
  picks for a CPU (OPENBLAS_CORETYPE Haswell vs SkylakeX); float64 products do not depend on
  the thread count, but still differ between kernels (from K = 288: the kernels block and fuse
  the sum over K differently), and so does BLAS's dot (np.dot of vectors) with the thread count;
- numpy's float64 exp, log and power differ between its AVX-512 code and the code other CPUs run.
A relative difference of 1e-16 in a logit is harmless for a decision, but not for a statistic:
a KL divergence of 1e-6 computed from two sets of logits is a difference of numbers near 1e-3,
so 1e-16 in the logits moves it in its 10th digit, which the verify JSON shows and which flips
the report's 6th digit now and then. So every number that reaches a result is computed here:

- `matmul`: products and sums of integers below 2**53 are exact in float64, so they come out
  the same whatever the summation order, the kernel, FMA or the thread count. Each row of both
  operands is cut, on a power-of-two grid set by the row's largest element, into two integer
  slices of `beta` bits, with K * 2**(2 * beta) <= 2**53 (beta = 20 for K = 8192, 22 for 288);
  BLAS multiplies slice by slice, exactly, and the three slice products that matter
  (hi*hi, lo*hi, hi*lo) are added in a fixed order. The result is the exact product of the
  operands rounded to 2 * beta >= 40 bits below their rows' largest elements (every float32
  weight within 2**-16 of its row's largest stays exact), then rounded once more: 1e-13 from
  transformers' float64 forward on the test models, where float32 is 1e-6 off. Cost: three
  BLAS float64 products and the cutting, 3-4x a plain float64 product and 8-9x a float32 one
  (measured at the 15M and Llama 3 shapes).
- `exp`, `log`, `sin_cos`: built from +, *, rint and ldexp, which IEEE 754 makes every machine
  round alike (numpy never fuses a multiply and an add across two ufunc calls), accurate to a
  few units in the last place.
- sums: `np.sum` along a contiguous last axis or of a 1-D array, numpy's pairwise summation:
  plain additions in an order fixed by the length (never BLAS).
- `blas_threads`: BLAS pinned to one thread while a check runs. Not for the results (the
  products above are exact in any order) but for cost: spinning BLAS threads on a shared
  machine made eval-tokens of a 15M model take 11 CPU seconds instead of 1.2.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

# Elements per piece of the element-wise functions: their temporaries stay in L2.
_PIECE = 1 << 15
# matmul's slices: two of each operand, and the products of slices s, t with s + t <= _ORDER
# (three BLAS products). _ORDER 2 with a third slice of the activations (five products, 1.7x the
# time) agrees with transformers in float64 to 1e-14 instead of 1e-13 (tests/test_forward.py):
# nothing a report or a decision could show.
_ORDER = 1
_X_SLICES, _W_SLICES = _ORDER + 1, 2
# K at or below this: a plain loop over K of element-wise products and sums in order is
# cheaper than three BLAS products and the cutting (dim-2 models with a vocabulary of 2^20).
_SMALL_K = 4


def _truncated(value: Decimal, bits: int) -> float:
    """`value` cut to its leading `bits` significant bits: n * result is exact for |n| < 2**(53 - bits)."""
    m, e = math.frexp(float(value))
    return math.ldexp(math.floor(m * 2**bits) / 2**bits, e)


# Constants of the element-wise functions, computed in decimal arithmetic (software, the same
# everywhere) and rounded to float64 once.
with localcontext() as _ctx:
    _ctx.prec = 60
    _LN2 = Decimal(2).ln()
    _HALF_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494") / 2
    _EXP_TABLE = np.array([float(Decimal(2) ** (Decimal(j) / 256)) for j in range(256)])  # 2**(j/256)
    _INV_LN2_256 = float(256 / _LN2)
    _LN2_256_HI = _truncated(_LN2 / 256, 32)
    _LN2_256_LO = float(_LN2 / 256 - Decimal(_LN2_256_HI))
    _LN2_HI = _truncated(_LN2, 42)
    _LN2_LO = float(_LN2 - Decimal(_LN2_HI))
    _INV_LN10 = float(1 / Decimal(10).ln())
    _TWO_OVER_PI = float(1 / _HALF_PI)
    _HALF_PI_PARTS = []  # pi/2 in three parts of 33 bits: n * part is exact for |n| < 2**20
    _rest = _HALF_PI
    for _ in range(3):
        _HALF_PI_PARTS.append(_truncated(_rest, 33))
        _rest -= Decimal(_HALF_PI_PARTS[-1])
# 1/k!, 1/(2k+1), (-1)^k/(2k)!, (-1)^k/(2k+1)!: exactly rounded
_EXP_POLY = [float(Fraction(1, math.factorial(k))) for k in range(5)]
_ATANH_POLY = [float(Fraction(1, 2 * k + 1)) for k in range(12)]
_COS_POLY = [float(Fraction((-1) ** k, math.factorial(2 * k))) for k in range(10)]
_SIN_POLY = [float(Fraction((-1) ** k, math.factorial(2 * k + 1))) for k in range(10)]


class _Scratch(threading.local):
    """Work buffers of the element-wise functions, reused call after call: fresh ones of this
    size come from mmap, and their page faults cost more than the arithmetic (measured 3x)."""

    def __init__(self) -> None:
        self.v, self.n, self.r, self.p = (np.empty(_PIECE) for _ in range(4))
        self.ni = np.empty(_PIECE, dtype=np.int32)  # ldexp is vectorized for int32 exponents only
        self.j, self.t = np.empty(_PIECE, dtype=np.int32), np.empty(_PIECE)


_scratch = _Scratch()


def exp(x: np.ndarray | float, out: np.ndarray | None = None) -> np.ndarray:
    """e**x in float64, the same bits on every machine (within 2 ulp of the true value).
    x = (256 n + j) ln2/256 + r with |r| <= ln2/512: e**x = 2**n * 2**(j/256) * (degree-4 Taylor
    of e**r, truncated at 4e-17). -inf gives 0, +inf gives inf, NaN gives NaN. `out`: a float64
    array of x's shape to write into (may be x itself)."""
    arr = np.asarray(x, dtype=np.float64)
    out = np.empty(arr.shape, dtype=np.float64) if out is None else out
    if out.shape != arr.shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError("exp: out must be a contiguous float64 array of x's shape")
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    s = _scratch
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, flat_in.size, _PIECE):
            k = min(_PIECE, flat_in.size - start)
            v, n, r, p, ni, j, t = s.v[:k], s.n[:k], s.r[:k], s.p[:k], s.ni[:k], s.j[:k], s.t[:k]
            np.clip(flat_in[start : start + k], -750.0, 710.0, out=v)  # NaN stays NaN
            np.rint(np.multiply(v, _INV_LN2_256, out=n), out=n)
            np.subtract(v, np.multiply(n, _LN2_256_HI, out=r), out=r)  # n * hi is exact: 32 bits, |n| < 2**19
            r -= np.multiply(n, _LN2_256_LO, out=p)
            np.multiply(r, _EXP_POLY[4], out=p)
            for c in _EXP_POLY[3:0:-1]:
                p += c
                p *= r
            p += 1.0
            np.copyto(ni, n, casting="unsafe")  # NaN -> an arbitrary integer; p is NaN then
            p *= np.take(_EXP_TABLE, np.bitwise_and(ni, 255, out=j), out=t, mode="clip")
            np.ldexp(p, np.right_shift(ni, 8, out=ni), out=flat_out[start : start + k])
    return out


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural log in float64, the same bits on every machine (within a few ulp). x = m 2**e with
    m in [sqrt(1/2), sqrt(2)): log x = e ln2 + 2 atanh((m-1)/(m+1)), a series in f**2 <= 0.0295.
    0 gives -inf, inf gives inf, negative or NaN gives NaN."""
    arr = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(arr)
    small = m < math.sqrt(0.5)
    m = np.where(small, m * 2.0, m)
    e = e - small
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (m - 1.0) / (m + 1.0)
        s = f * f
        p = s * _ATANH_POLY[11] + _ATANH_POLY[10]
        for c in _ATANH_POLY[9::-1]:
            p = p * s + c
        ef = e.astype(np.float64)
        out = ef * _LN2_HI + (ef * _LN2_LO + 2.0 * f * p)  # e * hi is exact: hi has 42 bits, |e| < 2**11
        out = np.where(arr == 0, -np.inf, out)
        out = np.where(np.isposinf(arr), np.inf, out)
        out = np.where((arr < 0) | np.isnan(arr), np.nan, out)
    return out


def log10(x: np.ndarray | float) -> np.ndarray:
    return log(x) * _INV_LN10


def sin_cos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin x, cos x) in float64 for |x| < 2**20 (rotary angles), the same bits on every machine:
    x = n pi/2 + r with pi/2 in three parts (each n * part exact), |r| <= pi/4, Taylor series."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.size and not np.all(np.abs(arr) < 2.0**20):
        raise ValueError("sin_cos: |x| must be below 2**20")
    n = np.rint(arr * _TWO_OVER_PI)
    r = arr
    for part in _HALF_PI_PARTS:
        r = r - n * part
    s2 = r * r
    cos_r = s2 * _COS_POLY[9] + _COS_POLY[8]
    sin_r = s2 * _SIN_POLY[9] + _SIN_POLY[8]
    for k in range(7, -1, -1):
        cos_r = cos_r * s2 + _COS_POLY[k]
        sin_r = sin_r * s2 + _SIN_POLY[k]
    sin_r = sin_r * r
    quadrant = n.astype(np.int64) & 3
    sin = np.choose(quadrant, [sin_r, cos_r, -sin_r, -cos_r])
    cos = np.choose(quadrant, [cos_r, -sin_r, -cos_r, sin_r])
    return sin, cos


def powers_of_ten(first: int, last: int, per_decade: int) -> list[float]:
    """10**(k / per_decade) for k in first..last, exactly rounded (histogram edges: np.logspace's
    float64 power differs between CPUs)."""
    with localcontext() as ctx:
        ctx.prec = 40
        return [float(Decimal(10) ** (Decimal(k) / per_decade)) for k in range(first, last + 1)]


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (rows of -inf give NaN, as they would in numpy)."""
    e = exp(x - x.max(axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


# ---- exact products -------------------------------------------------------------------------


def slice_bits(k: int) -> int:
    """beta with k * 2**(2 beta) <= 2**53: the sum of k products of beta-bit integers is exact."""
    return (53 - max(0, (k - 1).bit_length())) // 2


def _split(a: np.ndarray, beta: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Rows of `a` (last axis) as n integer-valued float64 slices and the row exponents e
    (row max < 2**e): a ~= sum_s slice_s * 2**(e - beta (s + 1)), |slice_s| <= 2**beta."""
    mag = np.abs(a).max(axis=-1, keepdims=True) if a.shape[-1] else np.zeros((*a.shape[:-1], 1), a.dtype)
    _, e = np.frexp(mag.astype(np.float64))
    e = np.where(np.isfinite(mag), e, 0)  # inf/NaN rows: the result is NaN anyway
    y = a.astype(np.float64)
    y *= np.ldexp(1.0, beta - e)  # a power of two: exact
    slices = []
    for _ in range(n - 1):
        whole = np.rint(y)
        slices.append(whole)
        y -= whole  # exact: |y - rint(y)| <= 1/2, on y's own grid
        y *= 2.0**beta
    slices.append(np.rint(y, out=y))
    return slices, e


# Weights are cut and multiplied this many elements at a time: the slices of a block (16 bytes
# an element) stay a few MiB whatever block of rows the caller passes.
_BLOCK_ELEMENTS = 1 << 18


class Left:
    """The left operand x [..., N, K] of `matmul`, cut into its slices once and reused for every
    block of weights it is multiplied with."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.k = x.shape[-1]
        self.n = x.shape[-2]
        if self.k > _SMALL_K:
            self.beta = slice_bits(self.k)
            slices, self.exponents = _split(x, self.beta, _X_SLICES)
            self.stacked = np.concatenate(slices, axis=-2)  # [..., 3N, K]

    def times(self, w: np.ndarray) -> np.ndarray:
        """x @ w.swapaxes(-1, -2) for w [..., R, K]: float64 [..., N, R]."""
        if w.shape[-1] != self.k:
            raise ValueError(f"matmul: {self.x.shape} and {w.shape} do not share the last axis")
        batch = np.broadcast_shapes(self.x.shape[:-2], w.shape[:-2])
        rows = w.shape[-2]
        out = np.empty((*batch, self.n, rows))
        step = max(1, _BLOCK_ELEMENTS // max(self.k, 1))
        for start in range(0, rows, step):
            out[..., start : start + step] = self._block(w[..., start : start + step, :])
        return out

    def _block(self, w: np.ndarray) -> np.ndarray:
        if self.k <= _SMALL_K:
            shape = (*np.broadcast_shapes(self.x.shape[:-2], w.shape[:-2]), self.n, w.shape[-2])
            out, term = np.zeros(shape), np.empty(shape)
            for j in range(self.k):  # element-wise products (float32 widens exactly), added in order
                out += np.multiply(self.x[..., :, j, None], w[..., :, j].astype(np.float64)[..., None, :], out=term)
            return out
        beta, n = self.beta, self.n
        ws, ew = _split(w, beta, _W_SLICES)
        with np.errstate(invalid="ignore", over="ignore"):
            # P_st = x slice s times w slice t, for s + t <= _ORDER: one BLAS product per w slice
            by_w = [np.matmul(self.stacked[..., : (_ORDER + 1 - t) * n, :], ws[t].swapaxes(-1, -2))
                    for t in range(min(_W_SLICES, _ORDER + 1))]
            # sum of P_st * 2**(-beta (s + t)) in a fixed order, smallest terms first
            acc = None
            for order in range(_ORDER, -1, -1):
                for t in range(min(len(by_w) - 1, order), -1, -1):
                    term = by_w[t][..., (order - t) * n : (order - t + 1) * n, :]
                    acc = term.copy() if acc is None else np.add(acc, term, out=acc)
                if order:
                    acc *= 2.0**-beta
            scale = self.exponents + (ew - 2 * beta).swapaxes(-1, -2)  # [..., N, 1] + [..., 1, R]
            return np.ldexp(acc, scale.astype(np.int32), out=acc)


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.swapaxes(-1, -2) in float64 for x [..., N, K] and w [..., R, K] (float32 or float64),
    the same bits on every machine (see the module's docstring)."""
    return Left(x).times(w)


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """BLAS limited to `n` threads in this process for the duration (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield

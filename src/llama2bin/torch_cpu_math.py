"""torch 2.13's CPU float32 pow, cos and sin as the seed's rope tables use them, without torch.

What torch runs for `1 / theta ** (arange(0, hd, 2)[: hd // 2].float() / hd)` and `cos/sin(outer(t, f))`
on x86-64 (found with gdb and perf on torch 2.13.0+cpu, bench/rope_sweep.py measures the rest):

- `theta ** e` (a CPU scalar base): ATen's vectorised loop runs SLEEF's `Sleef_powf16_u10` (AVX512
  build; `Sleef_powf8_u10` on AVX2) on the first `n - n % 32` elements (two 16-wide vectors per step)
  and the C library's `powf` on the rest. `sleef_powf_u10` below is SLEEF 3.6-3.9's algorithm (the
  FMA build: AVX2 and AVX512) in numpy float32 with exact fused multiply-adds; the tail calls the
  process's own libm `powf`, as torch does. The split point is the AVX512 one (the golden files');
  an AVX2 machine splits at `n - n % 16`.
- `1 / x`, `/ hd`, int64 -> float32 and the outer product are single IEEE operations: numpy's are
  the same bits.
- `cos` and `sin` are MKL's, not SLEEF's: torch_cpu_trig.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np

from .errors import Llama2binError

F32 = np.float32

# ---------------------------------------------------------------------------------------------
# Exact float32 arithmetic helpers


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once to float32, as the FMA instruction does.

    a * b of two float32 is exact in float64 (48 significant bits); the float64 sum is made exact
    with TwoSum and then rounded to odd, and a round-to-odd result at 53 bits rounds to nearest at
    24 bits correctly (Boldo & Melquiond, 2008: 53 >= 24 + 2), so no double rounding can occur."""
    p = np.asarray(a, F32).astype(np.float64) * np.asarray(b, F32).astype(np.float64)
    c64 = np.asarray(c, F32).astype(np.float64)
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    even = (np.ascontiguousarray(s).view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(F32)


# Double-float ("df") arithmetic of SLEEF's FMA build (src/common/df.h, ENABLE_FMA_SP); pairs are
# (hi, lo) float32 arrays. SLEEF is compiled with -ffp-contract=off: only these explicit FMAs fuse.


def _add2_ff(x, y):
    s = x + y
    v = s - x
    return s, (x - (s - v)) + (y - v)


def _add2_df_f(x, y):
    s = x[0] + y
    v = s - x[0]
    t = (x[0] - (s - v)) + (y - v)
    return s, t + x[1]


def _add2_df_df(x, y):
    s = x[0] + y[0]
    v = s - x[0]
    t = (x[0] - (s - v)) + (y[0] - v)
    return s, t + (x[1] + y[1])


def _add_df_df(x, y):  # |x| >= |y|
    s = x[0] + y[0]
    return s, (((x[0] - s) + y[0]) + x[1]) + y[1]


def _add_f_df(x, y):
    s = x + y[0]
    return s, ((x - s) + y[0]) + y[1]


def _normalize(t):
    s = t[0] + t[1]
    return s, (t[0] - s) + t[1]


def _mul_df_f(x, y):
    s = x[0] * y
    return s, fma32(x[1], y, fma32(x[0], y, -s))


def _mul_df_df(x, y):
    s = x[0] * y[0]
    return s, fma32(x[0], y[1], fma32(x[1], y[0], fma32(x[0], y[0], -s)))


def _squ(x):
    s = x[0] * x[0]
    return s, fma32(x[0] + x[0], x[1], fma32(x[0], x[0], -s))


def _div(n, d):
    t = F32(1) / d[0]
    s = n[0] * t
    u = fma32(t, n[0], -s)
    v = fma32(-d[1], t, fma32(-d[0], t, np.ones_like(t)))
    return s, fma32(s, v, fma32(n[1], t, u))


def _f(v: float) -> np.float32:
    return np.float32(v)


# ---------------------------------------------------------------------------------------------
# SLEEF's powf, 1.0-ulp variant (Sleef_powf16_u10 / Sleef_powf8_u10; SLEEF is Boost Software
# License 1.0, (c) Naoki Shibata and contributors: this is its xpowf/logkf/expkf, vectorised over
# numpy arrays instead of SIMD lanes, for x > 0 finite and y finite)


def _getmant_p75_1p5(d: np.ndarray) -> np.ndarray:
    """AVX512 getmant(d, [0.75, 1.5)) of normal positive floats: the mantissa 1.f, halved when
    its first fraction bit is set."""
    bits = d.view(np.uint32)
    frac = bits & np.uint32(0x007FFFFF)
    exp = np.where(frac >> np.uint32(22) != 0, np.uint32(0x3F000000), np.uint32(0x3F800000))
    return (frac | exp).view(F32)


def _getexp(v: np.ndarray) -> np.ndarray:
    """AVX512 getexp of positive normal floats (floor(log2 v)), +inf for +inf."""
    e = ((v.view(np.uint32) >> np.uint32(23)).astype(np.int32) - 127).astype(F32)
    return np.where(np.isinf(v), F32(np.inf), e)


def _logkf(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # AVX512 build: exponent from getexp(d * (1/0.75f)), mantissa from getmant (d >= FLT_MIN here).
    e = _getexp(d * _f(1.0 / 0.75))
    e = np.where(np.isinf(e), F32(128), e)
    m = _getmant_p75_1p5(d)
    x = _div(_add2_ff(np.full_like(m, -1), m), _add2_ff(np.ones_like(m), m))
    x2 = _squ(x)
    t = np.full_like(m, _f(0.240320354700088500976562))
    t = fma32(t, x2[0], np.full_like(m, _f(0.285112679004669189453125)))
    t = fma32(t, x2[0], np.full_like(m, _f(0.400007992982864379882812)))
    c = (np.full_like(m, _f(0.66666662693023681640625)), np.full_like(m, _f(3.69183861259614332084311e-09)))
    s = _mul_df_f((np.full_like(m, _f(0.69314718246459960938)), np.full_like(m, _f(-1.904654323148236017e-09))), e)
    s = _add_df_df(s, (x[0] * F32(2), x[1] * F32(2)))
    return _add_df_df(s, _mul_df_df(_mul_df_df(x2, x), _add2_df_df(_mul_df_f(x2, t), c)))


def _ldexp_sleef(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """SLEEF's vldexp_vf_vf_vi2: x * 2^q as four multiplications by 2^(m) and one by 2^(q - 4m)."""
    q = q.astype(np.int32)
    m = q >> 31
    m = (((m + q) >> 6) - m) << 4
    q = q - (m << 2)
    m = m + 127
    m = np.where(m > 0, m, 0)
    m = np.where(m > 0xFF, 0xFF, m)
    u = (m.astype(np.uint32) << np.uint32(23)).view(F32)
    x = x * u * u * u * u
    u = ((q + 127).astype(np.uint32) << np.uint32(23)).view(F32)
    return x * u


def _expkf(d: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    u = (d[0] + d[1]) * _f(1.442695040888963407359924681001892137426645954152985934135449406931)
    q = np.rint(u).astype(np.int32)  # cvtps2dq: round to nearest even
    qf = q.astype(F32)
    s = _add2_df_f(d, qf * _f(-0.693145751953125))
    s = _add2_df_f(s, qf * _f(-1.428606765330187045e-06))
    s = _normalize(s)
    u = np.full_like(s[0], _f(0.00136324646882712841033936))
    for coef in (0.00836596917361021041870117, 0.0416710823774337768554688, 0.166665524244308471679688,
                 0.499999850988388061523438):
        u = fma32(u, s[0], np.full_like(u, _f(coef)))
    t = _add_df_df(s, _mul_df_f(_squ(s), u))
    t = _add_f_df(np.ones_like(u), t)
    u = _ldexp_sleef(t[0] + t[1], q)
    return np.where(d[0] < F32(-104), F32(0), u)


def sleef_powf_u10(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SLEEF's vectorised powf (u10, FMA build) for float32 x > 0 finite normal and y finite."""
    x, y = np.broadcast_arrays(np.asarray(x, F32), np.asarray(y, F32))
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    if not (np.all(np.isfinite(x)) and np.all(x >= np.finfo(F32).tiny) and np.all(np.isfinite(y))):
        raise ValueError("sleef_powf_u10 takes a finite normal base > 0 and a finite exponent")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        result = _expkf(_mul_df_f(_logkf(x), y))
    result = np.where(np.isnan(result), F32(np.inf), result)
    return np.where((y == 0) | (x == 1), F32(1), result)


# ---------------------------------------------------------------------------------------------
# torch's pow(CPU scalar base, float32 tensor): SLEEF for whole pairs of vectors, libm for the rest

# Elements per step of ATen's vectorized_loop: two Vectorized<float> of 16 lanes (AVX512).
ATEN_VECTOR_STEP = 32

_libm_lock = threading.Lock()
_libm_powf = None


def libm_powf(x: float, y: np.ndarray) -> np.ndarray:
    """The C library's powf, element by element: what ATen's scalar tail calls."""
    global _libm_powf
    with _libm_lock:
        if _libm_powf is None:
            try:
                libm = ctypes.CDLL("libm.so.6")  # glibc; find_library runs ldconfig, so only as the fallback
            except OSError:
                name = ctypes.util.find_library("m")
                if name is None:
                    raise Llama2binError("the C math library (libm) was not found: v0 rope tables need its powf") from None
                libm = ctypes.CDLL(name)
            fn = libm.powf
            fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
            _libm_powf = fn
    return np.array([_libm_powf(float(x), float(v)) for v in np.asarray(y, F32)], dtype=F32)


def torch_pow_scalar_base(base: float, exponents: np.ndarray, step: int = ATEN_VECTOR_STEP) -> np.ndarray:
    """`base ** exponents` as torch 2.13 computes it on CPU for a float32 tensor (base cast to float32)."""
    b = F32(base)
    e = np.ascontiguousarray(exponents, F32).reshape(-1)
    split = len(e) - len(e) % step
    return np.concatenate([sleef_powf_u10(b, e[:split]), libm_powf(b, e[split:])])

"""The Q8_0 quantizer as one compiled pass per group (numba), bit-identical to q8_0.quantize_into.

Why compiled: numpy runs each step (bf16 widening, |w|, per-group max, scale, division, rounding,
int8 cast, error) as its own pass over memory, ~10 passes per element; here each group of
`group_size` values is loaded once from the source bytes (bf16 or float32 bit patterns) and
every step runs on it while it is in registers/L1: 0.45 ns per value against numpy's 3.9 (bf16
widening included), and on a 1.1B export 0.7 CPU s against 4.0 (bench/issue21.md).

Never imported directly: formats/q8_fast.py imports it only for work big enough to repay
numba's import (~0.3-0.5 s), with NUMBA_CACHE_DIR set first, and falls back to numpy when numba
is absent.

Bit-exactness, step by step (the numpy path is the reference; tests/test_q8_kernel.py runs both):
- the group max is taken on bit patterns with the sign cleared, like group_absmax_bits, so
  -0.0 and +0.0 give the same +0.0 scale and any NaN/Inf pattern is >= 0x7F800000;
- scale = absmax / 127 and w / divisor are IEEE float32 divisions (no reciprocal: numba's
  default is not fastmath, so LLVM may not turn a division into a multiplication, nor fuse
  t * scale - w into an FMA);
- rounding is np.rint, i.e. llvm.rint under the default round-to-nearest-even mode;
- the int8 cast goes through int32 and keeps the low byte, which is what numpy's unsafe
  float32 -> int8 cast gives on the only out-of-range values that can occur (subnormal groups:
  |q| up to 190, which numpy wraps; tested);
- the error max is taken on the bit patterns of the non-negative errors, which order like
  the values, so LLVM can vectorize the reduction (a float max reduction it would not,
  without fastmath) and the result equals numpy's float max exactly.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
_Q8_MAX = np.float32(127.0)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@intrinsic
def _as_float(typingctx, bits):  # type: ignore[no-untyped-def]
    """uint32 bit pattern -> the float32 it encodes (a register move, no conversion)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _as_bits(typingctx, value):  # type: ignore[no-untyped-def]
    """float32 -> its uint32 bit pattern."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(cache=True, nogil=True, boundscheck=False)
def quantize_groups(src: np.ndarray, shift: np.uint32, group_size: int, q_out: np.ndarray, s_out: np.ndarray) -> np.uint32:
    """Quantize the float32 values whose bit patterns are `src << shift` (uint16 bf16 with
    shift 16, or uint32 float32 bits with shift 0): q into q_out (int8, src.size), scales into
    s_out (float32, src.size // group_size). Returns the bit pattern of the largest
    |w - q * scale| (a non-negative float32), or 0xFFFFFFFF when a group holds NaN or Inf
    (outputs then undefined from that group on)."""
    worst = np.uint32(0)
    for g in range(src.size // group_size):
        base = g * group_size
        amax = np.uint32(0)
        for j in range(group_size):
            amax = max(amax, (np.uint32(src[base + j]) << shift) & _ABS_MASK)
        if amax >= _INF_BITS:
            return np.uint32(0xFFFFFFFF)
        scale = _as_float(amax) / _Q8_MAX
        s_out[g] = scale
        divisor = _ONE if scale == _ZERO else scale  # the seed's 0/0 group: q = 0
        for j in range(group_size):
            w = _as_float(np.uint32(src[base + j]) << shift)
            t = np.rint(w / divisor)
            q_out[base + j] = np.int8(np.int32(t))
            worst = max(worst, _as_bits(abs(t * scale - w)))
    return worst

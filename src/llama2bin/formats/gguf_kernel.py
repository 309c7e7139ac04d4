"""GGUF's Q8_0 and F16 encoders as one compiled pass (numba), bit-identical to gguf_encode's numpy.

Why compiled: the numpy encoders run each step as its own pass over a block of values (Q8_0: six
passes, F16: thirteen). Here each value is loaded once and every step runs on it in registers.
Measured (bench/issue21.md): F16 0.50 ns per value against numpy's 1.8-2.6, Q8_0 1.1 against 1.8
(0.6 of it the per-block max, which numba leaves scalar); a 1.1B HF bf16 export to gguf-f16 3.1 ->
2.4 s (5.5 -> 3.6 CPU s), to gguf-q8_0 2.3 -> 2.1 s (3.8 -> 3.3 CPU s), numba's import included.

Never imported directly: gguf_encode.prepare imports it through q8_fast.import_compiled (numba's
cache folder set first, numpy when numba is absent), under the same size rule as the .bin
quantizer.

Bit-exactness, step by step (gguf_encode's numpy path is the reference, itself checked against
gguf-py; tests/test_gguf_encode.py runs every case through both):
- Q8_0: the block max on bit patterns with the sign cleared; d = amax / 127 and id = 1 / d as
  float32 divisions (no fastmath: LLVM keeps them divisions), id = 0 where 1/d is inf; d as
  float16 by f16_bits_into's integer arithmetic (RNE, float16 subnormals via + 0.5 in float32);
  t = x * id, then trunc(t + copysign(0.49999997, t)) through int32 (|t| < 128 always: q is in
  [-127, 127]).
- F16: f16_bits_into's arithmetic, value by value.
- Refusals: a kernel only reports that a block or value is refused; the caller then runs the numpy
  encoder on the same values, which raises its own message (same text, same first offender).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .q8_0_kernel import _ABS_MASK, _INF_BITS, _ONE, _Q8_MAX, _as_bits, _as_float

_F16_OVERFLOW_BITS = np.float32(65520.0).view(np.uint32)  # |x| >= 65520 becomes inf as float16
_F16_TINY_BITS = np.uint32(0x38800000)  # 2^-14: below it, float16 subnormals
_F16_REBIAS = np.uint32((127 - 15) << 10)
_HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997
_D_OVERFLOW = np.float32(65520.0)
_HALF = np.float32(0.5)
_HALF_BITS = np.float32(0.5).view(np.uint32)
_INF = np.float32(np.inf)
REFUSED = -1


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _f16_bits(a: np.uint32) -> np.uint32:
    """|x|'s bit pattern (sign cleared, finite, below 65520) -> float16 bits, round to nearest even.
    Both roundings are computed and one is selected (no branch: the loops around it vectorize)."""
    tiny = _as_bits(_as_float(a) + _HALF) - _HALF_BITS
    normal = ((a + ((a >> np.uint32(13)) & np.uint32(1)) + np.uint32(0xFFF)) >> np.uint32(13)) - _F16_REBIAS
    return np.uint32(tiny if a < _F16_TINY_BITS else normal)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")  # 1/0 is inf, not an exception
def encode_q8_0(bits: np.ndarray, out: np.ndarray) -> int:
    """float32 values (their uint32 bit patterns, a whole number of 32-value blocks) -> block_q8_0
    rows in `out` (flat uint8, 34 bytes a block: float16 d, 32 int8 q). Returns the number of
    blocks, or REFUSED as soon as a block holds NaN/Inf or its d overflows float16 (outputs then
    undefined)."""
    n_blocks = bits.size // 32
    for b in range(n_blocks):
        base, row = b * 32, b * 34
        amax = np.uint32(0)
        for j in range(32):
            amax = max(amax, np.uint32(bits[base + j] & _ABS_MASK))
        if amax >= _INF_BITS:
            return REFUSED
        d = _as_float(amax) / _Q8_MAX
        if d >= _D_OVERFLOW:
            return REFUSED
        ident = _ONE / d
        if ident == _INF:
            ident = np.float32(0.0)
        h = _f16_bits(_as_bits(d))
        out[row] = np.uint8(h & np.uint32(0xFF))
        out[row + 1] = np.uint8(h >> np.uint32(8))
        for j in range(32):  # copysign rather than bit operations: this loop then vectorizes
            t = _as_float(bits[base + j]) * ident
            out[row + 2 + j] = np.uint8(np.int32(t + np.copysign(_HALF_DOWN, t)) & np.int32(0xFF))
    return n_blocks


@njit(cache=True, nogil=True, boundscheck=False)
def encode_f16(bits: np.ndarray, out: np.ndarray) -> int:
    """float32 bit patterns -> float16 bit patterns in `out` (uint16). Returns the number of values,
    or REFUSED when one is NaN/Inf or would become inf (|x| >= 65520): checked first, in a pass of
    its own, so that the conversion loop has no exit and vectorizes."""
    amax = np.uint32(0)
    for i in range(bits.size):
        amax = max(amax, np.uint32(bits[i] & _ABS_MASK))
    if amax >= _F16_OVERFLOW_BITS:  # also every NaN and Inf pattern
        return REFUSED
    for i in range(bits.size):
        x = bits[i]
        out[i] = np.uint16(_f16_bits(np.uint32(x & _ABS_MASK)) | ((x >> np.uint32(16)) & np.uint32(0x8000)))
    return bits.size

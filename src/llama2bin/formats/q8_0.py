"""Q8_0 group quantization, bit-exact with the seed's torch `quantize_q80`.

scale = max|w| / 127 in float32; q = round-half-even(w / scale) as int8. The seed divides
0 by 0 for an all-zero group; we define that group as scale 0, q 0 (its x86 output).

`quantize` is the plain reference. `quantize_into` is what the writer runs: the same
arithmetic, bit for bit, by the compiled kernel for big exports (q8_fast, q8_0_kernel), else
by `quantize_into_numpy`, block by block in caller-owned buffers. Why blocks: numpy's
temporaries for a 16 MiB chunk are fresh pages every call (page faults and cache misses
cost more than the arithmetic), and a float `max(axis=1)` over 64-element rows is 3x slower
than the same reduction on the values' bit patterns. Blocks of BLOCK_ELEMS keep every
temporary in L2, and numpy releases the GIL inside each call, so two writer threads
quantize on two cores.
"""

from __future__ import annotations

import os

import numpy as np

from ..constants import DEFAULT_GROUP_SIZE, Q8_MAX
from ..errors import Llama2binError
from . import q8_fast

_Q8_MAX = np.float32(Q8_MAX)

# Elements per block: 256 KiB of float32, so a block and its temporaries stay in L2.
BLOCK_ELEMS = 1 << 16

# Clearing the sign bit of an IEEE float is abs(); for non-negative floats (and +inf) the
# unsigned bit patterns order exactly like the values, NaN patterns sort above +inf.
ABS_MASK = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)


def choose_group_size(dim: int, requested: int = DEFAULT_GROUP_SIZE) -> int:
    """The seed's back-off: halve the group size until it divides dim."""
    if requested <= 0:
        raise Llama2binError(f"group size must be positive, got {requested}")
    group_size = requested
    while dim % group_size:
        group_size //= 2
    return group_size


def quantize(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float32 values (a multiple of group_size of them) -> (int8 q, float32 scales)."""
    groups = w.reshape(-1, group_size)
    scale = np.abs(groups).max(axis=1) / _Q8_MAX
    divisor = np.where(scale == 0, np.float32(1), scale)
    q = np.rint(groups / divisor[:, None]).astype(np.int8)
    return q.reshape(-1), scale


def dequantize(q: np.ndarray, scale: np.ndarray, group_size: int) -> np.ndarray:
    """q * scale per group, float32, flat."""
    return (q.reshape(-1, group_size).astype(np.float32) * scale[:, None]).reshape(-1)


def max_group_error(w: np.ndarray, q: np.ndarray, scale: np.ndarray, group_size: int) -> float:
    """The seed's error measure: the largest |w - q*scale| over all elements."""
    return float(np.abs(dequantize(q, scale, group_size) - w.reshape(-1)).max(initial=0.0))


class Scratch:
    """One thread's reusable temporaries for the block functions (never share across threads)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def get(self, key: str, n: int, dtype: type) -> np.ndarray:
        """A flat array of at least n elements of `dtype`, reused between calls; contents undefined."""
        arr = self._arrays.get((key, np.dtype(dtype).str))
        if arr is None or arr.size < n:
            arr = np.empty(max(n, BLOCK_ELEMS), dtype=dtype)
            self._arrays[(key, np.dtype(dtype).str)] = arr
        return arr[:n]


_process_scratch: tuple[int, Scratch] | None = None


def process_scratch() -> Scratch:
    """This process's reusable buffers (a forked worker gets its own, not its parent's)."""
    global _process_scratch
    if _process_scratch is None or _process_scratch[0] != os.getpid():
        _process_scratch = (os.getpid(), Scratch())
    return _process_scratch[1]


def block_elems(group_size: int) -> int:
    """Elements per block: a whole number of groups, about BLOCK_ELEMS."""
    return max(1, BLOCK_ELEMS // group_size) * group_size


def group_absmax_bits(w: np.ndarray, group_size: int, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Bit patterns (uint32) of max|w| per group, into `out`; w is one block of float32.

    As floats they equal np.abs(groups).max(axis=1) exactly (including +0.0 for all-zero
    groups); a pattern >= 0x7F800000 means the group holds an Inf or NaN.
    """
    bits = scratch.get("bits", w.size, np.uint32)
    np.bitwise_and(w.view(np.uint32), ABS_MASK, out=bits)
    return np.max(bits.reshape(-1, group_size), axis=1, out=out)


def group_scales_into(w: np.ndarray, group_size: int, out: np.ndarray, scratch: Scratch) -> bool:
    """The scales `quantize(w)` would produce, into `out` (float32, one per group), block by
    block. Returns False (scales undefined) when w holds NaN or Inf."""
    step = block_elems(group_size)
    finite = True
    for start in range(0, w.size, step):
        blk = w[start : start + step]
        g0, g1 = start // group_size, (start + blk.size) // group_size
        bits = group_absmax_bits(blk, group_size, out[g0:g1].view(np.uint32), scratch)
        if finite and bits.size and bits.max() >= _INF_BITS:
            finite = False
        np.divide(bits.view(np.float32), _Q8_MAX, out=out[g0:g1])
    return finite


def quantize_into(w: np.ndarray, group_size: int, q_out: np.ndarray, s_out: np.ndarray, scratch: Scratch) -> float | None:
    """`quantize(w)` written into q_out (int8, w.size) and s_out (float32, w.size // group_size),
    bit-identical to it; returns `max_group_error` of the result, or None (outputs undefined)
    if w holds NaN or Inf. The compiled kernel does it when this process loaded it (q8_fast:
    big exports), else `quantize_into_numpy`."""
    if q8_fast.loaded() and w.dtype == np.float32 and w.ndim == 1 and w.flags.c_contiguous:
        return q8_fast.quantize_bits(w.view(np.uint32), group_size, q_out, s_out)
    return quantize_into_numpy(w, group_size, q_out, s_out, scratch)


def quantize_into_numpy(w: np.ndarray, group_size: int, q_out: np.ndarray, s_out: np.ndarray,
                        scratch: Scratch) -> float | None:
    """`quantize_into` in numpy, block by block: the reference the compiled kernel is tested against."""
    step = block_elems(group_size)
    worst = np.float32(0)
    for start in range(0, w.size, step):
        blk = w[start : start + step]
        n = blk.size
        g0, g1 = start // group_size, (start + n) // group_size
        scale = s_out[g0:g1]
        bits = group_absmax_bits(blk, group_size, scale.view(np.uint32), scratch)
        if bits.max() >= _INF_BITS:
            return None
        np.divide(bits.view(np.float32), _Q8_MAX, out=scale)
        divisor = scratch.get("divisor", g1 - g0, np.float32)
        np.copyto(divisor, scale)
        divisor[divisor == 0] = 1  # the seed's 0/0 group: q = 0
        groups = blk.reshape(-1, group_size)
        t = scratch.get("t", n, np.float32).reshape(-1, group_size)
        np.divide(groups, divisor[:, None], out=t)
        np.rint(t, out=t)
        np.copyto(q_out[start : start + n].reshape(-1, group_size), t, casting="unsafe")
        # t holds the q values exactly as float32, so t * scale is dequantize(q, scale).
        np.multiply(t, scale[:, None], out=t)
        np.subtract(t, groups, out=t)
        np.abs(t, out=t)
        worst = max(worst, t.max())
    return float(worst)


def all_finite(w: np.ndarray) -> bool:
    """No NaN or Inf in w, without a boolean temporary: max and min propagate NaN, and an
    Inf is the max or the min."""
    return bool(np.isfinite(w.max()) and np.isfinite(w.min())) if w.size else True

"""Q8_0 group quantization, bit-exact with the seed's torch `quantize_q80`.

scale = max|w| / 127 in float32; q = round-half-even(w / scale) as int8. The seed divides
0 by 0 for an all-zero group; we define that group as scale 0, q 0 (its x86 output).
"""

from __future__ import annotations

import numpy as np

from ..constants import DEFAULT_GROUP_SIZE, Q8_MAX
from ..errors import Llama2binError

_Q8_MAX = np.float32(Q8_MAX)


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

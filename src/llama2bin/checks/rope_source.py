"""RoPE that does not come from a model's config: a target program's way (checks/as_run.py).

The reference forward computes RoPE from `ModelConfig.inv_freq()`; a program that reads v0's
stored freqs_cos/freqs_sin (the `tables` target) turns positions by those values instead, and the
forward then takes them from here (`hidden_states(..., rope=table_rope(cos, sin))`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..sources.base import TensorRef

# (cos, sin) [len(positions), head_size // 2] for integer positions (float64, or float32 tables).
RopeSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def table_rope(cos_table: TensorRef, sin_table: TensorRef) -> RopeSource:
    """RoPE read from stored tables (v0's freqs_cos/freqs_sin), rows = positions."""
    def read(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(positions.min()), int(positions.max()) + 1
        cos, sin = cos_table.read_rows(lo, hi), sin_table.read_rows(lo, hi)
        return cos[positions - lo].astype(np.float64), sin[positions - lo].astype(np.float64)
    return read

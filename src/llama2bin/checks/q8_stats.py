"""What the Q8_0 round-trip check of one chunk finds: shared by the numpy path (q8_chunk.py) and the
compiled one (q8_chunk_jit.py), which imports nothing else of the numpy path's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ChunkStats:
    """What the arithmetic found in one chunk; `bad_scale` >= 0 means nothing else is valid."""

    bad_scale: int  # first group (in the chunk) whose scale is not the source's absmax / 127, or -1
    gmax: np.ndarray  # float64 per group: largest |fl(q*s) - w|
    sq_err: float  # sum over blocks of the pairwise float64 sum of (q*s - w)**2
    sq_ref: float  # the same of w**2
    hist: np.ndarray  # int64 per histogram bin: groups whose gmax falls in [e_i, e_i+1), last closed
    max_abs_err: float
    wrong_q: int = -1  # first element (in the chunk) whose q is not the writer's; nothing else valid then

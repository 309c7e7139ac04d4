"""The rotary tables v0 stores after the weights.

Byte parity with the seed requires torch's own float32 cos/sin (SLEEF, within 1 ulp but not
correctly rounded, so numpy cannot reproduce them). torch is imported here, lazily, and only
when a v0 file is written or verified; everything else in llama2bin runs without it.
"""

from __future__ import annotations

import numpy as np

from ..errors import Llama2binError


def rope_tables(head_size: int, max_seq_len: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(freqs_cos, freqs_sin), each float32 [max_seq_len, head_size // 2], as llama2.c computes them."""
    try:
        import torch
    except ImportError:
        raise Llama2binError("writing or verifying version 0 needs torch (pip install torch==2.13.0)") from None
    # One thread: torch's multi-threaded cos/sin now and then returned values off by ~1e-4 for
    # the part of the table a second OpenMP thread computed (seen on a 2-core VM, ~1 run in 10);
    # single-threaded they are the accurate, reproducible ones (and the tables are small).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f = 1.0 / (theta ** (torch.arange(0, head_size, 2)[: (head_size // 2)].float() / head_size))
        t = torch.arange(max_seq_len, device=f.device)
        angles = torch.outer(t, f).float()
        return torch.cos(angles).numpy(), torch.sin(angles).numpy()
    finally:
        torch.set_num_threads(threads)

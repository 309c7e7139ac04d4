"""The q8 arithmetic's matmul (checks/forward.py, `_Linear._q8`) is runq.c's, bit for bit: for
every output, each group's integer dot product as a float32 `ival`, times the weight group's scale,
times the activation group's scale, added to a float32 sum group after group. Checked against a
scalar transcription of runq.c's loop, at group sizes from 1 to 2048 (beyond 1024 the integer
sums may leave float32's exact range), for a few and many positions, and with a teacher-forcing hook."""

from __future__ import annotations

import numpy as np
import pytest

from llama2bin.checks.forward import Q8, _Linear, quantize_activations
from llama2bin.checks.weights import LazyWeights


class _OneQ8Tensor(LazyWeights):
    def __init__(self, q: np.ndarray, s: np.ndarray, group_size: int):
        self.q, self.s, self.group_size = q, s, group_size

    def shape(self, name: str) -> tuple[int, ...]:
        return self.q.shape

    def q8_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.q[start:stop], self.s[start:stop]


def _runq(xq: np.ndarray, xs: np.ndarray, q: np.ndarray, s: np.ndarray, gs: int) -> np.ndarray:
    """runq.c's matmul, element by element: ival in integers, then float32 as runq.c computes."""
    n, cols = xq.shape
    out = np.zeros((n, q.shape[0]), np.float32)
    xi, qi = xq.astype(np.int64), q.astype(np.int64)
    for i in range(n):
        for r in range(q.shape[0]):
            val = np.float32(0)
            for g in range(cols // gs):
                ival = int(xi[i, g * gs : (g + 1) * gs] @ qi[r, g * gs : (g + 1) * gs])
                val = np.float32(val + np.float32(np.float32(ival) * s[r, g]) * xs[i, g])
            out[i, r] = val
    return out


def _case(rng: np.random.Generator, n: int, rows: int, cols: int, gs: int):
    x = rng.standard_t(3, (n, cols)) * 0.5
    x[:, :gs] = 0.0  # an all-zero activation group: scale 0
    q = rng.integers(-127, 128, (rows, cols), dtype=np.int8)
    s = (rng.random((rows, cols // gs)) * 0.01).astype(np.float32)
    return x, q, s


@pytest.mark.parametrize("gs, n, rows, cols", [(1, 3, 5, 7), (2, 4, 9, 12), (3, 2, 7, 12), (32, 16, 70, 96),
                                               (64, 5, 33, 256), (256, 2, 9, 512), (1024, 3, 4, 2048)])
def test_q8_matmul_is_runq_bit_for_bit(gs, n, rows, cols):
    rng = np.random.default_rng(gs * 1000 + n)
    x, q, s = _case(rng, n, rows, cols, gs)
    got = _Linear(_OneQ8Tensor(q, s, gs), Q8)(x, "w")
    xq, xs = quantize_activations(x.astype(np.float32), gs)
    want = _runq(xq, xs, q, s, gs)
    assert got.dtype == np.float64 and np.array_equal(got.astype(np.float32).view(np.uint32), want.view(np.uint32))
    part = _Linear(_OneQ8Tensor(q, s, gs), Q8)(x, "w", rows=(1, rows - 1))  # a range of rows
    assert np.array_equal(part, got[:, 1 : rows - 1])


def test_many_positions_and_a_hook():
    """Steps of a few rows (many positions): the same sums; the hook's (q, scales) are used."""
    rng = np.random.default_rng(5)
    gs, n, rows, cols = 8, 300, 40, 64
    x, q, s = _case(rng, n, rows, cols, gs)

    def hook(name, xf, xq, xs):
        return xq, xs * np.float32(2)  # e.g. C's scales: any (q, scales) given is what is used

    got = _Linear(_OneQ8Tensor(q, s, gs), Q8, q8_hook=hook)(x, "w")
    xq, xs = quantize_activations(x.astype(np.float32), gs)
    want = _runq(xq[:7], xs[:7] * np.float32(2), q, s, gs)
    assert np.array_equal(got[:7].astype(np.float32).view(np.uint32), want.view(np.uint32))


def test_group_sums_beyond_float32s_exact_integers():
    """gs = 2048 with every activation quantized to 127 and weights near 127: sums of ~3.3e7, past
    2^24, which float32 arithmetic need not hold exactly (runq.c's int32 does; whether a given
    BLAS's float32 would round them depends on how it blocks the sum, so this checks the result,
    not that float32 fails)."""
    rng = np.random.default_rng(9)
    gs, n, rows, cols = 2048, 2, 6, 2048
    x = np.ones((n, cols))
    q = np.full((rows, cols), 127, np.int8)
    q[:, :5] = rng.integers(-127, 128, (rows, 5))
    s = np.full((rows, 1), 1e-4, np.float32)
    xq, xs = quantize_activations(x.astype(np.float32), gs)
    sums = xq.astype(np.int64) @ q.astype(np.int64).T
    assert (np.abs(sums) > 1 << 24).all() and (sums % 4 != 0).any()  # not float32 integers
    got = _Linear(_OneQ8Tensor(q, s, gs), Q8)(x, "w")
    assert np.array_equal(got.astype(np.float32).view(np.uint32), _runq(xq, xs, q, s, gs).view(np.uint32))

"""The statistics llama.cpp's `llama-perplexity --kl-divergence` reports, accumulated block by block.

Logits are never held for every position at once: the functional check feeds blocks of rows
(positions) of the reference's and the file's logits, and `LogitComparison` keeps per-position
scalars only (KL divergence, top tokens, probabilities of the next token) - so memory is
positions x a few floats plus one block of positions x vocabulary, whatever the vocabulary.

Definitions (all in float64, natural logarithms; exp and log from numerics.py, sums numpy's
pairwise sums along a contiguous axis: the same bits on every machine):
- KL(P_source || P_file) per position: mean, percentiles 50/90/99/99.9, max;
- same top: how often the two argmaxes agree;
- perplexity exp(-mean log p(next token)) of the source and of the file over every position
  that has a next token in its sequence, ΔPPL = PPL_file - PPL_source, ratio PPL_file / PPL_source;
- RMS Δp: root mean square of p_file(next) - p_source(next) over the same positions (llama.cpp's
  "RMS Δp"); with random evaluation ids this is still defined, only less meaningful.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import numerics

# KL divergences are summarised in these log-spaced bins (the first holds exact zeros and
# anything below 1e-12); the reports plot them.
KLD_HIST_EDGES = [0.0, *numerics.powers_of_ten(-24, 4, 2)]
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

# Logits compared at once: positions x vocabulary entries of a block (numerics' float64: 16 MiB
# per array, four alive: the file's and the source's logits, probabilities, products), so the
# comparison peaks near 64 MiB whatever the vocabulary (tests/test_quality.py).
BLOCK_ELEMENTS = 1 << 21
# ... of which this many at a time go through all the passes of the comparison (they stay in L2).
_PASS_ELEMENTS = 1 << 15


def block_columns(positions: int) -> int:
    """Vocabulary entries per block when `positions` positions are compared together."""
    return max(1, BLOCK_ELEMENTS // max(1, positions))


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.ascontiguousarray(x, dtype=np.float64) - x.max(axis=-1, keepdims=True)
    return shifted - numerics.log(np.sum(numerics.exp(shifted), axis=-1, keepdims=True))


class _Positions:
    """Running per-position sums over vocabulary blocks fed in order: for the reference's logits x
    and the file's y, the max m and sum of exp(logit - m) of both (a log-sum-exp kept in order),
    sum exp(x - m_x) (x - y) (the KL divergence's numerator), the argmaxes and the next tokens'
    logits. No position ever needs its whole row of logits at once."""

    def __init__(self, next_tokens: np.ndarray):
        n = len(next_tokens)
        self.next = np.asarray(next_tokens, dtype=np.int64)
        self.m_ref, self.m_got = np.full(n, -np.inf), np.full(n, -np.inf)
        self.s_ref, self.s_got, self.weighted_diff = np.zeros(n), np.zeros(n), np.zeros(n)
        self.top_ref, self.top_got = np.full(n, -np.inf), np.full(n, -np.inf)
        self.arg_ref, self.arg_got = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.x_next, self.y_next = np.zeros(n), np.zeros(n)
        self.max_abs_logit = self.max_abs_dlogit = 0.0
        self._work: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, start: int, ref: np.ndarray, got: np.ndarray) -> None:
        """Vocabulary entries start .. start + ref.shape[1] of every position (float64 [n, cols]),
        a few rows at a time so that every pass over them runs in cache."""
        same = got is ref  # the functional check's proven-identical output (functional.py, source_weights)
        ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
        step = max(1, _PASS_ELEMENTS // max(1, ref.shape[1]))
        for first in range(0, ref.shape[0], step):
            rows = slice(first, min(ref.shape[0], first + step))
            if same:
                self._add_same_rows(rows, start, ref[rows])
            else:
                self._add_rows(rows, start, ref[rows], got[rows])

    def _buffers(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays of `shape`, reused piece after piece (fresh ones come from mmap, whose
        page faults would cost as much as the arithmetic)."""
        size = shape[0] * shape[1]
        if self._work is None or self._work[0].size < size:
            self._work = (np.empty(size), np.empty(size))
        return self._work[0][:size].reshape(shape), self._work[1][:size].reshape(shape)

    def _add_rows(self, rows: slice, start: int, x: np.ndarray, y: np.ndarray) -> None:
        """x, y: the reference's and the file's logits of positions `rows`, entries from `start`."""
        top_x = self._tops(rows, start, x, self.top_ref, self.arg_ref, self.x_next)
        top_y = self._tops(rows, start, y, self.top_got, self.arg_got, self.y_next)
        diff, e = self._buffers(x.shape)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, which the statistics show
            np.subtract(x, y, out=diff)
        # np.max, not Python's max: a NaN logit must reach the statistics (and fail a float32 file)
        self.max_abs_logit = float(np.max([self.max_abs_logit, top_x.max(), -x.min()]))
        self.max_abs_dlogit = float(np.max([self.max_abs_dlogit, diff.max(), -diff.min()]))
        fade = self._sum_exp(rows, x, top_x, self.m_ref, self.s_ref, e)
        with np.errstate(invalid="ignore"):  # the KL numerator sum exp(x - m) (x - y), x's exponentials in e
            self.weighted_diff[rows] = self.weighted_diff[rows] * fade + np.sum(np.multiply(e, diff, out=diff), axis=1)
        self._sum_exp(rows, y, top_y, self.m_got, self.s_got, e)

    def _add_same_rows(self, rows: slice, start: int, x: np.ndarray) -> None:
        """`_add_rows(rows, start, x, x)`, the same bits at about half the cost: the file's side
        would repeat the reference's operations on the same numbers (its max, exponentials, sums
        and argmax), and x - x is +0.0, which adds +0.0 to the KL numerator. Logits that are not
        all finite (x - x is NaN there) take the full path."""
        if not (np.isfinite(x.max()) and np.isfinite(x.min())):
            self._add_rows(rows, start, x, x.copy())
            return
        top_x = self._tops(rows, start, x, self.top_ref, self.arg_ref, self.x_next)
        _, e = self._buffers(x.shape)
        self.max_abs_logit = float(np.max([self.max_abs_logit, top_x.max(), -x.min()]))
        self.max_abs_dlogit = float(np.max([self.max_abs_dlogit, 0.0, -0.0]))
        fade = self._sum_exp(rows, x, top_x, self.m_ref, self.s_ref, e)
        self.weighted_diff[rows] = self.weighted_diff[rows] * fade + 0.0
        self.top_got[rows], self.arg_got[rows] = self.top_ref[rows], self.arg_ref[rows]
        self.y_next[rows] = self.x_next[rows]
        self.s_got[rows], self.m_got[rows] = self.s_ref[rows], self.m_ref[rows]

    def _tops(self, rows: slice, start: int, x: np.ndarray, top: np.ndarray, arg: np.ndarray,
              at_next: np.ndarray) -> np.ndarray:
        """Update one side's running argmax and next-token logits; return the rows' maxima."""
        best = x.argmax(axis=1)
        new = x[np.arange(x.shape[0]), best]
        better = new > top[rows]  # ties keep the earlier entry, as argmax over the whole row
        top[rows] = np.where(better, new, top[rows])
        arg[rows] = np.where(better, start + best, arg[rows])
        nxt = self.next[rows]
        here = np.flatnonzero((nxt >= start) & (nxt < start + x.shape[1]))
        at_next[rows][here] = x[here, nxt[here] - start]
        return new

    def _sum_exp(self, rows: slice, x: np.ndarray, top: np.ndarray, m_acc: np.ndarray, s_acc: np.ndarray,
                 e: np.ndarray) -> np.ndarray:
        """One side's running log-sum-exp (max m_acc, sum s_acc) over x, leaving exp(x - m) in `e`;
        returns the factor that rescaled the earlier sums to the new max."""
        with np.errstate(invalid="ignore"):  # NaN logits (a broken file) give NaN statistics
            m = np.maximum(m_acc[rows], top)
            fade = numerics.exp(m_acc[rows] - m)  # earlier sums, rescaled to the new max (0 at first)
            numerics.exp(np.subtract(x, m[:, None], out=e), out=e)
            s_acc[rows] = s_acc[rows] * fade + np.sum(e, axis=1)
            m_acc[rows] = m
        return fade

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(KL divergence, same top, log p_source(next), log p_file(next)) per position; the
        last two for positions with a next token only."""
        with np.errstate(invalid="ignore", divide="ignore"):
            # KL = sum p (x - y) - (lse_x - lse_y), lse = m + log s: the difference of the two
            # log-sum-exps taken as (m_x - m_y) + log(s_x / s_y), exact to a few ulp of the KL
            kld = self.weighted_diff / self.s_ref - (self.m_ref - self.m_got) - numerics.log(self.s_ref / self.s_got)
            has = self.next >= 0
            lp_ref = self.x_next[has] - (self.m_ref[has] + numerics.log(self.s_ref[has]))
            lp_got = self.y_next[has] - (self.m_got[has] + numerics.log(self.s_got[has]))
        # KL(P||Q) >= 0; rounding can leave -1e-17 where the two are equal.
        return np.maximum(kld, 0.0), self.arg_ref == self.arg_got, lp_ref, lp_got


@dataclass
class PositionStats:
    """Per position of a block of positions: KL divergence, same top token, log p of the next
    token by the reference and the file (positions with a next token only); and the block's
    largest |logit| and |Δlogit|."""

    kld: np.ndarray
    same: np.ndarray
    lp_ref: np.ndarray
    lp_got: np.ndarray
    max_abs_logit: float
    max_abs_dlogit: float


def position_stats(next_tokens: np.ndarray, blocks: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> PositionStats:
    """`LogitComparison.add_positions`'s values for these positions, not yet added."""
    acc = _Positions(next_tokens)
    for start, ref, got in blocks:
        acc.add(start, ref, got)
    return PositionStats(*acc.finish(), acc.max_abs_logit, acc.max_abs_dlogit)


class LogitComparison:
    """Feed the (reference, file) logits of blocks of positions, each position's vocabulary in
    blocks (`add_positions`), or whole rows (`add`); read `stats()`."""

    def __init__(self) -> None:
        self._kld: list[np.ndarray] = []
        self._same: list[np.ndarray] = []
        self._lp_ref: list[np.ndarray] = []  # log p(next token), rows with a next token only
        self._lp_got: list[np.ndarray] = []
        self.max_abs_logit = 0.0
        self.max_abs_dlogit = 0.0

    def add_positions(self, next_tokens: np.ndarray, blocks: Iterable[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Positions with these next tokens (-1: none), their logits as (first vocabulary entry,
        reference [n, cols], file [n, cols]) blocks covering the vocabulary in order."""
        self.add_stats(position_stats(next_tokens, blocks))

    def add_stats(self, part: PositionStats) -> None:
        """The next positions' values, computed by `position_stats` (here, or in a worker process:
        a position's values depend on its own logits only, so positions split among processes and
        added back in order give the statistics of one pass over all of them, bit for bit)."""
        self._kld.append(part.kld)
        self._same.append(part.same)
        self._lp_ref.append(part.lp_ref)
        self._lp_got.append(part.lp_got)
        self.max_abs_logit = float(np.max([self.max_abs_logit, part.max_abs_logit]))  # NaN stays NaN
        self.max_abs_dlogit = float(np.max([self.max_abs_dlogit, part.max_abs_dlogit]))

    def add(self, ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray) -> None:
        """Whole rows of logits [n, vocab]."""
        step = block_columns(ref.shape[0])

        def blocks() -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
            for v in range(0, ref.shape[1], step):
                block = ref[:, v : v + step]
                yield v, block, block if got is ref else got[:, v : v + step]  # the same logits stay one object

        self.add_positions(next_tokens, blocks())

    def stats(self) -> dict[str, Any]:
        # + 0.0 turns -0.0 into 0.0: SIMD maxima may pick either zero, and the JSON would show it
        kld = np.concatenate(self._kld) + 0.0
        lp_ref, lp_got = np.concatenate(self._lp_ref), np.concatenate(self._lp_got)
        hist, _ = np.histogram(np.clip(kld, 0.0, KLD_HIST_EDGES[-1]), bins=KLD_HIST_EDGES)
        out: dict[str, Any] = {
            "positions": int(kld.size),
            "max_abs_logit": self.max_abs_logit + 0.0,
            "max_abs_dlogit": self.max_abs_dlogit + 0.0,
            "kld_mean": float(kld.mean()),
            "kld_percentiles": {f"p{p:g}": float(np.percentile(kld, p)) + 0.0 for p in PERCENTILES},
            "kld_max": float(kld.max()) + 0.0,
            "kld_hist": hist.tolist(),
            "same_top": float(np.concatenate(self._same).mean()),
            "predicted": int(lp_ref.size),
        }
        if lp_ref.size:
            ppl_src, ppl_got = (float(v) for v in numerics.exp(-np.array([lp_ref.mean(), lp_got.mean()])))
            dp = numerics.exp(lp_got) - numerics.exp(lp_ref)
            out.update(ppl_source=ppl_src, ppl_file=ppl_got, delta_ppl=ppl_got - ppl_src, ppl_ratio=ppl_got / ppl_src,
                       rms_dp=math.sqrt(float(np.mean(dp * dp))))
        else:  # sequences of one token: nothing is predicted
            out.update(ppl_source=None, ppl_file=None, delta_ppl=None, ppl_ratio=None, rms_dp=None)
        return out


def compare_logits(ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray | None = None) -> dict[str, Any]:
    """The statistics of `got` against `ref` (logits [..., vocab]) in one call; `next_tokens`
    (one per row, -1 for none) enables perplexity and RMS Δp."""
    same = got is ref
    ref = ref.reshape(-1, ref.shape[-1])
    got = ref if same else got.reshape(-1, got.shape[-1])
    nxt = np.full(ref.shape[0], -1, dtype=np.int64) if next_tokens is None else np.asarray(next_tokens).reshape(-1)
    cmp = LogitComparison()
    cmp.add(ref, got, nxt)
    return cmp.stats()

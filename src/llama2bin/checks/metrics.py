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
        ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
        step = max(1, _PASS_ELEMENTS // max(1, ref.shape[1]))
        for first in range(0, ref.shape[0], step):
            rows = slice(first, min(ref.shape[0], first + step))
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
        index = np.arange(x.shape[0])
        best_x, best_y = x.argmax(axis=1), y.argmax(axis=1)
        top_x, top_y = x[index, best_x], y[index, best_y]  # the rows' maxima
        for top, arg, best, new in ((self.top_ref, self.arg_ref, best_x, top_x), (self.top_got, self.arg_got, best_y, top_y)):
            better = new > top[rows]  # ties keep the earlier entry, as argmax over the whole row
            top[rows] = np.where(better, new, top[rows])
            arg[rows] = np.where(better, start + best, arg[rows])
        nxt = self.next[rows]
        here = np.flatnonzero((nxt >= start) & (nxt < start + x.shape[1]))
        self.x_next[rows][here], self.y_next[rows][here] = x[here, nxt[here] - start], y[here, nxt[here] - start]
        diff, e = self._buffers(x.shape)
        np.subtract(x, y, out=diff)
        # np.max, not Python's max: a NaN logit must reach the statistics (and fail a float32 file)
        self.max_abs_logit = float(np.max([self.max_abs_logit, top_x.max(), -x.min()]))
        self.max_abs_dlogit = float(np.max([self.max_abs_dlogit, diff.max(), -diff.min()]))
        with np.errstate(invalid="ignore"):  # NaN logits (a broken file) give NaN statistics
            m = np.maximum(self.m_ref[rows], top_x)
            fade = numerics.exp(self.m_ref[rows] - m)  # earlier sums, rescaled to the new max (0 at first)
            numerics.exp(np.subtract(x, m[:, None], out=e), out=e)
            self.s_ref[rows] = self.s_ref[rows] * fade + np.sum(e, axis=1)
            self.weighted_diff[rows] = self.weighted_diff[rows] * fade + np.sum(np.multiply(e, diff, out=diff), axis=1)
            self.m_ref[rows] = m
            m = np.maximum(self.m_got[rows], top_y)
            fade = numerics.exp(self.m_got[rows] - m)
            numerics.exp(np.subtract(y, m[:, None], out=e), out=e)
            self.s_got[rows] = self.s_got[rows] * fade + np.sum(e, axis=1)
            self.m_got[rows] = m

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
        acc = _Positions(next_tokens)
        for start, ref, got in blocks:
            acc.add(start, ref, got)
        kld, same, lp_ref, lp_got = acc.finish()
        self._kld.append(kld)
        self._same.append(same)
        self._lp_ref.append(lp_ref)
        self._lp_got.append(lp_got)
        self.max_abs_logit = float(np.max([self.max_abs_logit, acc.max_abs_logit]))  # NaN stays NaN
        self.max_abs_dlogit = float(np.max([self.max_abs_dlogit, acc.max_abs_dlogit]))

    def add(self, ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray) -> None:
        """Whole rows of logits [n, vocab]."""
        step = block_columns(ref.shape[0])
        self.add_positions(next_tokens, ((v, ref[:, v : v + step], got[:, v : v + step])
                                         for v in range(0, ref.shape[1], step)))

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
    ref = ref.reshape(-1, ref.shape[-1])
    got = got.reshape(-1, got.shape[-1])
    nxt = np.full(ref.shape[0], -1, dtype=np.int64) if next_tokens is None else np.asarray(next_tokens).reshape(-1)
    cmp = LogitComparison()
    cmp.add(ref, got, nxt)
    return cmp.stats()

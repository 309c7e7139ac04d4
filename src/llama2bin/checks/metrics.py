"""The statistics llama.cpp's `llama-perplexity --kl-divergence` reports, accumulated block by block.

Logits are never held for every position at once: the functional check feeds blocks of rows
(positions) of the reference's and the file's logits, and `LogitComparison` keeps per-position
scalars only (KL divergence, top tokens, probabilities of the next token) - so memory is
positions x a few floats plus one block of positions x vocabulary, whatever the vocabulary.

Definitions (all in float64, natural logarithms):
- KL(P_source || P_file) per position: mean, percentiles 50/90/99/99.9, max;
- same top: how often the two argmaxes agree;
- perplexity exp(-mean log p(next token)) of the source and of the file over every position
  that has a next token in its sequence, ΔPPL = PPL_file - PPL_source, ratio PPL_file / PPL_source;
- RMS Δp: root mean square of p_file(next) - p_source(next) over the same positions (llama.cpp's
  "RMS Δp"); with random evaluation ids this is still defined, only less meaningful.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# KL divergences are summarised in these log-spaced bins (the first holds exact zeros and
# anything below 1e-12); the reports plot them.
KLD_HIST_EDGES = [0.0] + np.logspace(-12, 2, 29).tolist()
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

# Logits compared at once: each float64 temporary of a block is 16 MiB, and about six are alive
# (log-softmax of both, probabilities, products), so the comparison peaks near 100 MiB whatever
# the vocabulary (measured: 50 MiB with blocks of 2^20, tests/test_quality.py).
BLOCK_ELEMENTS = 1 << 21


def block_rows(vocab_size: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, vocab_size))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LogitComparison:
    """Feed (reference, file) logit blocks with each row's next token (-1: none); read `stats()`."""

    def __init__(self) -> None:
        self._kld: list[np.ndarray] = []
        self._same: list[np.ndarray] = []
        self._lp_ref: list[np.ndarray] = []  # log p(next token), rows with a next token only
        self._lp_got: list[np.ndarray] = []
        self.max_abs_logit = 0.0
        self.max_abs_dlogit = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray) -> None:
        lp_ref, lp_got = log_softmax(ref), log_softmax(got)
        p_ref = np.exp(lp_ref)
        # KL(P||Q) >= 0; float64 rounding can leave -1e-17 where the two are equal.
        self._kld.append(np.maximum((p_ref * (lp_ref - lp_got)).sum(axis=-1), 0.0))
        self._same.append(ref.argmax(axis=-1) == got.argmax(axis=-1))
        rows = np.flatnonzero(next_tokens >= 0)
        self._lp_ref.append(lp_ref[rows, next_tokens[rows]])
        self._lp_got.append(lp_got[rows, next_tokens[rows]])
        self.max_abs_logit = max(self.max_abs_logit, float(np.abs(ref).max()))
        self.max_abs_dlogit = max(self.max_abs_dlogit,
                                  float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()))

    def stats(self) -> dict[str, Any]:
        kld = np.concatenate(self._kld)
        lp_ref, lp_got = np.concatenate(self._lp_ref), np.concatenate(self._lp_got)
        hist, _ = np.histogram(np.clip(kld, 0.0, KLD_HIST_EDGES[-1]), bins=KLD_HIST_EDGES)
        out: dict[str, Any] = {
            "positions": int(kld.size),
            "max_abs_logit": self.max_abs_logit,
            "max_abs_dlogit": self.max_abs_dlogit,
            "kld_mean": float(kld.mean()),
            "kld_percentiles": {f"p{p:g}": float(np.percentile(kld, p)) for p in PERCENTILES},
            "kld_max": float(kld.max()),
            "kld_hist": hist.tolist(),
            "same_top": float(np.concatenate(self._same).mean()),
            "predicted": int(lp_ref.size),
        }
        if lp_ref.size:
            ppl_src, ppl_got = math.exp(-float(lp_ref.mean())), math.exp(-float(lp_got.mean()))
            dp = np.exp(lp_got) - np.exp(lp_ref)
            out.update(ppl_source=ppl_src, ppl_file=ppl_got, delta_ppl=ppl_got - ppl_src, ppl_ratio=ppl_got / ppl_src,
                       rms_dp=math.sqrt(float(np.mean(dp * dp))))
        else:  # sequences of one token: nothing is predicted
            out.update(ppl_source=None, ppl_file=None, delta_ppl=None, ppl_ratio=None, rms_dp=None)
        return out


def compare_logits(ref: np.ndarray, got: np.ndarray, next_tokens: np.ndarray | None = None) -> dict[str, Any]:
    """The statistics of `got` against `ref` (float32 [..., vocab]) in one call; `next_tokens`
    (one per row, -1 for none) enables perplexity and RMS Δp."""
    ref = ref.reshape(-1, ref.shape[-1])
    got = got.reshape(-1, got.shape[-1])
    nxt = np.full(ref.shape[0], -1, dtype=np.int64) if next_tokens is None else np.asarray(next_tokens).reshape(-1)
    cmp = LogitComparison()
    step = block_rows(ref.shape[1])
    for start in range(0, ref.shape[0], step):
        cmp.add(ref[start : start + step], got[start : start + step], nxt[start : start + step])
    return cmp.stats()

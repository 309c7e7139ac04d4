"""Functional verification: does the exported model compute what the source computes?

The numpy reference forward (forward.py) runs over a fixed, seeded evaluation set of token
sequences twice: on the source checkpoint's float32 tensors and on the weights read back from
the exported file. The two sets of logits are compared with the statistics llama.cpp's
`llama-perplexity --kl-divergence` reports:

- max |Δlogit| over every position and vocabulary entry;
- KL(P_source || P_file) per position: mean, percentiles 50/90/99/99.9, max;
- the same-top-token rate: how often both argmaxes agree;
- RMS Δp: root mean square of p_file(t) - p_source(t) where t is the *source's* top token.
  (llama.cpp uses the probability of the correct next token of its evaluation text; a random
  evaluation set has no correct next token, so the reference's top token stands in.)

Both forwards use the source's config, so rope_theta and norm_eps - which no .bin stores -
are the source's, and only what the file stores is being measured. Unquantized outputs (v0,
hf) must agree to float32 tolerance (same code, same weights: in practice bit for bit);
quantized ones pass or fail on `Thresholds`.

The evaluation set is uniform random token ids (seeded): it needs no data set and no
tokenizer, but it is not text, so the numbers describe the model off-distribution and are
not comparable one to one with llama.cpp's (measured on wikitext).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import Llama2binError
from .formats import DIRECTORY, output_format
from .forward import ARITHMETICS, F32, BinWeights, SourceWeights, logits
from .model import ModelConfig
from .reader import BinFile
from .sources.base import Source

# KL divergences are summarised in these log-spaced bins (the first holds exact zeros and
# anything below 1e-12); the reports plot them.
KLD_HIST_EDGES = [0.0] + np.logspace(-12, 2, 29).tolist()
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class EvalSet:
    """`seqs` sequences of `length` token ids drawn uniformly from the vocabulary with `seed`."""

    seqs: int = 8
    length: int = 16
    seed: int = 0

    def tokens(self, cfg: ModelConfig) -> np.ndarray:
        if self.seqs <= 0 or self.length <= 0:
            raise Llama2binError(f"evaluation set needs >= 1 sequence of >= 1 token, got {self.seqs} x {self.length}")
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, cfg.vocab_size, size=(self.seqs, self.effective_length(cfg)), dtype=np.int64)

    def effective_length(self, cfg: ModelConfig) -> int:
        return min(self.length, cfg.max_seq_len)


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits of quantized outputs, chosen from measurements (README, "Functional
    verification"; 8 x 16 random tokens). Q8_0 of the demo and test models gives mean KLD from
    1e-6 (near-flat outputs) to 1.1e-3 (a test model with logits up to 28, runq.c arithmetic),
    99th percentile <= 1.1e-2 and >= 95 % same top token; llama.cpp publishes mean KLD 3.7e-4 and
    98.8 % same top token for Q8_0 of Llama 2 7B. Swapping two layers (or q and k) gives mean KLD
    9e-3 to 1.9 on the demo and test models whose outputs are not near-flat. The limits leave a
    4-5x margin over the worst Q8_0 measured."""

    kld_mean_max: float = 5e-3
    kld_p99_max: float = 5e-2
    same_top_min: float = 0.9
    # Unquantized outputs: |Δlogit| <= fp32_rtol * max(1, max |logit|).
    fp32_rtol: float = 1e-5


@dataclass
class FunctionalResult:
    arithmetic: str
    eval_seqs: int
    eval_len: int
    eval_seed: int
    positions: int
    quantized: bool
    max_abs_logit: float  # of the reference, for scale
    max_abs_dlogit: float
    kld_mean: float
    kld_percentiles: dict[str, float]
    kld_max: float
    same_top: float
    rms_dp: float
    kld_hist: list[int]
    thresholds: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["kld_hist_edges"] = KLD_HIST_EDGES
        return d


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """llama.cpp-style statistics of `got` against `ref` (float32 [..., vocab]), in float64."""
    ref = ref.reshape(-1, ref.shape[-1])
    got = got.reshape(-1, got.shape[-1])
    lp_ref, lp_got = _log_softmax(ref), _log_softmax(got)
    p_ref = np.exp(lp_ref)
    # KL(P||Q) >= 0; float64 rounding can leave -1e-17 where the two are equal.
    kld = np.maximum((p_ref * (lp_ref - lp_got)).sum(axis=-1), 0.0)
    top = ref.argmax(axis=-1)
    rows = np.arange(ref.shape[0])
    dp = np.exp(lp_got[rows, top]) - p_ref[rows, top]
    hist, _ = np.histogram(np.clip(kld, 0.0, KLD_HIST_EDGES[-1]), bins=KLD_HIST_EDGES)
    return {
        "positions": int(ref.shape[0]),
        "max_abs_logit": float(np.abs(ref).max()),
        "max_abs_dlogit": float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()),
        "kld_mean": float(kld.mean()),
        "kld_percentiles": {f"p{p:g}": float(np.percentile(kld, p)) for p in PERCENTILES},
        "kld_max": float(kld.max()),
        "same_top": float((got.argmax(axis=-1) == top).mean()),
        "rms_dp": float(math.sqrt(float(np.mean(dp * dp)))),
        "kld_hist": hist.tolist(),
    }


def judge(stats: dict[str, Any], quantized: bool, limits: Thresholds) -> list[str]:
    """Failures of `stats` against the limits (empty: passed)."""
    if not quantized:
        tol = limits.fp32_rtol * max(1.0, stats["max_abs_logit"])
        if stats["max_abs_dlogit"] > tol:
            return [f"functional: max |Δlogit| {stats['max_abs_dlogit']:.3g} exceeds float32 tolerance {tol:.3g}"]
        return []
    failures = []
    if stats["kld_mean"] > limits.kld_mean_max:
        failures.append(f"functional: mean KL divergence {stats['kld_mean']:.3g} exceeds {limits.kld_mean_max:g}")
    if stats["kld_percentiles"]["p99"] > limits.kld_p99_max:
        failures.append(f"functional: 99th percentile KL divergence {stats['kld_percentiles']['p99']:.3g} "
                        f"exceeds {limits.kld_p99_max:g}")
    if stats["same_top"] < limits.same_top_min:
        failures.append(f"functional: same top token {stats['same_top']:.1%} is below {limits.same_top_min:.1%}")
    return failures


class ReferenceLogits:
    """The source's logits on the evaluation set, computed once and reused for every output of
    the same source (a verify call with several files)."""

    def __init__(self, source: Source, eval_set: EvalSet):
        self.source = source
        self.eval_set = eval_set
        self.config = source.config
        self.tokens = eval_set.tokens(self.config)
        self._logits: np.ndarray | None = None

    @property
    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = logits(SourceWeights(self.source), self.config, self.tokens)
        return self._logits


def _output_logits(path: str, reference: ReferenceLogits, arithmetic: str) -> tuple[np.ndarray, bool]:
    """Logits of an exported .bin (or --version hf directory) on the evaluation set, and
    whether its weights are quantized."""
    cfg = reference.config
    spec = output_format(path)
    if spec.kind == DIRECTORY:  # hf: read back as a source (canonical tensors, q/k un-permuted)
        with spec.open(path) as exported:
            if exported.config.shapes() != cfg.shapes():
                raise Llama2binError(f"{path}: its tensors do not have the source's shapes")
            return logits(SourceWeights(exported, cfg), cfg, reference.tokens), False
    with BinFile(path) as bf:
        if bf.config.shapes() != cfg.shapes():
            raise Llama2binError(f"{path}: its header does not describe the source's tensors")
        quantized = bf.group_size is not None
        arith = arithmetic if quantized else F32  # q8 arithmetic is meaningless for float32 files
        return logits(BinWeights(bf), cfg, reference.tokens, arithmetic=arith), quantized


def functional_verify(path: str, reference: ReferenceLogits, *, arithmetic: str = F32,
                      limits: Thresholds | None = None) -> FunctionalResult:
    """Forward the evaluation set through `path` and through the source; compare and judge."""
    if arithmetic not in ARITHMETICS:
        raise Llama2binError(f"unknown arithmetic {arithmetic!r} (known: {', '.join(ARITHMETICS)})")
    limits = limits or Thresholds()
    got, quantized = _output_logits(path, reference, arithmetic)
    stats = compare_logits(reference.logits, got)
    ev = reference.eval_set
    return FunctionalResult(
        arithmetic=arithmetic if quantized else F32,
        eval_seqs=ev.seqs,
        eval_len=ev.effective_length(reference.config),
        eval_seed=ev.seed,
        quantized=quantized,
        thresholds=asdict(limits),
        failures=judge(stats, quantized, limits),
        **stats,
    )

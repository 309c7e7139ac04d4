"""Functional check: does the exported model compute what the source computes, and how well?

The numpy reference forward (forward.py) runs over the model's evaluation tokens
(eval_tokens.py: by default sequences the source model generated itself) twice: on the source
checkpoint's float32 tensors and on the weights read back from the exported file. The logits
are compared block by block (metrics.py) with the statistics llama.cpp's
`llama-perplexity --kl-divergence` reports: perplexity of both and ΔPPL, KL divergence, same
top token, RMS Δp of the next token.

Two verdicts, never confused:
- correctness (`FunctionalResult.failures`): an unquantized output (v0, hf) must give the
  source's logits to float32 rounding (same code, same weights: in practice bit for bit). A
  quantized file's correctness is the tensor check's (every value within scale/2 of a fresh
  quantization) and the C check's; its logits are not a correctness matter.
- quality (`QualityLimits`): measured on quantized outputs; exceeding a limit is a warning,
  and a failure only where the user made the limits a gate.

Both forwards use the source's config, so rope_theta and norm_eps - which no .bin stores -
are the source's, and only what the file stores is being measured.

Reproducible: both forwards and every statistic are float64 computed by numerics.py, so a result
is the same bits on every machine, BLAS kernel, thread count and job layout (the pipeline's
verify, reverify, a cluster job). BLAS is pinned to one thread while the check runs (cost only).

Cost, per file: one forward pass of the file's weights over the evaluation positions (the
source's runs once per model), 5 float64 BLAS products per weight and position (numerics.matmul,
about 10 flops), then per position and vocabulary entry the classifier row (5 * 2 * dim flops)
and the comparison (two exps, log-softmax of both sides, the KL term: about 40 ns).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import typed_json
from ..errors import Llama2binError
from ..formats.output import Output
from ..model import ModelConfig
from ..sources.base import Source
from . import numerics
from .eval_tokens import EvalTokens
from .forward import ARITHMETICS, F32, classify, hidden_states
from .metrics import KLD_HIST_EDGES, LogitComparison, PositionStats, block_columns, position_stats
from .result_json import EvalSummaryJson, KldPercentilesJson
from .rope_source import RopeSource
from .weights import BinWeights, LazyWeights, SourceWeights

# Unquantized outputs: |Δlogit| <= FP32_RTOL * max(1, max |logit|).
FP32_RTOL = 1e-5
# Reference logits are kept between files up to this many bytes, recomputed per file beyond.
_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class QualityLimits:
    """Limits of a quantized output's quality: exceeded = a warning, or a failure under a gate.
    Defaults are chosen against a model trained for real in the test suite (README, "Quality
    limits"): its Q8_0 files at group sizes 16-64 stay 4-10x inside them, while a layout error
    (swapped layers, q and k) exceeds them by far - though correctness checks catch those first."""

    kld_mean_max: float = 0.05
    kld_p99_max: float = 0.5
    same_top_min: float = 0.85
    ppl_ratio_max: float = 1.05

    def exceeded(self, f: FunctionalResult) -> list[str]:
        """One phrase per limit `f` exceeds (empty: within every limit, or not quantized)."""
        if not f.quantized:
            return []
        out = []
        if f.kld_mean > self.kld_mean_max:
            out.append(f"mean KLD {f.kld_mean:.3g} > {self.kld_mean_max:g}")
        if f.kld_percentiles["p99"] > self.kld_p99_max:
            out.append(f"KLD p99 {f.kld_percentiles['p99']:.3g} > {self.kld_p99_max:g}")
        if f.same_top < self.same_top_min:
            out.append(f"same top {f.same_top:.1%} < {self.same_top_min:.1%}")
        if f.ppl_ratio is not None and f.ppl_ratio > self.ppl_ratio_max:
            out.append(f"PPL ratio {f.ppl_ratio:.4g} > {self.ppl_ratio_max:g}")
        return out

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FunctionalResult(typed_json.Checked):
    arithmetic: str
    quantized: bool
    eval: EvalSummaryJson  # EvalTokens.summary(): recipe, seqs, positions, sha256
    positions: int
    predicted: int  # positions with a next token: what perplexity and RMS Δp average over
    max_abs_logit: float  # of the reference, for scale
    max_abs_dlogit: float
    kld_mean: float
    kld_percentiles: KldPercentilesJson
    kld_max: float
    kld_hist: list[int]
    same_top: float
    ppl_source: float | None
    ppl_file: float | None
    delta_ppl: float | None
    ppl_ratio: float | None
    rms_dp: float | None
    fp32_rtol: float = FP32_RTOL
    failures: list[str] = field(default_factory=list)  # correctness only
    kld_hist_edges: list[float] = field(default_factory=lambda: list(KLD_HIST_EDGES))  # of kld_hist

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        edges = d.pop("kld_hist_edges")
        return {**d, "passed": self.passed, "kld_hist_edges": edges}

    def json_loaded(self, d: dict[str, Any], where: str, path: str) -> None:
        """The derived `passed` agrees with `failures`."""
        typed_json.derived(d, "passed", self.passed, where, path)


class ReferenceModel:
    """The source's side of every functional check of one model: its hidden states on the
    evaluation tokens (small: positions x dim), computed once and reused for every output."""

    def __init__(self, source: Source, tokens: EvalTokens):
        self.source = source
        self.config = source.config
        self.tokens = tokens.check(self.config.vocab_size, self.config.max_seq_len)
        self.weights = SourceWeights(source)
        self._hidden: list[numerics.Left] | None = None
        self._logits: dict[tuple[int, int], np.ndarray] = {}
        self._cache = 8 * tokens.positions * self.config.vocab_size <= _CACHE_BYTES

    def hidden(self, progress: Any = None) -> list[numerics.Left]:
        """Per batch of the evaluation tokens, its hidden states (cut for numerics.matmul)."""
        if self._hidden is None:
            step = progress.update if progress else None
            self._hidden = [numerics.Left(hidden_states(self.weights, self.config, b,
                                                        on_layer=step and (lambda: step(1))))
                            for b in self.tokens.batches()]
        return self._hidden

    def logits(self, batch: int, start: int, stop: int) -> np.ndarray:
        """Logits of every position of `batch` for vocabulary entries start .. stop."""
        key = (batch, start)
        if key in self._logits:
            return self._logits[key]
        out = classify(self.weights, self.config, self.hidden()[batch], vocab=(start, stop))
        if self._cache:
            self._logits[key] = out
        return out

    # A share of a batch's sequences (a worker process of functional_check): rows s*T + t of the
    # batch's positions, so sequences lo .. hi are the rows lo*T .. hi*T.

    def share_hidden(self, batch: int, tokens: np.ndarray, rows: slice) -> tuple[numerics.Left, np.ndarray | None]:
        """The hidden states of a share (its `tokens`, its `rows`): kept ones, or computed here and
        also returned as an array for the parent to `keep`."""
        if self._hidden is not None:
            return numerics.Left(self._hidden[batch].x[rows]), None
        made = hidden_states(self.weights, self.config, tokens)
        return numerics.Left(made), made

    def share_logits(self, batch: int, rows: slice, hidden: numerics.Left, start: int,
                     stop: int) -> tuple[np.ndarray, bool]:
        """A share's logits for entries start .. stop: kept ones, or computed here (True: for the
        parent to `keep`, as one process would have)."""
        kept = self._logits.get((batch, start))
        if kept is not None:
            return kept[rows], False
        return classify(self.weights, self.config, hidden, vocab=(start, stop)), self._cache

    def keep(self, hidden: dict[int, list[np.ndarray]], logits: dict[int, list[list[np.ndarray]]]) -> None:
        """Keep what the shares computed (per batch, in share order): hidden states of every
        batch, and per batch the logits blocks of each share in vocabulary order."""
        if hidden:
            self._hidden = [numerics.Left(np.concatenate(hidden[b])) for b in range(len(self.tokens.batches()))]
        for b, shares in logits.items():
            step = block_columns(self.tokens.batches()[b].size)
            for i, blocks in enumerate(zip(*shares, strict=True)):
                self._logits[(b, i * step)] = np.concatenate(blocks)


def _output_weights(output: Output, reference: ReferenceModel) -> tuple[LazyWeights, bool]:
    """(lazy weights, quantized) of an opened output whose tensors must have the source's shapes."""
    if output.config.shapes() != reference.config.shapes():
        raise Llama2binError(f"{output.path}: its tensors do not have the source's shapes")
    return BinWeights(output), output.lossy


# From this many weights up the functional check runs in several processes (parallel.default_workers:
# both cores): below it the forks, and every weight read and cut once more per process, cost about
# what they save, and a batch of small models keeps its cores busy with other jobs anyway.
PARALLEL_MIN_WEIGHTS = 50_000_000


def functional_workers(config: ModelConfig, threads: int | None = None) -> int:
    """Processes for the functional check of a model of `config` (`threads`: the caller's limit)."""
    from ..parallel import default_workers

    weights = sum(math.prod(shape) for shape in config.shapes().values())
    if weights < PARALLEL_MIN_WEIGHTS:
        return 1
    return threads if threads is not None else default_workers(4 * weights)


def _shares(n: int, workers: int) -> list[tuple[int, int]]:
    """n sequences in at most `workers` contiguous shares as equal as possible, in order."""
    k = max(1, min(workers, n))
    bounds = [n * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def functional_check(output: Output, reference: ReferenceModel, *, arithmetic: str = F32, fp32_rtol: float = FP32_RTOL,
                     quiet: bool = True, file_config: ModelConfig | None = None, rope: RopeSource | None = None,
                     label: str = "", source_weights: bool = False, workers: int = 1) -> FunctionalResult:
    """Forward the evaluation tokens through the opened `output` and through the source; compare.

    By default the file is run with the source's config (what it stores is measured, and a
    float32 file must give the source's logits). A target's view (targets.py: a program's
    hard-coded RoPE and epsilon in `file_config`, or RoPE from the file's tables in `rope`)
    measures what that program computes: quality only, never a correctness failure.

    `source_weights`: the caller has proven that every tensor the forward reads from the output is
    the source's, bit for bit (an unquantized output whose tensor check passed: checks/tensor.py
    compares float32 bit patterns, through the same TensorRefs the forward reads). The file's
    forward would then repeat the reference's, operation for operation on the same numbers with
    the same config and deterministic numerics, so the reference's hidden states and logits stand
    for it: the same result, bit for bit (tests/test_functional.py runs both), without the
    forward (a third of a model's functional check at the stories shapes).

    `workers` > 1: the sequences are split among that many forked processes (parallel.ForkPool),
    each running both forwards and the comparison for its share. A position's hidden states,
    logits and statistics depend on its own sequence only (numerics' exact products are row by
    row, attention is within a sequence, the vocabulary blocks are the whole batch's), so the
    result is the one process's, bit for bit (tests/test_functional_parallel.py)."""
    from ..parallel import ForkPool
    from ..progress import Progress

    if arithmetic not in ARITHMETICS:
        raise Llama2binError(f"unknown arithmetic {arithmetic!r} (known: {', '.join(ARITHMETICS)})")
    cfg = reference.config
    as_run = file_config is not None or rope is not None
    if source_weights and (as_run or output.lossy):
        raise Llama2binError(f"{output.path}: only an unquantized output in the source's view can share its forward")
    file_cfg = file_config or cfg
    batches = reference.tokens.batches()
    weights, quantized = _output_weights(output, reference)
    # q8 is runq.c's arithmetic: meaningless for float32 files, and not what llama.cpp computes for a
    # GGUF (float16-scaled activation blocks, F16 rows): those run in f32, as the result records
    arith = arithmetic if quantized and output.spec.family.c_consumer else F32
    # each process takes a contiguous share of every batch's sequences, in order
    parts = [(b, lo, hi) for b, tok in enumerate(batches) for lo, hi in _shares(len(tok), workers)]
    parallel = len(parts) > len(batches)
    what = f"functional check {output.display_name}{label}"
    if parallel:  # the workers' forwards are not seen layer by layer: a share is a step
        progress = Progress(len(parts), what, unit="share", quiet=quiet)
    else:
        layers = len(batches) * cfg.n_layers * ((reference._hidden is None) + (not source_weights))
        progress = Progress(layers, what, unit="layer", quiet=quiet)

    def compare(part: tuple[int, int, int]) -> tuple[PositionStats, np.ndarray | None, list[np.ndarray]]:
        """The statistics of one share of a batch; the source's hidden states and logits blocks
        when computed here (for the parent to keep: the model's next outputs use them)."""
        b, lo, hi = part
        tok = batches[b][lo:hi]
        rows = slice(lo * tok.shape[1], hi * tok.shape[1])
        source_logits: list[np.ndarray] = []
        on_layer = None if parallel else (lambda: progress.update(1))
        source_hidden = None
        if parallel:
            ref_hidden, source_hidden = reference.share_hidden(b, tok, rows)
        else:
            ref_hidden = reference.hidden()[b]
        got_hidden = ref_hidden if source_weights else numerics.Left(
            hidden_states(weights, file_cfg, tok, arithmetic=arith, on_layer=on_layer, rope=rope))
        # the next token of every position; -1 at the end of a sequence
        nxt = np.concatenate([tok[:, 1:], np.full((tok.shape[0], 1), -1, dtype=np.int64)], axis=1).reshape(-1)
        # every position of the share at once, the vocabulary in the whole batch's blocks: the
        # classifier is read (and cut for numerics.matmul) once per file, its logits never held whole
        step = block_columns(batches[b].size)

        def blocks() -> Iterator[tuple]:
            for start in range(0, cfg.vocab_size, step):
                stop = min(start + step, cfg.vocab_size)
                if parallel:
                    want, made = reference.share_logits(b, rows, ref_hidden, start, stop)
                    if made:
                        source_logits.append(want)
                else:
                    want = reference.logits(b, start, stop)
                got = want if source_weights else classify(weights, cfg, got_hidden, arithmetic=arith, vocab=(start, stop))
                yield start, want, got

        return position_stats(nxt, blocks()), source_hidden, source_logits

    cmp = LogitComparison()
    try:
        with numerics.blas_threads(1):
            if not parallel:
                reference.hidden(progress)  # the source's forward, once per model, kept for every output
            made: dict[int, list[np.ndarray]] = {}
            made_logits: dict[int, list[list[np.ndarray]]] = {}
            with ForkPool(parts, compare, workers if parallel else 1) as pool:
                for (b, _, _), (stats, hidden, logits) in zip(parts, pool.results(), strict=True):
                    cmp.add_stats(stats)
                    if hidden is not None:
                        made.setdefault(b, []).append(hidden)
                    if logits:
                        made_logits.setdefault(b, []).append(logits)
                    if parallel:
                        progress.update(1)
            reference.keep(made, made_logits)  # what the workers made of the source's side
    finally:
        progress.close()
    stats = cmp.stats()
    failures = []
    if not quantized and not as_run:
        tol = fp32_rtol * max(1.0, stats["max_abs_logit"])
        if not stats["max_abs_dlogit"] <= tol:  # also catches NaN
            failures.append(f"functional: max |Δlogit| {stats['max_abs_dlogit']:.3g} exceeds float32 tolerance {tol:.3g}")
    return FunctionalResult(arithmetic=arith, quantized=quantized, eval=reference.tokens.summary(),
                            fp32_rtol=fp32_rtol, failures=failures, **stats)

"""A reference LLaMA forward pass in numpy float64: the oracle for functional verification.

It computes what llama2.c's run.c computes (and Meta's model.py, and transformers'
LlamaForCausalLM on un-permuted weights): RMSNorm with eps, rotary embeddings on *adjacent
pairs* (dims 2j, 2j+1) of each head with the config's frequencies (its rope_theta and rope
scaling, `ModelConfig.inv_freq`), grouped-query attention
(query head h reads kv head h // (n_heads / n_kv_heads)), SwiGLU feed-forward, and the shared
or separate classifier.

Memory: the pass runs layer by layer over every position of every sequence at once (O(T^2)
attention, one sequence at a time; generation passes a `KVCache` and computes only the new
position) and asks its weights Mapping for each tensor only when
it is needed, dropping it right after. Given a lazy mapping (`BinWeights` over an open .bin,
`SourceWeights` over a checkpoint) nothing is cached, matrices are multiplied in row blocks
and embeddings are gathered row by row, so peak memory is one block of one tensor plus the
activations - never the model. `logits` holds positions x vocabulary; the functional check
instead takes `hidden_states` and runs `classify` on blocks of the vocabulary. A plain dict of
arrays works too (tests, tiny models).

Arithmetic: "f32" multiplies the activations with the file's float32 (for Q8_0: dequantized)
weights, as run.c does. "q8" (Q8_0 files only) computes the way llama2.c's runq.c does: before
every matmul the activations are quantized to Q8_0 with the file's group size (round half away
from zero), products are summed exactly per group and scaled by both group scales, group after
group, in float32.

Precision and reproducibility: activations are float64, and every matrix product, exp, sin and
cos comes from numerics.py: the same bits on every machine, BLAS kernel and thread count, and a
logit depends on its own classifier row and position only, never on what is computed with it.
Sampling the evaluation tokens (`exact=False`) uses plain float64 BLAS products, at less than
half the cost (2.4 vs 5.6 CPU seconds for a 15M model): a token is a decision, which the 1e-16
by which BLAS kernels differ changes only when a running sum of probabilities sits that close
to its threshold (for a vocabulary of 2^20, about once in 1e9 tokens).
A `q8_hook` (checks/ccheck.py's teacher forcing) sees every activation quantization - the
tensor it feeds, the activations, Python's (q, scales) - and returns the (q, scales) to use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from ..errors import Llama2binError
from ..formats.reader import BinFile
from ..model import ModelConfig, layer_name
from . import numerics
from .rope_source import RopeSource, table_rope
from .weights import BinWeights, LazyWeights, row_blocks

F32 = "f32"
Q8 = "q8"
ARITHMETICS = (F32, Q8)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis, in float64 (numpy's pairwise sum
    along the contiguous last axis: a fixed order; sqrt is correctly rounded everywhere)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + float(eps))) * np.asarray(weight, dtype=np.float64)


def rope_angles(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float64 [len(positions), len(inv_freq)]: pair j of position t turns by
    t * inv_freq[j] (`ModelConfig.inv_freq()`: the model's float32 frequencies, with its base and
    rope scaling, as transformers has them; bit-exact on every machine). Angles are formed in
    float64 and sin/cos come from numerics: the same bits on every machine."""
    sin, cos = numerics.sin_cos(np.outer(positions.astype(np.float64), np.asarray(inv_freq, dtype=np.float64)))
    return cos, sin


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs of x [..., T, heads, head_size] by per-position angles (interleaved layout)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def _silu(x: np.ndarray) -> np.ndarray:
    # exp(-x) = inf for very negative x gives the right limit, -0
    return x / (1.0 + numerics.exp(-x))


def quantize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """runq.c's `quantize` of activation rows x (N, n): per group scale = max|x| / 127 (float32),
    q = round(x / scale) half away from zero (C's round). An all-zero group gets scale 0 and q 0
    (runq.c would divide 0 by 0). Returns float32-held integer q (N, n) and scales (N, n / gs)."""
    n_rows, n = x.shape
    groups = x.reshape(n_rows, n // group_size, group_size)
    scale = np.abs(groups).max(axis=-1) / np.float32(127.0)
    divisor = np.where(scale == 0, np.float32(1), scale)
    ratio = (groups / divisor[..., None]).astype(np.float64)  # float32 division, as in C; exact widening
    q = np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)
    return q.astype(np.float32).reshape(n_rows, n), scale.astype(np.float32)


class Q8Hook(Protocol):
    def __call__(self, name: str, x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At the quantization of activations x (N, n) for a matmul with tensor `name`, given
        Python's own (q, scales): the (q, scales) the matmul uses instead."""
        ...


class _Linear:
    """y = x @ W.T (float64) for activations x (N, n), W read from `weights` in the chosen
    arithmetic; `exact`: numerics.matmul (the same bits everywhere), else plain float64 BLAS."""

    def __init__(self, weights: Mapping, arithmetic: str, exact: bool = True, q8_hook: Q8Hook | None = None):
        if arithmetic not in ARITHMETICS:
            raise Llama2binError(f"forward: arithmetic must be one of {', '.join(ARITHMETICS)}, not {arithmetic!r}")
        self.weights = weights
        self.arithmetic = arithmetic
        self.lazy = isinstance(weights, LazyWeights)
        self.exact = exact
        self.q8_hook = q8_hook
        if arithmetic == Q8:
            gs = weights.group_size if isinstance(weights, LazyWeights) else None
            if not gs:
                raise Llama2binError("forward: q8 arithmetic needs the weights of a Q8_0 file (v1 or v2)")
            self.group_size = gs

    def __call__(self, x: np.ndarray | numerics.Left, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """x @ W[rows].T: all of W's rows, or the range `rows`; x may come already cut into
        slices (numerics.Left) when it is multiplied with many blocks of rows."""
        left = x if isinstance(x, numerics.Left) else None
        x = left.x if left is not None else x
        if self.arithmetic == Q8:  # runq.c holds its activations in float32
            return self._q8(x.astype(np.float32), name, rows).astype(np.float64)
        if self.exact and left is None:
            left = numerics.Left(x)

        def times(w: np.ndarray) -> np.ndarray:
            return left.times(w) if left is not None else x @ np.asarray(w, dtype=np.float64).T

        total = self.weights.shape(name)[0] if self.lazy else len(self.weights[name])
        first, last = rows or (0, total)
        if not self.lazy:
            return times(np.asarray(self.weights[name], dtype=np.float32)[first:last])
        w: LazyWeights = self.weights  # type: ignore[assignment]
        if left is None:  # plain products (sampling): the weights' own, block by block
            return w.plain_product(x, name, first, last)
        cols = w.shape(name)[1]
        out = np.empty((x.shape[0], last - first), dtype=np.float64)
        for start, stop in row_blocks(last - first, cols):
            out[:, start:stop] = times(w.read_rows(name, first + start, first + stop))
        return out

    def _q8(self, x: np.ndarray, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        w = self.weights
        gs = self.group_size
        total, cols = w.shape(name)
        first, last = rows or (0, total)
        if cols % gs:
            raise Llama2binError(
                f"forward: tensor {name} has rows of {cols}, not a multiple of group size {gs}; "
                "runq.c's grouped matmul cannot run it"
            )
        xq, xs = quantize_activations(x, gs)
        if self.q8_hook is not None:
            xq, xs = self.q8_hook(name, x, xq, xs)
        n, groups = x.shape[0], cols // gs
        # Integer dot products of a group are exact in float32 while |sum| <= 128 * 128 * gs <= 2**24
        # (gs up to 1024, whatever int8 values a file or a hook holds), in float64 beyond (< 2**53),
        # in any order: as runq.c's int32 `ival`.
        exact = np.float32 if 128 * 128 * gs <= 1 << 24 else np.float64
        xq_g = xq.astype(exact).reshape(n, groups, gs).transpose(1, 0, 2)  # (groups, n, gs)
        xs_g = np.ascontiguousarray(xs.T)[:, :, None]  # (groups, n, 1)
        out = np.empty((n, last - first), dtype=np.float32)
        # Every group of a step's rows at once (one batched product, not one per group): at least
        # the rows of a row block, more while the step's (groups, n, rows) terms stay in L2
        # (measured at 1.1B, 16 positions: 2^16 terms 6.2 s, 2^18 6.4 s, 2^21 7.9 s).
        step = max(1, (1 << 16) // max(1, groups * n), (1 << 18) // cols)
        for start in range(first, last, step):
            stop = min(last, start + step)
            q, s = w.q8_rows(name, start, stop)
            qf = q.astype(exact).reshape(stop - start, groups, gs).transpose(1, 2, 0)  # (groups, gs, rows)
            # each group's integer sum as float32 (runq.c's (float) ival), scaled by both group
            # scales as runq.c does; the groups' terms are then added in order, as runq.c adds them
            ival = np.matmul(xq_g, qf).astype(np.float32, copy=False)
            terms = (ival * np.ascontiguousarray(s.T)[:, None, :]) * xs_g
            acc = np.zeros((n, stop - start), dtype=np.float32)
            for g in range(groups):
                acc += terms[g]
            out[:, start - first : stop - first] = acc
        return out


def _embed(weights: Mapping, tok: np.ndarray) -> np.ndarray:
    if isinstance(weights, LazyWeights):
        return weights.gather("tok_embeddings", tok).astype(np.float64)
    return np.asarray(weights["tok_embeddings"], dtype=np.float32)[tok].astype(np.float64)


def _check_tokens(tokens: Sequence[int] | np.ndarray, cfg: ModelConfig) -> np.ndarray:
    tok = np.asarray(tokens, dtype=np.int64)
    if tok.ndim == 1:
        tok = tok[None, :]
    if tok.ndim != 2 or tok.size == 0:
        raise Llama2binError("forward: tokens must be a non-empty sequence of ids (or equal-length sequences)")
    if tok.min() < 0 or tok.max() >= cfg.vocab_size:
        bad = int(tok.max()) if tok.max() >= cfg.vocab_size else int(tok.min())
        raise Llama2binError(f"forward: token id {bad} outside the vocabulary of {cfg.vocab_size}")
    if tok.shape[1] > cfg.max_seq_len:
        raise Llama2binError(f"forward: {tok.shape[1]} tokens exceed max_seq_len {cfg.max_seq_len}")
    return tok


class KVCache:
    """Keys and values of the positions already computed, per layer: with it, `hidden_states`
    computes only new positions (token-by-token generation costs O(T), not O(T^2) passes)."""

    def __init__(self) -> None:
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.length = 0

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = np.concatenate([self.keys[layer], k], axis=1)
            self.values[layer] = np.concatenate([self.values[layer], v], axis=1)
        return self.keys[layer], self.values[layer]


def hidden_states(weights: Mapping[str, np.ndarray], cfg: ModelConfig, tokens: Sequence[int] | np.ndarray,
                  *, arithmetic: str = F32, on_layer: Callable[[], None] | None = None,
                  cache: KVCache | None = None, exact: bool = True,
                  q8_hook: Q8Hook | None = None, rope: RopeSource | None = None) -> np.ndarray:
    """The final normalized hidden states float64 [S*T, dim] for an [S, T] array of sequences (or
    one sequence, S = 1), row s*T + t for position t of sequence s: what the classifier turns
    into logits. Small (positions x dim) whatever the vocabulary; `classify` makes logits of any
    block of rows. `on_layer` is called after every layer (progress). With a `cache`, `tokens`
    continue the sequences the cache holds (positions cache.length ...), and are added to it.
    `exact=False`: plain float64 BLAS products (sampling; see the module's docstring).
    `q8_hook` (q8 only) may replace every activation quantization (see Q8Hook). `rope` replaces
    the config's frequencies with (cos, sin) per position (e.g. a v0 file's stored tables, as the
    ports that read them compute)."""
    tok = _check_tokens(tokens, cfg)
    n_seqs, n_tokens = tok.shape
    start = cache.length if cache is not None else 0
    if start + n_tokens > cfg.max_seq_len:
        raise Llama2binError(f"forward: {start + n_tokens} tokens exceed max_seq_len {cfg.max_seq_len}")
    linear = _Linear(weights, arithmetic, exact, q8_hook)
    product = numerics.matmul if exact else (lambda a, b: np.matmul(a, b.swapaxes(-1, -2)))
    hd = cfg.head_size
    n_rep = cfg.n_heads // cfg.n_kv_heads
    positions = np.arange(start, start + n_tokens)
    cos, sin = rope_angles(cfg.inv_freq(), positions) if rope is None else rope(positions)
    causal = np.arange(start + n_tokens)[None, :] > positions[:, None]  # [new, all]: no looking ahead
    scale = 1.0 / math.sqrt(hd)
    n_rows = n_seqs * n_tokens

    def norm(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float32).reshape(-1).astype(np.float64)

    x = _embed(weights, tok.reshape(-1))  # [S*T, dim]: every position of every sequence
    for i in range(cfg.n_layers):
        def w(kind: str, i: int = i) -> str:
            return layer_name(i, kind)

        h = rms_norm(x, norm(w("attention_norm")), cfg.norm_eps)
        q = linear(h, w("attention.wq")).reshape(n_seqs, n_tokens, cfg.n_heads, hd)
        k = linear(h, w("attention.wk")).reshape(n_seqs, n_tokens, cfg.n_kv_heads, hd)
        v = linear(h, w("attention.wv")).reshape(n_seqs, n_tokens, cfg.n_kv_heads, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(i, k, v)
        attn = np.empty((n_seqs, n_tokens, cfg.n_heads, hd), dtype=np.float64)
        # One sequence at a time: the score matrix (heads x T x T) of one sequence, not of all.
        for s in range(n_seqs):
            # GQA: kv head g serves query heads g*n_rep .. g*n_rep + n_rep - 1 (as run.c's h / kv_mul).
            ks, vs = np.repeat(k[s], n_rep, axis=1), np.repeat(v[s], n_rep, axis=1)  # [all, heads, hd]
            scores = product(q[s].transpose(1, 0, 2), ks.transpose(1, 0, 2)) * scale  # [heads, T, all]
            scores[:, causal] = -np.inf
            mixed = product(numerics.softmax(scores), np.ascontiguousarray(vs.transpose(1, 2, 0)))  # [heads, T, hd]
            attn[s] = mixed.transpose(1, 0, 2)
        del q, k, v
        x = x + linear(attn.reshape(n_rows, cfg.n_heads * hd), w("attention.wo"))
        h = rms_norm(x, norm(w("ffn_norm")), cfg.norm_eps)
        gate = _silu(linear(h, w("feed_forward.w1"))) * linear(h, w("feed_forward.w3"))
        x = x + linear(gate, w("feed_forward.w2"))
        del h, gate
        if on_layer:
            on_layer()
    if cache is not None:
        cache.length += n_tokens
    return rms_norm(x, norm("norm"), cfg.norm_eps)


def classify(weights: Mapping[str, np.ndarray], cfg: ModelConfig, hidden: np.ndarray | numerics.Left, *,
             arithmetic: str = F32, exact: bool = True, vocab: tuple[int, int] | None = None,
             q8_hook: Q8Hook | None = None) -> np.ndarray:
    """Logits float64 [rows, vocab] of hidden-state rows (from `hidden_states`; or these cut
    once, numerics.Left, for many calls), for the whole vocabulary or the range `vocab`."""
    classifier = "tok_embeddings" if cfg.shared_classifier else "output"
    return _Linear(weights, arithmetic, exact, q8_hook)(hidden, classifier, vocab)


def logits(weights: Mapping[str, np.ndarray], cfg: ModelConfig, tokens: Sequence[int] | np.ndarray,
           *, arithmetic: str = F32, q8_hook: Q8Hook | None = None, rope: RopeSource | None = None) -> np.ndarray:
    """Logits float64 for `tokens` at positions 0..T-1 (causal): [T, vocab] for one sequence,
    [S, T, vocab] for an [S, T] array of sequences (computed together, layer by layer).
    Holds positions x vocab floats: the functional check uses hidden_states + classify in blocks."""
    tok = _check_tokens(tokens, cfg)
    x = hidden_states(weights, cfg, tok, arithmetic=arithmetic, q8_hook=q8_hook, rope=rope)
    out = classify(weights, cfg, x, arithmetic=arithmetic, q8_hook=q8_hook).reshape(*tok.shape, cfg.vocab_size)
    return out[0] if np.asarray(tokens).ndim == 1 else out


def bin_logits(path: str, tokens: Sequence[int] | np.ndarray, *, arithmetic: str = F32,
               config: ModelConfig | None = None, q8_hook: Q8Hook | None = None,
               rope_from_tables: bool = False) -> np.ndarray:
    """Logits of the model stored in .bin `path` (any version) for `tokens`, reading the weights
    lazily. `config` overrides what the file cannot store (rope_theta, norm_eps); its shapes must
    be the file's. `rope_from_tables`: RoPE from the file's own tables (v0), as the ports that
    read them compute it."""
    with BinFile(path) as bf:
        cfg = bf.config if config is None else config
        if cfg.shapes() != bf.config.shapes():
            raise Llama2binError(f"{path}: the given config does not describe this file's tensors")
        rope = None
        if rope_from_tables:
            stored = bf.rope_tables()
            if stored is None:
                raise Llama2binError(f"{path}: RoPE from the tables needs a v0 file with rope tables")
            rope = table_rope(*stored)
        with numerics.blas_threads(1):
            return logits(BinWeights(bf), cfg, tokens, arithmetic=arithmetic, q8_hook=q8_hook, rope=rope)

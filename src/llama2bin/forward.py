"""A reference LLaMA forward pass in numpy float32: the oracle for functional verification.

It computes what llama2.c's run.c computes (and Meta's model.py, and transformers'
LlamaForCausalLM on un-permuted weights): RMSNorm with eps, rotary embeddings on *adjacent
pairs* (dims 2j, 2j+1) of each head with base `cfg.rope_theta`, grouped-query attention
(query head h reads kv head h // (n_heads / n_kv_heads)), SwiGLU feed-forward, and the shared
or separate classifier.

Memory: unlike the rest of llama2bin this holds the whole model as float32 (it is a test and
verification oracle for tiny models, not a runtime), and it runs the whole token sequence at
once without a KV cache, so its cost is O(T^2) attention plus T x weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import Llama2binError
from .model import ModelConfig, layer_name
from .reader import BinFile


def weights_from_bin(bf: BinFile) -> dict[str, np.ndarray]:
    """Every weight of an opened .bin as float32 in its canonical shape (Q8_0 dequantized);
    `output` is the embedding matrix when the classifier is shared."""
    # Copies, not memmap views: the weights outlive the open file.
    weights = {name: np.array(bf.tensors[name].dequantize(), dtype=np.float32, copy=True) for name in bf.config.shapes()}
    if bf.config.shared_classifier:
        weights["output"] = weights["tok_embeddings"]
    return weights


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis, in float32."""
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(ms + np.float32(eps))) * weight


def rope_angles(head_size: int, positions: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float32 [len(positions), head_size // 2]: pair j of position t turns by
    t * theta^(-2j / head_size). Angles are formed in float64 so the tables are correctly rounded."""
    freqs = 1.0 / (float(theta) ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size))
    angles = np.outer(positions.astype(np.float64), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs of x [T, heads, head_size] by per-position angles (interleaved layout)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives the right limit, -0
        return x / (np.float32(1.0) + np.exp(-x))


def logits(weights: Mapping[str, np.ndarray], cfg: ModelConfig, tokens: Sequence[int]) -> np.ndarray:
    """Logits float32 [len(tokens), vocab_size] for `tokens` at positions 0..T-1 (causal)."""
    tok = np.asarray(tokens, dtype=np.int64)
    if tok.ndim != 1 or tok.size == 0:
        raise Llama2binError("forward: tokens must be a non-empty sequence of ids")
    if tok.min() < 0 or tok.max() >= cfg.vocab_size:
        raise Llama2binError(f"forward: token id {int(tok.max())} outside the vocabulary of {cfg.vocab_size}")
    if tok.size > cfg.max_seq_len:
        raise Llama2binError(f"forward: {tok.size} tokens exceed max_seq_len {cfg.max_seq_len}")
    n_tokens, hd = tok.size, cfg.head_size
    n_rep = cfg.n_heads // cfg.n_kv_heads
    cos, sin = rope_angles(hd, np.arange(n_tokens), cfg.rope_theta)
    causal = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    scale = np.float32(1.0 / np.sqrt(hd))

    x = np.asarray(weights["tok_embeddings"], dtype=np.float32)[tok]
    for i in range(cfg.n_layers):
        w = {kind: np.asarray(weights[layer_name(i, kind)], dtype=np.float32) for kind in (
            "attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
            "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
        h = rms_norm(x, w["attention_norm"], cfg.norm_eps)
        q = (h @ w["attention.wq"].T).reshape(n_tokens, cfg.n_heads, hd)
        k = (h @ w["attention.wk"].T).reshape(n_tokens, cfg.n_kv_heads, hd)
        v = (h @ w["attention.wv"].T).reshape(n_tokens, cfg.n_kv_heads, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: kv head g serves query heads g*n_rep .. g*n_rep + n_rep - 1 (as run.c's h / kv_mul).
        k, v = np.repeat(k, n_rep, axis=1), np.repeat(v, n_rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * scale
        scores[:, causal] = -np.inf
        attn = np.einsum("hts,shd->thd", _softmax(scores), v).reshape(n_tokens, cfg.n_heads * hd)
        x = x + attn @ w["attention.wo"].T
        h = rms_norm(x, w["ffn_norm"], cfg.norm_eps)
        x = x + (_silu(h @ w["feed_forward.w1"].T) * (h @ w["feed_forward.w3"].T)) @ w["feed_forward.w2"].T
    x = rms_norm(x, np.asarray(weights["norm"], dtype=np.float32), cfg.norm_eps)
    classifier = weights["tok_embeddings"] if cfg.shared_classifier else weights["output"]
    return (x @ np.asarray(classifier, dtype=np.float32).T).astype(np.float32)


def bin_logits(path: str, tokens: Sequence[int]) -> np.ndarray:
    """Logits of the model stored in .bin `path` (any version) for `tokens`."""
    with BinFile(path) as bf:
        weights = weights_from_bin(bf)
        cfg = bf.config
    return logits(weights, cfg, tokens)

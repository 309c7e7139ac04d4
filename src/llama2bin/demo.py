"""Small deterministic llama2.c-format checkpoints, so a fresh clone does real work offline.

The presets cover what a conversion must get right: multi-head and grouped-query attention,
a tied and an untied classifier, and a dim (48) that makes the Q8_0 group size back off
64 -> 16. Values are seeded normals with a few outliers and non-unit norms, so quantization
error is realistic rather than zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .atomic import atomic_outputs
from .errors import Llama2binError


@dataclass(frozen=True)
class DemoPreset:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None
    vocab_size: int
    multiple_of: int
    max_seq_len: int
    untied: bool
    seed: int


PRESETS: dict[str, DemoPreset] = {
    "mha": DemoPreset(dim=64, n_layers=2, n_heads=4, n_kv_heads=None, vocab_size=128, multiple_of=32,
                      max_seq_len=32, untied=False, seed=1),
    "gqa_backoff": DemoPreset(dim=48, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=96, multiple_of=16,
                              max_seq_len=24, untied=False, seed=2),
    "untied": DemoPreset(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=160, multiple_of=32,
                         max_seq_len=32, untied=True, seed=3),
}


def hidden_dim_for(dim: int, multiple_of: int) -> int:
    """llama2.c model.py's FeedForward sizing."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def state_dict_arrays(p: DemoPreset) -> dict[str, np.ndarray]:
    """The preset's weights as float32 arrays under llama2.c state_dict names."""
    rng = np.random.default_rng(p.seed)
    hd = p.dim // p.n_heads
    kv_dim = (p.n_kv_heads or p.n_heads) * hd
    hidden = hidden_dim_for(p.dim, p.multiple_of)

    def mat(rows: int, cols: int) -> np.ndarray:
        w = rng.normal(0.0, 0.02, size=(rows, cols)).astype(np.float32)
        outliers = rng.integers(0, w.size, size=max(1, w.size // 500))
        w.reshape(-1)[outliers] *= 20  # real checkpoints have outliers; they drive Q8_0 error
        return w

    def norm() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, size=p.dim)).astype(np.float32)

    sd = {"tok_embeddings.weight": mat(p.vocab_size, p.dim)}
    for i in range(p.n_layers):
        sd[f"layers.{i}.attention.wq.weight"] = mat(p.dim, p.dim)
        sd[f"layers.{i}.attention.wk.weight"] = mat(kv_dim, p.dim)
        sd[f"layers.{i}.attention.wv.weight"] = mat(kv_dim, p.dim)
        sd[f"layers.{i}.attention.wo.weight"] = mat(p.dim, p.dim)
        sd[f"layers.{i}.feed_forward.w1.weight"] = mat(hidden, p.dim)
        sd[f"layers.{i}.feed_forward.w2.weight"] = mat(p.dim, hidden)
        sd[f"layers.{i}.feed_forward.w3.weight"] = mat(hidden, p.dim)
        sd[f"layers.{i}.attention_norm.weight"] = norm()
        sd[f"layers.{i}.ffn_norm.weight"] = norm()
    sd["norm.weight"] = norm()
    sd["output.weight"] = mat(p.vocab_size, p.dim) if p.untied else sd["tok_embeddings.weight"]
    return sd


def write_demo_checkpoint(preset: str, path: str) -> None:
    """Write the preset as a llama2.c training checkpoint (torch zip), atomically."""
    if preset not in PRESETS:
        raise Llama2binError(f"unknown demo preset {preset!r} (known: {', '.join(PRESETS)})")
    import torch  # writing a torch zip is torch's job; only this command needs it

    p = PRESETS[preset]
    arrays = state_dict_arrays(p)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if not p.untied:  # tied like llama2.c's Transformer: one storage under both names
        tensors["output.weight"] = tensors["tok_embeddings.weight"]
    model_args = {
        "dim": p.dim, "n_layers": p.n_layers, "n_heads": p.n_heads, "n_kv_heads": p.n_kv_heads,
        "vocab_size": p.vocab_size, "multiple_of": p.multiple_of, "max_seq_len": p.max_seq_len, "dropout": 0.0,
    }
    with atomic_outputs([path]) as outputs, os.fdopen(os.dup(outputs[path].fd), "wb") as f:
        torch.save({"model": tensors, "model_args": model_args, "iter_num": 0, "config": {"preset": preset}}, f)

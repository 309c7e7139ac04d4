"""hf: a Hugging Face Llama directory (llama2.c's export "version -1").

The directory holds `config.json` (a LlamaConfig) and `model.safetensors` (float32, written by
`formats.hf_export`). q_proj and k_proj get their rows permuted from the interleaved rotary
layout llama2.c/Meta use to the half-rotation layout Hugging Face uses - the inverse of
the un-permutation of docs/formats.md, with n_heads for q and n_kv_heads for k. A shared classifier is
`tie_word_embeddings` with no `lm_head` tensor. It is read back (`HfDirectory`) as any HF
checkpoint is: through `sources/hf.py` (one safetensors parser, one un-permutation), in
hf_directory.py.
docs/formats.md has the bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model import ModelConfig
from .spec import HF_DIRECTORY, FormatSpec

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OUTPUT_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# The Hugging Face tokenizer convention llama2.c's own hf export writes too.
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

SPEC = FormatSpec(
    name="hf",
    description="Hugging Face Llama directory (config.json, float32 model.safetensors)",
    family=HF_DIRECTORY,
    read_by="transformers (LlamaForCausalLM.from_pretrained) and tools that load Hugging Face Llama checkpoints",
    loses="nothing of the weights (float32); q_proj/k_proj rows are permuted to Hugging Face's rotary layout",
    file_label="hf",
    file_name="hf",
    report_title="Hugging Face directory",
)

# config.json fields that must equal what hf_config writes for the model (checked on read-back).
CHECKED_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
                       "rms_norm_eps", "head_dim", "model_type", "hidden_act")


def rotary_heads(cfg: ModelConfig, canonical: str) -> int | None:
    """Number of heads whose rows the HF layout permutes (q: n_heads, k: n_kv_heads), else None."""
    if canonical.endswith(".attention.wq"):
        return cfg.n_heads
    if canonical.endswith(".attention.wk"):
        return cfg.n_kv_heads
    return None


def to_hf_rows(rows: np.ndarray, head_size: int) -> np.ndarray:
    """Whole heads of canonical (interleaved-pair) rows -> HF (half-rotation) row order.

    Canonical row 2j+c of a head becomes HF row c*hd/2 + j: the inverse of docs/formats.md's
    `w.reshape(n, 2, hd // 2, dim).transpose(1, 2)` (which sources.hf.HfRotaryRef applies)."""
    n = rows.shape[0] // head_size
    return rows.reshape(n, head_size // 2, 2, rows.shape[1]).transpose(0, 2, 1, 3).reshape(rows.shape)


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for `cfg`, as transformers 5 writes a LlamaConfig.

    rope_theta is written both inside `rope_parameters` (transformers >= 5) and at the top
    level (what transformers 4 reads; 5 accepts it too); likewise `dtype` and `torch_dtype`, and
    a rope scaling both in `rope_parameters` and as transformers 4's `rope_scaling`. BOS/EOS are
    the source's when it declares them, else llama2.c's 1 and 2."""
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope = {"rope_theta": cfg.rope_theta, **cfg.rope_scaling.to_json()}
    eos: int | list[int] = EOS_TOKEN_ID
    if cfg.eos_ids:
        eos = cfg.eos_ids[0] if len(cfg.eos_ids) == 1 else list(cfg.eos_ids)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID if cfg.bos_id is None else cfg.bos_id,
        "dtype": "float32",
        "eos_token_id": eos,
        "head_dim": cfg.head_size,
        "hidden_act": "silu",
        "hidden_size": cfg.dim,
        "initializer_range": 0.02,
        "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers,
        "num_key_value_heads": cfg.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.shared_classifier,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }
    if cfg.rope_scaling is not None:
        config["rope_scaling"] = cfg.rope_scaling.to_json()
    return config

"""Builders for tiny Meta and Hugging Face checkpoints of one random model (offline, seeded).

One set of canonical (Meta-layout) weights is drawn per `Spec`; the HF model is made from them
the way transformers' convert_llama_weights_to_hf.py does (its `permute`, i.e. the Meta -> HF
direction, the inverse of what llama2bin implements), loaded into a real LlamaForCausalLM and
saved with save_pretrained. Meta shards are split from the same weights as docs/formats.md says.
transformers' own forward of that model is the reference every export is compared with.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from conftest import assert_refused, run_main
from transformers import LlamaConfig, LlamaForCausalLM

# A fixed prompt for logit comparisons (ids < 64, length <= max_position_embeddings 16).
TOKENS = (1, 17, 5, 42, 9, 33, 2, 60, 11, 8, 50, 3, 27, 63)


@dataclass(frozen=True)
class Spec:
    dim: int = 32
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    vocab: int = 64
    hidden: int = 96
    max_pos: int = 16
    tied: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seed: int = 0

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


def canonical_weights(spec: Spec) -> dict[str, torch.Tensor]:
    """Meta-named float32 weights ("layers.0.attention.wq.weight", ...), output always present.

    Scales keep activations O(1) (matrices ~ 1/sqrt(fan_in), embeddings ~ 1, norms 1 +- 0.2) so
    attention is far from uniform and a wrong rotary layout or head grouping changes the logits.
    """
    g = torch.Generator().manual_seed(spec.seed)
    hd, kv = spec.head_size, spec.n_kv_heads

    def mat(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    w = {"tok_embeddings.weight": torch.randn(spec.vocab, spec.dim, generator=g)}
    for i in range(spec.n_layers):
        p = f"layers.{i}."
        w[p + "attention_norm.weight"] = norm(spec.dim)
        w[p + "attention.wq.weight"] = mat(spec.n_heads * hd, spec.dim)
        w[p + "attention.wk.weight"] = mat(kv * hd, spec.dim)
        w[p + "attention.wv.weight"] = mat(kv * hd, spec.dim)
        w[p + "attention.wo.weight"] = mat(spec.dim, spec.n_heads * hd)
        w[p + "ffn_norm.weight"] = norm(spec.dim)
        w[p + "feed_forward.w1.weight"] = mat(spec.hidden, spec.dim)
        w[p + "feed_forward.w2.weight"] = mat(spec.dim, spec.hidden)
        w[p + "feed_forward.w3.weight"] = mat(spec.hidden, spec.dim)
    w["norm.weight"] = norm(spec.dim)
    w["output.weight"] = w["tok_embeddings.weight"].clone() if spec.tied else mat(spec.vocab, spec.dim)
    return w


def hf_permute(w: torch.Tensor, n_heads: int, dim1: int, dim2: int) -> torch.Tensor:
    """Meta -> HF rotary row order, as in transformers' convert_llama_weights_to_hf.py."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_config(spec: Spec) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=spec.dim,
        intermediate_size=spec.hidden,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        vocab_size=spec.vocab,
        max_position_embeddings=spec.max_pos,
        rms_norm_eps=spec.norm_eps,
        tie_word_embeddings=spec.tied,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
    )


def hf_state_from_canonical(spec: Spec, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hd = spec.head_size
    sd = {"model.embed_tokens.weight": w["tok_embeddings.weight"], "model.norm.weight": w["norm.weight"],
          "lm_head.weight": w["output.weight"]}
    for i in range(spec.n_layers):
        c, h = f"layers.{i}.", f"model.layers.{i}."
        sd[h + "input_layernorm.weight"] = w[c + "attention_norm.weight"]
        sd[h + "self_attn.q_proj.weight"] = hf_permute(w[c + "attention.wq.weight"], spec.n_heads, spec.n_heads * hd, spec.dim)
        kv_dim = spec.n_kv_heads * hd
        sd[h + "self_attn.k_proj.weight"] = hf_permute(w[c + "attention.wk.weight"], spec.n_kv_heads, kv_dim, spec.dim)
        sd[h + "self_attn.v_proj.weight"] = w[c + "attention.wv.weight"]
        sd[h + "self_attn.o_proj.weight"] = w[c + "attention.wo.weight"]
        sd[h + "post_attention_layernorm.weight"] = w[c + "ffn_norm.weight"]
        sd[h + "mlp.gate_proj.weight"] = w[c + "feed_forward.w1.weight"]
        sd[h + "mlp.down_proj.weight"] = w[c + "feed_forward.w2.weight"]
        sd[h + "mlp.up_proj.weight"] = w[c + "feed_forward.w3.weight"]
    return sd


def hf_model(spec: Spec) -> LlamaForCausalLM:
    """A real LlamaForCausalLM holding `canonical_weights(spec)` (float32, eval mode)."""
    model = LlamaForCausalLM(hf_config(spec)).eval()
    sd = hf_state_from_canonical(spec, canonical_weights(spec))
    model.load_state_dict(sd, strict=True)
    if spec.tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def save_hf(model: LlamaForCausalLM, path: str, *, fmt: str = "safetensors", dtype: torch.dtype = torch.float32,
            max_shard_size: str | int | None = None) -> str:
    """save_pretrained for safetensors; for "bin" the pytorch_model[-0000i-of-0000n].bin (+ index)
    layout older transformers wrote (transformers 5 only writes safetensors)."""
    m = copy.deepcopy(model).to(dtype)
    if fmt == "safetensors":
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        m.save_pretrained(path, **kwargs)
        return path
    assert fmt == "bin"
    os.makedirs(path, exist_ok=True)
    m.config.save_pretrained(path)
    state = m.state_dict()  # a tied lm_head shares the embeddings' storage, as in old .bin files
    limit = None if max_shard_size is None else int(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if limit is None:
        torch.save(shards[0], os.path.join(path, "pytorch_model.bin"))
        return path
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, os.path.join(path, file))
        weight_map.update({name: file for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return path


# How Meta's model parallelism splits each tensor (docs/formats.md): None = replicated.
def meta_split_dim(key: str) -> int | None:
    if key.endswith("norm.weight"):
        return None
    if key == "tok_embeddings.weight" or key.endswith("attention.wo.weight") or key.endswith("feed_forward.w2.weight"):
        return 1
    return 0


def meta_params(spec: Spec, **extra: object) -> dict:
    params = {"dim": spec.dim, "multiple_of": 16, "n_heads": spec.n_heads, "n_layers": spec.n_layers,
              "norm_eps": spec.norm_eps, "vocab_size": -1}
    if spec.n_kv_heads != spec.n_heads:
        params["n_kv_heads"] = spec.n_kv_heads
    if spec.rope_theta != 10000.0:
        params["rope_theta"] = spec.rope_theta
    params.update(extra)
    return params


def save_meta(spec: Spec, path: str, n_shards: int, *, dtype: torch.dtype = torch.float32,
              weights: dict[str, torch.Tensor] | None = None, params: dict | None = None) -> str:
    """consolidated.NN.pth shards (contiguous pieces, plus Meta's rope.freqs) and params.json."""
    w = canonical_weights(spec) if weights is None else weights
    os.makedirs(path, exist_ok=True)
    hd = spec.head_size
    rope_freqs = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    for s in range(n_shards):
        shard = {}
        for key, t in w.items():
            dim = meta_split_dim(key)
            piece = t if dim is None else torch.chunk(t, n_shards, dim=dim)[s]
            shard[key] = piece.to(dtype).clone().contiguous()
        shard["rope.freqs"] = rope_freqs.to(dtype)
        torch.save(shard, os.path.join(path, f"consolidated.{s:02d}.pth"))
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(meta_params(spec) if params is None else params, f)
    return path


def hf_logits(model_or_dir: LlamaForCausalLM | str, tokens=TOKENS) -> np.ndarray:
    """transformers' forward in float32: logits [T, vocab]."""
    model = model_or_dir
    if isinstance(model, str):
        model = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        return model(torch.tensor([list(tokens)])).logits[0].float().numpy()


def rounded_model(model: LlamaForCausalLM, dtype: torch.dtype) -> LlamaForCausalLM:
    """The model with every weight rounded to `dtype` and widened back (what a bf16 file holds).
    Parameters only: `.to(dtype)` would also round the rotary inv_freq buffer, which no file stores."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    return m


def model_from_canonical(spec: Spec, weights: dict[str, np.ndarray]) -> LlamaForCausalLM:
    """A LlamaForCausalLM holding canonical-named float32 arrays (e.g. dequantized from a .bin)."""
    w = {f"{k}.weight": torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    w.setdefault("output.weight", w["tok_embeddings.weight"])
    model = LlamaForCausalLM(hf_config(spec)).eval()
    model.load_state_dict(hf_state_from_canonical(spec, w), strict=True)
    return model


# ---- running the CLI in-process ------------------------------------------------------------


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`llama2bin ARGV` in this process: (exit status, stdout, stderr)."""
    proc = run_main(argv, capsys)
    return proc.returncode, proc.stdout, proc.stderr


def export_refused(argv: list[str], out_dir, capsys, *needles: str) -> str:
    """`llama2bin ARGV` in this process is refused (conftest.assert_refused) and leaves `out_dir` empty."""
    return assert_refused(run_main(argv, capsys), *needles, leaves=out_dir)

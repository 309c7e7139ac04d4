"""Two tiny Llama-3-style models trained for real with transformers, saved as Hugging Face directories.

- `llama3_shaped`: what Llama 3.x changes in the config, at toy size: rope_theta 500000, tied
  embeddings, grouped-query attention, an explicit head_dim, a BOS id and a list of EOS ids.
- `rope_scaled`: the same with Llama 3.1/3.2's `llama3` rope scaling. Its
  original_max_position_embeddings is small (48) so that the scaling changes most frequency
  pairs at the positions a test runs (at Llama 3.2's 8192 it would touch only the slowest
  pairs, and a wrong RoPE would hide in the last digits).

Both are transformers' own LlamaForCausalLM (its RoPE, its attention), trained for a few hundred
steps on tests/trained_model.py's grammar, so their next-token distributions are peaked as real
models' are; `save_pretrained` writes them as transformers 5 does (rope_parameters).
"""

from __future__ import annotations

import math
import os

import numpy as np
from trained_model import VOCAB, corpus

SEQ = 32
COMMON = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, vocab_size=64, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
              bos_token_id=VOCAB["<s>"], eos_token_id=[VOCAB["</s>"], VOCAB["."]])
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 48}
MODELS = {
    "llama3_shaped": {**COMMON, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    "rope_scaled": {**COMMON, "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 500000.0}},
}


def train_hf(name: str, path: str, steps: int = 150, seed: int = 0) -> str:
    """Train MODELS[name] on the grammar and save_pretrained it (float32 safetensors) at `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = LlamaForCausalLM(LlamaConfig(**MODELS[name]))
        data = torch.from_numpy(corpus(20_000, seed))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
            starts = torch.randint(0, len(data) - SEQ - 1, (16,), generator=gen)
            x = torch.stack([data[s : s + SEQ] for s in starts])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        model.save_pretrained(path)
    finally:
        torch.set_num_threads(threads)
    return path


def sample_tokens(n: int = SEQ, seed: int = 1) -> list[int]:
    """A grammar sequence starting with BOS (what the models were trained on)."""
    return [int(t) for t in corpus(n, seed)]


def transformers_logits(path: str, tokens: list[int]) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def rotary_inv_freq(path: str) -> np.ndarray:
    """transformers' own inv_freq buffer of the saved model."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return model.model.rotary_emb.inv_freq.numpy()


def meta_dir_from_hf(hf_path: str, out: str, params: dict) -> str:
    """The same weights in Meta's layout (consolidated.00.pth + params.json), q/k rows permuted
    back to the interleaved order as Meta stores them (the inverse of convert_llama_weights_to_hf)."""
    import json

    import torch
    from safetensors.torch import load_file

    hf = load_file(os.path.join(hf_path, "model.safetensors"))
    cfg = MODELS[params.pop("_model")]
    hd, n_heads, n_kv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
        return w.view(heads, 2, hd // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

    sd = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
          "output.weight": hf.get("lm_head.weight", hf["model.embed_tokens.weight"])}
    names = {"input_layernorm": "attention_norm", "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "feed_forward.w1",
             "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3"}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for hf_name, meta_name in names.items():
            sd[f"layers.{i}.{meta_name}.weight"] = hf[p + hf_name + ".weight"]
        sd[f"layers.{i}.attention.wq.weight"] = unpermute(hf[p + "self_attn.q_proj.weight"], n_heads)
        sd[f"layers.{i}.attention.wk.weight"] = unpermute(hf[p + "self_attn.k_proj.weight"], n_kv)
    os.makedirs(out, exist_ok=True)
    torch.save({k: v.clone().contiguous() for k, v in sd.items()}, os.path.join(out, "consolidated.00.pth"))
    with open(os.path.join(out, "params.json"), "w") as f:
        json.dump(params, f)
    return out

"""A tiny LLaMA trained for real, so quality checks are calibrated on peaked distributions.

Random-weight models give nearly flat next-token distributions, on which any quantization looks
harmless. This trains llama2.c's architecture (RMSNorm, rotary embeddings on adjacent pairs,
SwiGLU, tied classifier - written here in torch independently of llama2bin's numpy forward) on
text from a small deterministic grammar, for a few hundred steps (seconds on one core), and
saves it as a llama2.c training checkpoint.

The grammar: "NAME VERB the OBJECT . then PRONOUN went PLACE ." where the verb decides the
object class, the name decides the pronoun, and most other positions are fixed - so a trained
model is confident at most positions and unsure at a few, as language models are.
"""

from __future__ import annotations

import math

import numpy as np
from helpers import hidden_dim_for, save_llama2c

NAMES = {"anna": "she", "mia": "she", "lily": "she", "sara": "she", "tom": "he", "ben": "he", "max": "he", "leo": "he"}
VERBS = {
    "ate": ["apple", "bread", "cake", "pear", "soup", "rice"],
    "saw": ["cat", "dog", "bird", "fish", "fox", "owl"],
    "read": ["book", "note", "poem", "map", "sign", "card"],
    "built": ["house", "boat", "tower", "bridge", "kite", "wall"],
}
PLACES = ["home", "out", "away", "back"]
WORDS = ["<unk>", "<s>", "</s>", "the", ".", "then", "went", "she", "he", *NAMES, *VERBS,
         *(o for objs in VERBS.values() for o in objs), *PLACES]
VOCAB = {w: i for i, w in enumerate(WORDS)}  # <s> is id 1, llama2.c's BOS
ARGS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 64, "multiple_of": 32,
        "max_seq_len": 32, "dropout": 0.0}
assert len(WORDS) <= ARGS["vocab_size"]


def corpus(n_tokens: int, seed: int = 0) -> np.ndarray:
    """A token stream of sentences from the grammar, each story starting with BOS."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < n_tokens:
        out.append(VOCAB["<s>"])
        for _ in range(3):
            name = list(NAMES)[rng.integers(len(NAMES))]
            verb = list(VERBS)[rng.integers(len(VERBS))]
            obj = VERBS[verb][rng.integers(6)]
            place = PLACES[rng.integers(len(PLACES))]
            words = [name, verb, "the", obj, ".", "then", NAMES[name], "went", place, "."]
            out += [VOCAB[w] for w in words]
    return np.array(out[:n_tokens], dtype=np.int64)


def _model(torch):  # type: ignore[no-untyped-def]
    nn, F = torch.nn, torch.nn.functional
    dim, n_layers, n_heads, vocab, seq = (ARGS[k] for k in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len"))
    hd, hidden = dim // n_heads, hidden_dim_for(ARGS["dim"], ARGS["multiple_of"])
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(seq).float(), freqs)
    cos, sin = angles.cos(), angles.sin()

    def rope(x):  # x [B, T, H, hd]: rotate pairs (2j, 2j+1), as llama2.c's model.py
        t = x.shape[1]
        even, odd = x[..., 0::2], x[..., 1::2]
        c, s = cos[:t, None, :], sin[:t, None, :]
        return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_norm, self.ffn_norm = RMSNorm(), RMSNorm()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
            self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
            self.w2 = nn.Linear(hidden, dim, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.attention_norm(x)
            q, k, v = (w(h).view(b, t, n_heads, hd) for w in (self.wq, self.wk, self.wv))
            q, k = rope(q), rope(k)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            x = x + self.wo(a.transpose(1, 2).reshape(b, t, dim))
            h = self.ffn_norm(x)
            return x + self.w2(F.silu(self.w1(h)) * self.w3(h))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = nn.Embedding(vocab, dim)
            self.layers = nn.ModuleList(Layer() for _ in range(n_layers))
            self.norm = RMSNorm()
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, tok):
            x = self.tok_embeddings(tok)
            for layer in self.layers:
                x = layer(x)
            return self.norm(x) @ self.tok_embeddings.weight.T  # tied classifier

    return Model()


def train(path: str, steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Train and save the llama2.c checkpoint at `path`; returns the final training loss."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = _model(torch)
    data = torch.from_numpy(corpus(40_000, seed))
    seq = ARGS["max_seq_len"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for step in range(steps):
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - seq - 1, (32,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, ARGS["vocab_size"]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sd = model.state_dict()
    arrays = {}
    for name, t in sd.items():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] in ("wq", "wk", "wv", "wo"):
            name = f"layers.{parts[1]}.attention.{parts[2]}.weight"
        elif parts[0] == "layers" and parts[2] in ("w1", "w2", "w3"):
            name = f"layers.{parts[1]}.feed_forward.{parts[2]}.weight"
        arrays[name] = t.detach().numpy().astype(np.float32)
    arrays["output.weight"] = arrays["tok_embeddings.weight"]
    save_llama2c(path, arrays, dict(ARGS), tie=True)
    return {"loss": float(loss.detach())}

"""llama2.c checkpoints at the shapes users have, random or briefly trained, for the C check's
false-failure and detection measurements (bench/ccheck_rates.py) and the slow tests.

Random models are initialised the way llama2.c's model.py initialises a model before training:
every matrix ~N(0, 0.02) in module order (tok_embeddings, then per layer wq wk wv wo w1 w2 w3,
then the classifier, which overwrites the tied embeddings), then every `w3` and `wo` again with
std 0.02 / sqrt(2 * n_layers); norms are ones. Written here in torch (not llama2.c's code), so a
torch seed gives the same weights on every machine.

Trained models: the random model trained for a few hundred AdamW steps on text from
tests/trained_model.py's grammar (ids spread over the whole vocabulary), so weights, norms and
activations take trained shapes (peaked, outlying channels) that random weights hide.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass

import numpy as np
from helpers import hidden_dim_for, save_llama2c

from llama2bin.formats.reader import BinFile


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    tied: bool = True

    def model_args(self) -> dict:
        return {"dim": self.dim, "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "vocab_size": self.vocab_size, "multiple_of": 32, "max_seq_len": self.max_seq_len, "dropout": 0.0}

    @property
    def hidden_dim(self) -> int:
        return hidden_dim_for(self.dim, 32)


SHAPES = {
    "15M": Shape("15M", 288, 6, 6, 6, 32000, 256),
    "42M": Shape("42M", 512, 8, 8, 8, 32000, 1024),
    "110M": Shape("110M", 768, 12, 12, 12, 32000, 1024),
    # GQA and an untied classifier at 15M's size (llama2.c trains both with n_kv_heads / no tying)
    "15M-gqa": Shape("15M-gqa", 288, 6, 6, 2, 32000, 256),
    "15M-untied": Shape("15M-untied", 288, 6, 6, 6, 32000, 256, tied=False),
    "15M-gqa-untied": Shape("15M-gqa-untied", 288, 6, 6, 3, 32000, 256, tied=False),
}


def _tensor_order(shape: Shape) -> list[tuple[str, tuple[int, int]]]:
    d, kv, h = shape.dim, shape.dim // shape.n_heads * shape.n_kv_heads, shape.hidden_dim
    out = [("tok_embeddings.weight", (shape.vocab_size, d))]
    for i in range(shape.n_layers):
        out += [(f"layers.{i}.attention.wq.weight", (d, d)), (f"layers.{i}.attention.wk.weight", (kv, d)),
                (f"layers.{i}.attention.wv.weight", (kv, d)), (f"layers.{i}.attention.wo.weight", (d, d)),
                (f"layers.{i}.feed_forward.w1.weight", (h, d)), (f"layers.{i}.feed_forward.w2.weight", (d, h)),
                (f"layers.{i}.feed_forward.w3.weight", (h, d))]
    return out


def llama2c_init(shape: Shape, seed: int) -> dict:
    """torch tensors of a freshly initialised llama2.c Transformer (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, s in _tensor_order(shape):
        sd[name] = torch.empty(s).normal_(0.0, 0.02, generator=gen)
    out = torch.empty(shape.vocab_size, shape.dim).normal_(0.0, 0.02, generator=gen)
    if shape.tied:
        sd["tok_embeddings.weight"] = out  # model.py ties them; the classifier's init came last
    sd["output.weight"] = out
    for i in range(shape.n_layers):
        for name in (f"layers.{i}.attention.wo.weight", f"layers.{i}.feed_forward.w3.weight"):
            sd[name] = torch.empty(sd[name].shape).normal_(0.0, 0.02 / math.sqrt(2 * shape.n_layers), generator=gen)
    for i in range(shape.n_layers):
        sd[f"layers.{i}.attention_norm.weight"] = torch.ones(shape.dim)
        sd[f"layers.{i}.ffn_norm.weight"] = torch.ones(shape.dim)
    sd["norm.weight"] = torch.ones(shape.dim)
    return sd


def _spread_corpus(shape: Shape, n_tokens: int, seed: int) -> np.ndarray:
    """The trained_model grammar's stream, each word id mapped to a fixed random id of the vocabulary."""
    from trained_model import WORDS, corpus

    ids = corpus(n_tokens, seed)
    table = np.random.default_rng(seed + 7).choice(np.arange(3, shape.vocab_size), size=len(WORDS), replace=False)
    table[:3] = [0, 1, 2]  # <unk>, <s>, </s> keep llama2.c's ids
    return table[ids]


def _forward(torch, sd: dict, shape: Shape, tok):  # type: ignore[no-untyped-def]
    """llama2.c's model.py forward (rope on adjacent pairs, GQA by repeat, SwiGLU) on state dict sd."""
    F = torch.nn.functional
    b, t = tok.shape
    hd, rep = shape.dim // shape.n_heads, shape.n_heads // shape.n_kv_heads
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(t).float(), freqs)
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rope(x):  # type: ignore[no-untyped-def]
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    def norm(x, w):  # type: ignore[no-untyped-def]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    x = sd["tok_embeddings.weight"][tok]
    for i in range(shape.n_layers):
        p = f"layers.{i}."
        h = norm(x, sd[p + "attention_norm.weight"])
        q = (h @ sd[p + "attention.wq.weight"].T).view(b, t, shape.n_heads, hd)
        k = (h @ sd[p + "attention.wk.weight"].T).view(b, t, shape.n_kv_heads, hd)
        v = (h @ sd[p + "attention.wv.weight"].T).view(b, t, shape.n_kv_heads, hd)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + a.transpose(1, 2).reshape(b, t, shape.dim) @ sd[p + "attention.wo.weight"].T
        h = norm(x, sd[p + "ffn_norm.weight"])
        x = x + (F.silu(h @ sd[p + "feed_forward.w1.weight"].T) * (h @ sd[p + "feed_forward.w3.weight"].T)) \
            @ sd[p + "feed_forward.w2.weight"].T
    return norm(x, sd["norm.weight"]) @ sd["output.weight"].T


def train(sd: dict, shape: Shape, steps: int, seed: int, seq: int = 32, batch: int = 4, lr: float = 3e-3) -> float:
    """Train sd in place for `steps` AdamW steps on the spread grammar; returns the last loss."""
    import torch

    torch.set_num_threads(1)
    names = list(sd)
    params = {n: sd[n].clone().requires_grad_(True) for n in names if not (shape.tied and n == "tok_embeddings.weight")}
    view = dict(params)
    if shape.tied:
        view["tok_embeddings.weight"] = view["output.weight"]
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    data = torch.from_numpy(_spread_corpus(shape, 20_000, seed))
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(_forward(torch, view, shape, x).reshape(-1, shape.vocab_size),
                                                 y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n in names:
        sd[n] = view[n].detach()
    return float(loss.detach())


def write_checkpoint(path: str, shape: Shape, seed: int, train_steps: int = 0) -> str:
    """A llama2.c training checkpoint (.pt) of `shape`: llama2.c's init with torch seed `seed`,
    then `train_steps` steps of training when > 0."""
    sd = llama2c_init(shape, seed)
    if train_steps:
        train(sd, shape, train_steps, seed)
    arrays = {k: v.numpy().astype(np.float32) for k, v in sd.items()}
    return save_llama2c(path, arrays, shape.model_args(), tie=shape.tied)


# ---- layout errors, for the detection checks ----------------------------------------------


def copy_with(src: str, dst: str, edit) -> str:  # type: ignore[no-untyped-def]
    """A copy of .bin `src` at `dst`, its bytes changed by edit(open BinFile of src, bytearray)."""
    shutil.copyfile(src, dst)
    with BinFile(src) as bf:
        data = bytearray(open(src, "rb").read())
        edit(bf, data)
    with open(dst, "wb") as f:
        f.write(data)
    return dst


def swap_tensors(a: str, b: str):  # type: ignore[no-untyped-def]
    """An edit exchanging two same-shaped Q8_0 tensors of a v2 file (values and scales)."""
    def edit(bf: BinFile, data: bytearray) -> None:
        ta, tb = bf.tensors[a], bf.tensors[b]
        (a0, a1), (b0, b1) = ((t.offset, t.scales_offset + 4 * (t.numel // t.group_size)) for t in (ta, tb))
        data[a0:a1], data[b0:b1] = data[b0:b1], data[a0:a1]
    return edit


def double_scale(name: str, group: int):  # type: ignore[no-untyped-def]
    """An edit doubling one group scale of a Q8_0 tensor."""
    def edit(bf: BinFile, data: bytearray) -> None:
        off = bf.tensors[name].scales_offset + 4 * group
        data[off : off + 4] = (np.frombuffer(bytes(data[off : off + 4]), "<f4") * 2).astype("<f4").tobytes()
    return edit

"""Synthetic checkpoints for the benchmark, written straight to disk with random values.

They are not trained models: only their shapes, dtypes and container formats matter for
conversion speed and memory. Nothing here instantiates a transformers model, and the
Hugging Face writer streams one tensor at a time, so building a 1.1B checkpoint needs
about one tensor of memory.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass

import numpy as np

from llama2bin.model import hf_name


@dataclass(frozen=True)
class Shape:
    name: str  # label in the results table, e.g. "15M"
    kind: str  # "llama2c" (.pt training checkpoint) or "hf" (safetensors directory, bf16)
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    max_seq_len: int
    shards: int = 1  # hf only: number of safetensors files (an index is written when > 1)

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """llama2.c names -> shape (the classifier is tied for llama2c, untied for hf)."""
        kv = self.n_kv_heads * self.head_size
        out: dict[str, tuple[int, ...]] = {"tok_embeddings": (self.vocab_size, self.dim)}
        for i in range(self.n_layers):
            out |= {
                f"layers.{i}.attention_norm": (self.dim,),
                f"layers.{i}.attention.wq": (self.dim, self.dim),
                f"layers.{i}.attention.wk": (kv, self.dim),
                f"layers.{i}.attention.wv": (kv, self.dim),
                f"layers.{i}.attention.wo": (self.dim, self.dim),
                f"layers.{i}.ffn_norm": (self.dim,),
                f"layers.{i}.feed_forward.w1": (self.hidden_dim, self.dim),
                f"layers.{i}.feed_forward.w2": (self.dim, self.hidden_dim),
                f"layers.{i}.feed_forward.w3": (self.hidden_dim, self.dim),
            }
        out["norm"] = (self.dim,)
        if self.kind == "hf":
            out["output"] = (self.vocab_size, self.dim)
        return out

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.tensor_shapes().values())

    def describe(self) -> str:
        kv = f"/{self.n_kv_heads}kv" if self.n_kv_heads != self.n_heads else ""
        return f"d{self.dim} L{self.n_layers} h{self.n_heads}{kv} ffn{self.hidden_dim} V{self.vocab_size}"


def _llama2c_hidden(dim: int, multiple_of: int = 32) -> int:
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


SHAPES: dict[str, Shape] = {
    # tiny shapes for the smoke test: seconds, not minutes
    "tiny": Shape("tiny", "llama2c", 64, 2, 4, 4, 512, _llama2c_hidden(64), 64),
    "tiny-hf": Shape("tiny-hf", "hf", 64, 2, 4, 2, 512, 256, 64, shards=2),
    # llama2.c's published stories15M / stories110M shapes
    "15M": Shape("15M", "llama2c", 288, 6, 6, 6, 32000, _llama2c_hidden(288), 256),
    "110M": Shape("110M", "llama2c", 768, 12, 12, 12, 32000, _llama2c_hidden(768), 1024),
    # TinyLlama-1.1B: GQA, untied lm_head, bf16, sharded safetensors
    "1.1B": Shape("1.1B", "hf", 2048, 22, 32, 4, 32000, 5632, 2048, shards=3),
    # TinyLlama's shapes with 4 of its 22 layers (307M params): near where the compiled quantizer
    # starts to pay for numba's import (formats/q8_fast.py MIN_ELEMENTS)
    "1.1B-4L": Shape("1.1B-4L", "hf", 2048, 4, 32, 4, 32000, 5632, 2048, shards=1),
    # Llama 2 70B's tensor shapes (GQA 64/8 heads, ffn 28672), only 2 of its 80 layers so it fits:
    # the export's per-tensor costs at the largest shapes people convert (2.2B params, 4.5 GB bf16)
    "70B-2L": Shape("70B-2L", "hf", 8192, 2, 64, 8, 32000, 28672, 4096, shards=2),
}


def _random(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> np.ndarray:
    """float32 weights: ~N(0, 0.02) for matrices, ~1 for norms (as trained models look)."""
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def _stamp(shape: Shape) -> str:
    return json.dumps({"generator": 1, **asdict(shape)}, sort_keys=True)


def ensure(shape: Shape, cache: str) -> str:
    """The checkpoint for `shape` under `cache` (built once; rebuilt if the shape changed)."""
    path = os.path.join(cache, f"{shape.name}.pt" if shape.kind == "llama2c" else shape.name)
    stamp_path = os.path.join(cache, f"{shape.name}.stamp.json")
    if os.path.exists(path) and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if f.read() == _stamp(shape):
                return path
    os.makedirs(cache, exist_ok=True)
    if shape.kind == "llama2c":
        _write_llama2c(shape, path)
    else:
        _write_hf(shape, path)
    with open(stamp_path, "w") as f:
        f.write(_stamp(shape))
    return path


def _write_llama2c(shape: Shape, path: str) -> None:
    """A llama2.c train.py checkpoint: tied output/tok_embeddings (one storage), float32."""
    import torch

    rng = np.random.default_rng(1234)
    state: dict[str, torch.Tensor] = {}
    for name, s in shape.tensor_shapes().items():
        state[f"{name}.weight"] = torch.from_numpy(_random(rng, s, name))
    state["output.weight"] = state["tok_embeddings.weight"]  # weight tying, as llama2.c trains
    model_args = {
        "dim": shape.dim,
        "n_layers": shape.n_layers,
        "n_heads": shape.n_heads,
        "n_kv_heads": shape.n_kv_heads,
        "vocab_size": shape.vocab_size,
        "multiple_of": 32,
        "max_seq_len": shape.max_seq_len,
        "dropout": 0.0,
    }
    ckpt = {"model": state, "model_args": model_args, "iter_num": 0, "best_val_loss": 0.0, "config": {}}
    tmp = path + ".part"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def _bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (what torch's .to(bfloat16) does)."""
    bits = values.view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _write_hf(shape: Shape, folder: str) -> None:
    """A LlamaForCausalLM directory: config.json, bf16 safetensors shards (+ index when sharded).

    safetensors is written by hand (8-byte header length, JSON header, raw little-endian
    data) so each tensor is generated, converted and written on its own.
    """
    tmp = folder + ".part"
    os.makedirs(tmp, exist_ok=True)
    names = list(shape.tensor_shapes().items())
    total = sum(int(np.prod(s)) for _, s in names)
    # split into shards of about equal size, in tensor order
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(shape.shards)]
    done = 0
    for name, s in names:
        shards[min(shape.shards - 1, done * shape.shards // total)].append((name, s))
        done += int(np.prod(s))
    rng = np.random.default_rng(4321)
    weight_map: dict[str, str] = {}
    for k, members in enumerate(shards):
        fname = "model.safetensors" if shape.shards == 1 else f"model-{k + 1:05d}-of-{shape.shards:05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, s in members:
            nbytes = 2 * int(np.prod(s))
            header[hf_name(name)] = {"dtype": "BF16", "shape": list(s), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[hf_name(name)] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(tmp, fname), "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for name, s in members:
                f.write(_bf16(_random(rng, s, name)).tobytes())
    if shape.shards > 1:
        index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.dim,
        "intermediate_size": shape.hidden_dim,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if os.path.exists(folder):
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)

"""The canonical model: hyper-parameters and the llama2.c/Meta tensor names and shapes.

Every source maps its checkpoint onto these names; every format orders them; the reader
yields them back. This module is the one place that says what a LLaMA model consists of.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import constants as C
from .errors import Llama2binError
from .rope_freqs import RopeScaling, inv_freq

# Upper bounds per header field: no released LLaMA-family model comes near them, and a value past
# them (a corrupt header, a typo'd max_seq_len) would otherwise size gigabytes of rope tables or KV cache.
# The keys are the 7 int32 hyper-parameters of every .bin header, in header order.
FIELD_BOUNDS = {
    "dim": C.MAX_DIM,
    "hidden_dim": C.MAX_HIDDEN_DIM,
    "n_layers": C.MAX_LAYERS,
    "n_heads": C.MAX_HEADS,
    "n_kv_heads": C.MAX_HEADS,
    "vocab_size": C.MAX_VOCAB,
    "max_seq_len": C.MAX_SEQ_LEN,
}

# Per-layer tensors, in the order the v0 format lists its per-layer sections.
LAYER_TENSORS: tuple[str, ...] = (
    "attention_norm",
    "attention.wq",
    "attention.wk",
    "attention.wv",
    "attention.wo",
    "ffn_norm",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)
LAYER_NORMS: tuple[str, ...] = ("attention_norm", "ffn_norm")
LAYER_MATRICES: tuple[str, ...] = tuple(t for t in LAYER_TENSORS if t not in LAYER_NORMS)


def layer_name(i: int, kind: str) -> str:
    return f"layers.{i}.{kind}"


# Hugging Face Llama naming of the same tensors: canonical per-layer kind -> HF kind.
HF_LAYER_NAMES: dict[str, str] = {
    "attention_norm": "input_layernorm",
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
}


@dataclass(frozen=True)
class TensorNaming:
    """How a file family names the canonical tensors: a fixed name for the embeddings, final norm
    and classifier, and `{layer_prefix}{i}.{kind}.weight` per layer. One description serves both
    directions (HF state_dict keys; GGUF's LLM_TENSOR_NAMES in sources/gguf_file.py)."""

    fixed: dict[str, str]  # canonical -> external name, for the tensors outside the layers
    layer_kinds: dict[str, str]  # canonical layer tensor ("attention.wq") -> external kind
    layer_prefix: str  # e.g. "model.layers."
    index_pattern: str = r"\d+"  # the layer numbers accepted when reading a name

    def external(self, canonical: str) -> str:
        """The external name of a canonical tensor name."""
        if canonical in self.fixed:
            return self.fixed[canonical]
        _, i, kind = canonical.split(".", 2)
        return f"{self.layer_prefix}{i}.{self.layer_kinds[kind]}.weight"

    def canonical(self, name: str) -> str | None:
        """The canonical name of an external tensor name, or None if it is not one."""
        for canonical, fixed in self.fixed.items():
            if fixed == name:
                return canonical
        m = re.match(rf"^{re.escape(self.layer_prefix)}({self.index_pattern})\.(.+)\.weight$", name)
        kinds = {external: canonical for canonical, external in self.layer_kinds.items()}
        if m and m.group(2) in kinds:
            return layer_name(int(m.group(1)), kinds[m.group(2)])
        return None


HF_NAMING = TensorNaming({"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight",
                          "output": "lm_head.weight"}, HF_LAYER_NAMES, "model.layers.")


def hf_name(canonical: str) -> str:
    """The Hugging Face state_dict key (with `.weight`) of a canonical tensor name."""
    return HF_NAMING.external(canonical)


def canonical_name(hf_key: str) -> str | None:
    """The canonical name of a Hugging Face Llama weight key, or None if it is not one."""
    return HF_NAMING.canonical(hf_key)


@dataclass(frozen=True)
class ModelConfig:
    """What a .bin header records, plus what the C readers assume and a source may contradict."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    shared_classifier: bool
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # What Llama 3.x models add and reader programs hard-code (a target checks them): the rope
    # scaling (None: plain RoPE at rope_theta), and the BOS/EOS ids the source declares (None / ()
    # when it declares none, e.g. llama2.c checkpoints and Meta's params.json).
    rope_scaling: RopeScaling | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    # Departures from what the formats can express that the user explicitly accepted
    # (e.g. "rope_theta=500000"); recorded in verification and reports.
    accepted_departures: tuple[str, ...] = field(default=())

    @property
    def head_size(self) -> int:
        """The per-head size (head_dim): the .bin formats derive it as dim / n_heads, so sources
        refuse an explicit head_dim that differs."""
        return self.dim // self.n_heads

    def inv_freq(self) -> np.ndarray:
        """float32 RoPE inverse frequencies [head_size // 2], as transformers computes them."""
        return inv_freq(self.rope_theta, self.head_size, self.rope_scaling)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape for every weight of the model, `output` only when unshared (a
        fresh dict each call: the forward and the checks ask thousands of times per model, so it is
        built once per config and copied)."""
        return dict(self._shapes)

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        kv_dim = self.n_kv_heads * self.head_size
        per_layer = {
            "attention_norm": (self.dim,),
            "attention.wq": (self.dim, self.dim),
            "attention.wk": (kv_dim, self.dim),
            "attention.wv": (kv_dim, self.dim),
            "attention.wo": (self.dim, self.dim),
            "ffn_norm": (self.dim,),
            "feed_forward.w1": (self.hidden_dim, self.dim),
            "feed_forward.w2": (self.dim, self.hidden_dim),
            "feed_forward.w3": (self.hidden_dim, self.dim),
        }
        shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (self.vocab_size, self.dim)}
        for i in range(self.n_layers):
            for kind in LAYER_TENSORS:
                shapes[layer_name(i, kind)] = per_layer[kind]
        shapes["norm"] = (self.dim,)
        if not self.shared_classifier:
            shapes["output"] = (self.vocab_size, self.dim)
        return shapes

    def validate(self, where: str) -> None:
        """Refuse hyper-parameters no C reader can run; `where` names the file they came from."""
        for name, bound in FIELD_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise Llama2binError(f"{where}: {name} must be a positive integer, got {value!r}")
            if value > bound:
                raise Llama2binError(f"{where}: {name} = {value} is beyond any LLaMA model (limit {bound})")
        if self.dim % self.n_heads:
            raise Llama2binError(f"{where}: dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise Llama2binError(
                f"{where}: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        if self.head_size % 2:
            raise Llama2binError(f"{where}: head size {self.head_size} is odd; rotary embeddings need pairs")
        for name, ids in (("bos_token_id", () if self.bos_id is None else (self.bos_id,)), ("eos_token_id", self.eos_ids)):
            for i in ids:
                if not 0 <= i < self.vocab_size:
                    raise Llama2binError(f"{where}: {name} {i} is outside the vocabulary of {self.vocab_size}")

    def to_json(self) -> dict[str, Any]:
        """As a JSON object; the Llama 3 fields only when set, so reports of other models keep their bytes."""
        d = asdict(self)
        for key, unset in (("rope_scaling", None), ("bos_id", None), ("eos_ids", ())):
            if getattr(self, key) == unset:
                del d[key]
        if self.rope_scaling is not None:
            d["rope_scaling"] = self.rope_scaling.to_json()
        if self.eos_ids:
            d["eos_ids"] = list(self.eos_ids)
        d["accepted_departures"] = list(self.accepted_departures)
        return d


"""One description of every .bin layout: which tensor goes where, encoded how.

A format version declares its header and the order of its sections; `build_layout` turns
that into byte offsets. The writer fills those sections, the reader finds tensors through
them, so writer and reader cannot disagree about where a tensor lives.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..constants import MAGIC, QHEADER_SIZE
from ..model import LAYER_MATRICES, LAYER_TENSORS, ModelConfig, layer_name

F32 = "f32"  # float32 values
Q8 = "q8"  # int8 Q8_0 values
SCALE = "scale"  # float32 Q8_0 group scales

ROPE_COS = "freqs_cos"
ROPE_SIN = "freqs_sin"


@dataclass(frozen=True)
class Section:
    tensor: str  # canonical tensor name, or ROPE_COS / ROPE_SIN
    encoding: str  # F32, Q8 or SCALE
    shape: tuple[int, ...]  # of the tensor (not of the section)
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    version: int
    config: ModelConfig
    group_size: int | None
    header: bytes
    sections: tuple[Section, ...]

    @property
    def size(self) -> int:
        last = self.sections[-1]
        return last.offset + last.nbytes

    def sections_of(self, tensor: str) -> list[Section]:
        return [s for s in self.sections if s.tensor == tensor]


# ---- the shared orders ------------------------------------------------------------------


def v0_weight_order(cfg: ModelConfig) -> list[str]:
    """tok_embeddings, each per-layer kind for all layers in turn, norm."""
    names = ["tok_embeddings"]
    for kind in LAYER_TENSORS:
        names += [layer_name(i, kind) for i in range(cfg.n_layers)]
    return names + ["norm"]


def norm_order(cfg: ModelConfig) -> list[str]:
    """The float32 norms of the quantized formats: attention_norm xL, ffn_norm xL, norm."""
    return [layer_name(i, "attention_norm") for i in range(cfg.n_layers)] + [
        layer_name(i, "ffn_norm") for i in range(cfg.n_layers)
    ] + ["norm"]


def quantized_order(cfg: ModelConfig) -> list[str]:
    """The Q8_0 tensors: tok_embeddings, wq..w3 each for all layers, output when unshared."""
    names = ["tok_embeddings"]
    for kind in LAYER_MATRICES:
        names += [layer_name(i, kind) for i in range(cfg.n_layers)]
    return names + ([] if cfg.shared_classifier else ["output"])


def rope_shape(cfg: ModelConfig) -> tuple[int, int]:
    return (cfg.max_seq_len, cfg.head_size // 2)


# ---- headers ------------------------------------------------------------------------------


def params_ints(cfg: ModelConfig, signed_vocab: bool) -> bytes:
    vocab = cfg.vocab_size if cfg.shared_classifier or not signed_vocab else -cfg.vocab_size
    return struct.pack(
        "<7i", cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, vocab, cfg.max_seq_len
    )


def quantized_header(version: int, cfg: ModelConfig, group_size: int) -> bytes:
    """The 256-byte "ak42" header of v1 and v2."""
    head = struct.pack("<Ii", MAGIC, version) + params_ints(cfg, signed_vocab=False)
    head += struct.pack("<Bi", int(cfg.shared_classifier), group_size)
    return head + b"\0" * (QHEADER_SIZE - len(head))


# ---- building ---------------------------------------------------------------------------

SectionSpec = tuple[str, str]  # (tensor, encoding)


def build_layout(
    version: int,
    cfg: ModelConfig,
    group_size: int | None,
    header: bytes,
    order: list[SectionSpec],
) -> Layout:
    shapes: dict[str, tuple[int, ...]] = dict(cfg.shapes())
    shapes[ROPE_COS] = shapes[ROPE_SIN] = rope_shape(cfg)
    offset = len(header)
    sections = []
    for tensor, encoding in order:
        numel = math.prod(shapes[tensor])
        if encoding == F32:
            nbytes = 4 * numel
        elif encoding == Q8:
            nbytes = numel
        else:
            assert group_size
            nbytes = 4 * (numel // group_size)
        sections.append(Section(tensor, encoding, shapes[tensor], offset, nbytes))
        offset += nbytes
    return Layout(version, cfg, group_size, header, tuple(sections))


@dataclass(frozen=True)
class FormatSpec:
    """A .bin version, declaratively: header, section order, who reads it, what it loses."""

    version: int
    quantized: bool
    header: Callable[[ModelConfig, int | None], bytes]
    order: Callable[[ModelConfig], list[SectionSpec]]
    read_by: str
    loses: str
    # runq.c quantizes activations and walks weights in groups that must not straddle a row, so
    # every matrix row length (dim and hidden_dim) must be a multiple of the group size.
    groups_within_rows: bool = False

    def layout(self, cfg: ModelConfig, group_size: int | None = None) -> Layout:
        gs = group_size if self.quantized else None
        return build_layout(self.version, cfg, gs, self.header(cfg, gs), self.order(cfg))

"""One description of every output format: its header, which tensor goes where, encoded how.

A format declares its header as one table of fields (`HeaderSpec`) that both encodes and
decodes, and the order of its sections; `build_layout` turns that into byte offsets. The
writer fills those sections, the reader finds tensors through them, so writer and reader
cannot disagree about where a header field or a tensor lives.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ..constants import MAGIC, QHEADER_SIZE, V0_HEADER_SIZE
from ..errors import Llama2binError
from ..model import FIELD_BOUNDS, LAYER_MATRICES, LAYER_TENSORS, ModelConfig, layer_name
from .encodings import CODECS, Encoding

# Short aliases: the names the format modules, writer and reader use.
F32 = Encoding.F32
Q8 = Encoding.Q8
SCALE = Encoding.SCALE

ROPE_COS = "freqs_cos"
ROPE_SIN = "freqs_sin"


@dataclass(frozen=True)
class Section:
    tensor: str  # canonical tensor name, or ROPE_COS / ROPE_SIN
    encoding: Encoding
    shape: tuple[int, ...]  # of the tensor (not of the section)
    offset: int
    nbytes: int
    group_size: int | None = None  # of a Q8_0 section


@dataclass(frozen=True)
class Layout:
    """A file as header bytes and sections at byte offsets: what the writer fills in one
    positional-write pass and the reader finds tensors through. Any family whose files are
    laid out this way (the .bin versions; GGUF's header and aligned tensor data) shares both."""

    format: str  # the registered format's name ("0", "1", "1f", "2")
    config: ModelConfig
    group_size: int | None
    header: bytes
    sections: tuple[Section, ...]
    trailing: int = 0  # zero bytes after the last section (a format that pads its end to an alignment)

    @property
    def size(self) -> int:
        last = self.sections[-1]
        return last.offset + last.nbytes + self.trailing

    def sections_of(self, tensor: str) -> list[Section]:
        return [s for s in self.sections if s.tensor == tensor]

    def by_tensor(self) -> dict[str, list[Section]]:
        """Every tensor's sections, in file order."""
        out: dict[str, list[Section]] = {}
        for sec in self.sections:
            out.setdefault(sec.tensor, []).append(sec)
        return out


# ---- headers: one field table that encodes and decodes ------------------------------------


@dataclass(frozen=True)
class HeaderField:
    """One header field: its struct code at its byte offset, and the values a valid file may hold
    there (low == high: a constant such as the magic or the version number)."""

    name: str
    code: str  # struct code, little-endian: "I", "i" or "B"
    offset: int
    low: int
    high: int

    @property
    def constant(self) -> bool:
        return self.low == self.high

    def read(self, head: bytes) -> int:
        return struct.unpack_from("<" + self.code, head, self.offset)[0]


# Header fields that are ModelConfig attributes of the same name, in header order (model.py's
# FIELD_BOUNDS lists them once, with their bounds, in that order).
PARAM_NAMES: tuple[str, ...] = tuple(FIELD_BOUNDS)
MAX_GROUP_SIZE = FIELD_BOUNDS["dim"]


def param_fields(start: int, signed_vocab: bool = False) -> tuple[HeaderField, ...]:
    """The 7 int32 hyper-parameters every .bin header holds, from byte `start` on.

    signed_vocab: v0 stores vocab_size negated when the classifier is not shared."""
    fields = []
    for i, name in enumerate(PARAM_NAMES):
        bound = FIELD_BOUNDS[name]
        low = -bound if name == "vocab_size" and signed_vocab else 1
        fields.append(HeaderField(name, "i", start + 4 * i, low, bound))
    return tuple(fields)


def magic_field() -> HeaderField:
    return HeaderField("magic", "I", 0, MAGIC, MAGIC)


def version_field(number: int) -> HeaderField:
    return HeaderField("version", "i", 4, number, number)


@dataclass(frozen=True)
class HeaderSpec:
    """A header as a table of fields, zero-padded to `size` bytes."""

    fields: tuple[HeaderField, ...]
    size: int

    def __post_init__(self) -> None:
        end = 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            assert f.offset >= end, f"header field {f.name} overlaps the one before it"
            end = f.offset + struct.calcsize("<" + f.code)
        assert end <= self.size

    @property
    def used_bytes(self) -> int:
        return max(f.offset + struct.calcsize("<" + f.code) for f in self.fields)

    def field(self, name: str) -> HeaderField:
        return next(f for f in self.fields if f.name == name)

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def encode(self, values: Mapping[str, int]) -> bytes:
        """The header bytes; constant fields need no value."""
        head = bytearray(self.size)
        for f in self.fields:
            value = f.low if f.constant else values[f.name]
            assert f.low <= value <= f.high, f"header field {f.name} = {value} out of [{f.low}, {f.high}]"
            struct.pack_into("<" + f.code, head, f.offset, value)
        return bytes(head)

    def matches(self, head: bytes) -> bool:
        """Whether `head` is long enough and holds every constant field's value (identification)."""
        return len(head) >= self.size and all(f.read(head) == f.low for f in self.fields if f.constant)

    def decode(self, head: bytes, where: str) -> dict[str, int]:
        """Every field's value, each checked against its bounds, and the padding checked zero."""
        if len(head) < self.size:
            raise Llama2binError(f"{where}: truncated header ({len(head)} of {self.size} bytes)")
        values = {}
        for f in self.fields:
            value = f.read(head)
            if not f.low <= value <= f.high:
                raise Llama2binError(f"{where}: header field {f.name} = {value} at byte {f.offset} is out of range")
            values[f.name] = value
        used = self.used_bytes
        padding = head[used : self.size]
        if any(padding):
            first = used + next(i for i, b in enumerate(padding) if b)
            raise Llama2binError(f"{where}: header padding is not zero (byte {first})")
        return values


# ---- the shared orders ------------------------------------------------------------------


def v0_weight_order(cfg: ModelConfig) -> list[str]:
    """tok_embeddings, each per-layer kind for all layers in turn, norm."""
    names = ["tok_embeddings"]
    for kind in LAYER_TENSORS:
        names += [layer_name(i, kind) for i in range(cfg.n_layers)]
    return names + ["norm"]


def norm_order(cfg: ModelConfig) -> list[str]:
    """The float32 norms of the "ak42" formats: attention_norm xL, ffn_norm xL, norm."""
    return [layer_name(i, "attention_norm") for i in range(cfg.n_layers)] + [
        layer_name(i, "ffn_norm") for i in range(cfg.n_layers)
    ] + ["norm"]


def matrix_order(cfg: ModelConfig) -> list[str]:
    """The matrices of the "ak42" formats: tok_embeddings, wq..w3 each for all layers, output when unshared."""
    names = ["tok_embeddings"]
    for kind in LAYER_MATRICES:
        names += [layer_name(i, kind) for i in range(cfg.n_layers)]
    return names + ([] if cfg.shared_classifier else ["output"])


quantized_order = matrix_order  # the Q8_0 formats quantize exactly these


def rope_shape(cfg: ModelConfig) -> tuple[int, int]:
    return (cfg.max_seq_len, cfg.head_size // 2)


# ---- building ---------------------------------------------------------------------------

SectionSpec = tuple[str, Encoding]  # (tensor, encoding)


def build_layout(
    name: str,
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
        gs = group_size if CODECS[encoding].quantizes else None
        nbytes = CODECS[encoding].nbytes(math.prod(shapes[tensor]), gs)
        sections.append(Section(tensor, encoding, shapes[tensor], offset, nbytes, gs))
        offset += nbytes
    return Layout(name, cfg, group_size, header, tuple(sections))


def ak42_header(version: int, group_size: bool) -> HeaderSpec:
    """The 256-byte "ak42" header of v1, 1f and v2: magic, version, the 7 params (vocab_size
    positive), uint8 shared_classifier at 36, then int32 group_size at the unaligned 37 for the
    Q8_0 formats; for llama2.c's float32 v1 those bytes are 0, which is how a reader tells the two
    apart (docs/formats.md)."""
    gs_bounds = (1, MAX_GROUP_SIZE) if group_size else (0, 0)
    fields = (
        magic_field(),
        version_field(version),
        *param_fields(8),
        HeaderField("shared_classifier", "B", 36, 0, 1),
        HeaderField("group_size", "i", 37, *gs_bounds),
    )
    return HeaderSpec(fields, QHEADER_SIZE)


V0_HEADER = HeaderSpec(param_fields(0, signed_vocab=True), V0_HEADER_SIZE)

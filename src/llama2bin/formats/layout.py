"""One description of every output format: its header, which tensor goes where, encoded how.

A format declares its header as one table of fields (`HeaderSpec`) that both encodes and
decodes, and the order of its sections; `build_layout` turns that into byte offsets. The
writer fills those sections, the reader finds tensors through them, so writer and reader
cannot disagree about where a header field or a tensor lives.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..constants import MAGIC, QHEADER_SIZE, V0_HEADER_SIZE
from ..errors import Llama2binError
from ..model import FIELD_BOUNDS, LAYER_MATRICES, LAYER_TENSORS, ModelConfig, layer_name


class Encoding(StrEnum):
    """How a section stores its values."""

    F32 = "f32"  # float32 values
    Q8 = "q8"  # int8 Q8_0 values
    SCALE = "scale"  # float32 Q8_0 group scales

    @property
    def json_name(self) -> str:
        """How verify JSON and the reports name a tensor stored this way: "f32" or "q8_0"."""
        return "q8_0" if self is Encoding.Q8 else "f32"

    @property
    def dtype_name(self) -> str:
        """How `inspect` names it: "float32" or "q8_0"."""
        return "q8_0" if self is Encoding.Q8 else "float32"


# Short aliases: the names the writer, reader and checks use.
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


@dataclass(frozen=True)
class Layout:
    format: str  # the registered format's name ("0", "1", "1f", "2")
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
    return Layout(name, cfg, group_size, header, tuple(sections))


FILE = "file"  # one .bin file
DIRECTORY = "directory"  # a directory of files (hf)


@dataclass(frozen=True)
class FormatSpec:
    """An output format, declaratively: its name, header, section order, who reads it, what it
    loses, and how it is read back.

    `header` is None for the hf directory, whose files are described by `formats.hf` and read
    back through `sources/`; everything about layouts applies to `kind == FILE` only.
    """

    name: str
    description: str  # in words, for `inspect` and --help
    kind: str  # FILE or DIRECTORY
    read_by: str
    loses: str
    header: HeaderSpec | None = None
    order: Callable[[ModelConfig], list[SectionSpec]] | None = None
    quantized: bool = False
    # v0: vocab_size negated in the header when the classifier is not shared.
    negative_vocab_unshared: bool = False
    # runq.c quantizes activations and walks weights in groups that must not straddle a row, so
    # every matrix row length (dim and hidden_dim) must be a multiple of the group size.
    groups_within_rows: bool = False
    # DIRECTORY formats: the `sources` kind that reads the output back.
    source_kind: str | None = None
    # How report titles name it; None: "version NAME".
    report_title: str | None = None

    @property
    def title(self) -> str:
        return self.report_title or f"version {self.name}"

    def open_directory(self, path: str) -> Any:
        """Read back an output of this DIRECTORY format: a sources.Source (canonical tensors).
        A FILE format has no opener of its own: formats/reader.py reads it through its layout."""
        if self.kind != DIRECTORY or self.source_kind is None:
            raise ValueError(f"format {self.name} is not a directory format")
        from ..sources import open_source  # an earlier stage: sources never import formats

        # what the directory holds is checked against the source, so nothing is refused here
        return open_source(self.source_kind, path, allow_rope_theta=True)

    @property
    def header_version(self) -> int:
        """The version number the header stores (v0 has none: 0)."""
        assert self.header is not None
        return self.header.field("version").low if self.header.has("version") else 0

    @property
    def label(self) -> str:
        """How file names and messages spell it: v0, v1, v1f, v2; hf."""
        return self.name if self.kind == DIRECTORY else f"v{self.name}"

    def header_bytes(self, cfg: ModelConfig, group_size: int | None) -> bytes:
        assert self.header is not None
        values: dict[str, Any] = {name: getattr(cfg, name) for name in PARAM_NAMES}
        if self.negative_vocab_unshared and not cfg.shared_classifier:
            values["vocab_size"] = -cfg.vocab_size
        values["shared_classifier"] = int(cfg.shared_classifier)
        values["group_size"] = group_size
        return self.header.encode(values)

    def decode_header(self, head: bytes, where: str) -> tuple[ModelConfig, int | None]:
        """(model config, group size or None) from a header of this format; refuses out-of-range
        fields and hyper-parameters no C reader can run."""
        assert self.header is not None
        fields = self.header.decode(head, where)
        vocab = fields["vocab_size"]
        if self.negative_vocab_unshared:
            if vocab == 0:
                raise Llama2binError(f"{where}: header field vocab_size = 0 at byte "
                                     f"{self.header.field('vocab_size').offset} is out of range")
            shared = vocab > 0
        else:
            shared = bool(fields.get("shared_classifier", 1))
        params = {name: abs(fields[name]) if name == "vocab_size" else fields[name] for name in PARAM_NAMES}
        cfg = ModelConfig(**params, shared_classifier=shared)
        cfg.validate(where)
        group_size = fields.get("group_size") if self.quantized else None
        if group_size is not None and cfg.dim % group_size:
            raise Llama2binError(
                f"{where}: group_size {group_size} at byte {self.header.field('group_size').offset} "
                f"does not divide dim {cfg.dim}"
            )
        return cfg, group_size

    def layout(self, cfg: ModelConfig, group_size: int | None = None) -> Layout:
        assert self.kind == FILE and self.order is not None
        gs = group_size if self.quantized else None
        return build_layout(self.name, cfg, gs, self.header_bytes(cfg, gs), self.order(cfg))


def ak42_header(version: int, group_size: bool) -> HeaderSpec:
    """The 256-byte "ak42" header of v1, 1f and v2: magic, version, the 7 params (vocab_size
    positive), uint8 shared_classifier at 36, then int32 group_size at the unaligned 37 for the
    Q8_0 formats; for llama2.c's float32 v1 those bytes are 0, which is how a reader tells the two
    apart (FORMATS.md)."""
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

"""What an output format is, declaratively: `FormatSpec`, and the `Family` it belongs to.

A family is a set of formats written and read back by the same code: llama2.c's .bin layouts
(a header table plus sections, see layout.py), the Hugging Face directory, and next GGUF. The
spec says which family a format is in and everything data-like about it (names, header,
section order, who reads it, what it loses); the family's code (opening, writing, describing)
is found by family name in families.py, the one module that maps the two, so nothing else
branches on "directory" or on a format name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Llama2binError
from ..model import ModelConfig
from .layout import PARAM_NAMES, HeaderSpec, Layout, SectionSpec, build_layout


@dataclass(frozen=True)
class Family:
    """Formats written and read back by the same code (families.py holds it, by `name`)."""

    name: str
    directory: bool  # an output is a directory of files (else one file)
    c_consumer: bool  # llama2bin's C consumer (c/consumer.c) maps it as llama2.c does


LLAMA2C_BIN = Family("llama2c-bin", directory=False, c_consumer=True)  # v0, v1, 1f, v2: header table + sections
HF_DIRECTORY = Family("hf-directory", directory=True, c_consumer=False)  # config.json + model.safetensors


@dataclass(frozen=True)
class FormatSpec:
    """An output format: its name, family, who reads it and what it loses; for the .bin
    family also its header table and section order (`header`, `order`: None elsewhere)."""

    name: str
    description: str  # in words, for `inspect` and --help
    family: Family
    read_by: str
    loses: str
    header: HeaderSpec | None = None
    order: Callable[[ModelConfig], list[SectionSpec]] | None = None
    quantized: bool = False  # holds llama2.c Q8_0 tensors at a group size (group_size.py plans it)
    # v0: vocab_size negated in the header when the classifier is not shared.
    negative_vocab_unshared: bool = False
    # runq.c quantizes activations and walks weights in groups that must not straddle a row, so
    # every matrix row length (dim and hidden_dim) must be a multiple of the group size.
    groups_within_rows: bool = False
    # stores llama2.c's rotary tables (freqs_cos, freqs_sin), which are computed, not read from the source
    rope_tables: bool = False
    # How file names, messages and reports spell it; None: "v" + name (v0, v1, v1f, v2).
    file_label: str | None = None
    # Its name in a model's results/ folder ({model}, {label} filled in).
    file_name: str = "{model}.{label}.bin"
    # How report titles name it; None: "version NAME".
    report_title: str | None = None

    @property
    def label(self) -> str:
        """How file names and messages spell it: v0, v1, v1f, v2; hf."""
        return self.file_label or f"v{self.name}"

    @property
    def title(self) -> str:
        return self.report_title or f"version {self.name}"

    @property
    def directory(self) -> bool:
        """An output of this format is a directory (the output guard and Snakemake must know)."""
        return self.family.directory

    def output_name(self, model: str) -> str:
        """Its file (or directory) name in the pipeline's results/MODEL/."""
        return self.file_name.format(model=model, label=self.label)

    def name_suffix(self) -> str | None:
        """The end of a file name that says "this format" (.v2.bin), if its names have one."""
        return self.file_name.format(model="", label=self.label) if self.file_name.startswith("{model}") else None

    @property
    def header_version(self) -> int:
        """The version number the header stores (v0 has none: 0)."""
        assert self.header is not None
        return self.header.field("version").low if self.header.has("version") else 0

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
        """Header bytes and section offsets of this format for `cfg` (formats with an `order`)."""
        assert self.order is not None, f"format {self.name} is not laid out in sections"
        gs = group_size if self.quantized else None
        return build_layout(self.name, cfg, gs, self.header_bytes(cfg, gs), self.order(cfg))

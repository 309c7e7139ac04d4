"""Every output family's code, by family: how an output is opened, checked before writing, and
written. The one module that maps a `FormatSpec.family` to code, so the CLI, the checks and
the pipeline never branch on "directory" or on a format name.

Two ways of writing exist. A *laid-out* family describes each output as header bytes plus
sections at offsets (`layout.Layout`); all its targets, of every laid-out family, are filled by
the writer's one positional-write pass over the source (writer.write_layouts): the .bin
versions. A family with its own pass writes its targets itself: the hf directory each one,
GGUF all of its types in one pass over the source (gguf_write.py: header bytes, then tensor
data at aligned offsets, encoded once per type).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Llama2binError
from ..safe_io import open_regular
from ..sources.base import Source
from ..sources.gguf_file import GGUF_MAGIC
from .hf_directory import HfDirectory
from .hf_export import check_hf_target, export_hf
from .layout import Layout
from .output import Output
from .reader import BinFile
from .registry import FORMATS
from .spec import GGUF_FILE, HF_DIRECTORY, LLAMA2C_BIN, FormatSpec
from .writer import bin_layouts, error_summary, write_layouts

Target = tuple[FormatSpec, str]  # (format, output path)
_SNIFF_BYTES = 16


@dataclass(frozen=True)
class ExportOptions:
    group_size: int | None = None  # explicit Q8_0 group size; None: the default plan (group_size.py)
    threads: int | None = None
    quiet: bool = False
    allow_requantize: bool = False
    tokenizer: str | None = None  # the model's tokenizer, for formats that store one (GGUF); None: the source's
    model_name: str | None = None  # the name formats that record one store (GGUF general.name); None: the source's


@dataclass
class Exported:
    """What one export wrote: a line per output, and the seed's summary of quantization error."""

    lines: list[str] = field(default_factory=list)
    max_errors: dict[str, float] = field(default_factory=dict)  # per quantized tensor: largest |w - q*scale|

    def summary_line(self) -> str | None:
        return error_summary(self.max_errors)


@dataclass(frozen=True)
class FamilyCode:
    open: Callable[[str], Output]
    check_target: Callable[[str], None]  # refuse, before any work, a target it cannot write safely
    # laid-out families: (source, targets, options) -> path -> layout, filled by the writer's one pass
    layouts: Callable[[Source, list[Target], ExportOptions], dict[str, Layout]] | None = None
    # families with a pass of their own: (source, that family's targets, options) -> lines saying what was written
    write: Callable[[Source, list[Target], ExportOptions], list[str]] | None = None
    # identifies the family's files from their first bytes (files without such a test are .bin)
    sniff: Callable[[bytes], bool] | None = None


def _bin_layouts(source: Source, targets: list[Target], options: ExportOptions) -> dict[str, Layout]:
    return bin_layouts(source, targets, options.group_size, options.allow_requantize)[0]


def _write_hf(source: Source, targets: list[Target], options: ExportOptions) -> list[str]:
    lines = []
    for _, path in targets:
        result = export_hf(source, path, quiet=options.quiet)
        lines.append(f"wrote {path}/ (hf, model.safetensors {result.size} bytes)")
    return lines


def _write_gguf(source: Source, targets: list[Target], options: ExportOptions) -> list[str]:
    from .gguf_output import write_gguf  # loads the tokenizer readers: only when a GGUF is written

    return write_gguf(source, targets, name=options.model_name, tokenizer=options.tokenizer,
                      allow_requantize=options.allow_requantize, threads=options.threads, quiet=options.quiet)


def _open_gguf(path: str) -> Output:
    from .gguf_output import GgufOutput

    return GgufOutput(path)


def _is_gguf(head: bytes) -> bool:
    return head[:4] == GGUF_MAGIC


def _no_check(path: str) -> None:
    """A file target: the atomic writer replaces it whole, nothing to refuse up front."""


CODE: dict[str, FamilyCode] = {
    LLAMA2C_BIN.name: FamilyCode(open=BinFile, check_target=_no_check, layouts=_bin_layouts),
    HF_DIRECTORY.name: FamilyCode(open=HfDirectory, check_target=check_hf_target, write=_write_hf),
    GGUF_FILE.name: FamilyCode(open=_open_gguf, check_target=_no_check, write=_write_gguf, sniff=_is_gguf),
}


def open_output(path: str) -> Output:
    """An existing output of any registered format, read back. A directory is the directory
    format; a file is a family's whose `sniff` accepts its first bytes (GGUF's magic), else a
    .bin identified from its header (refused like any unreadable .bin)."""
    if os.path.isdir(path):
        directories = [spec for spec in FORMATS.values() if spec.directory]
        if len(directories) != 1:  # more than one directory format: identify by content then
            raise Llama2binError(f"{path}: is a directory, and no single directory format reads it")
        return CODE[directories[0].family.name].open(path)
    if os.path.isfile(path):  # a regular file (a FIFO would block the read): the .bin reader refuses the rest
        with open(open_regular(path, "output"), "rb") as f:
            head = f.read(_SNIFF_BYTES)
        for code in CODE.values():
            if code.sniff is not None and code.sniff(head):
                return code.open(path)
    return CODE[LLAMA2C_BIN.name].open(path)  # identified by its header: v0 has no magic


def write_outputs(source: Source, targets: list[Target], options: ExportOptions) -> Exported:
    """Write `source` as every (format, path) target, each all or nothing: every laid-out target
    in one pass over the source, then each family with a pass of its own."""
    for spec, path in targets:  # refuse a bad target before writing anything
        CODE[spec.family.name].check_target(path)
    exported = Exported()
    layouts: dict[str, Layout] = {}
    by_family: dict[str, list[Target]] = {}
    for spec, path in targets:
        if CODE[spec.family.name].layouts is not None:
            by_family.setdefault(spec.family.name, []).append((spec, path))
    for family, family_targets in by_family.items():
        planner = CODE[family].layouts
        assert planner is not None
        layouts |= planner(source, family_targets, options)
    if layouts:
        exported.max_errors = write_layouts(source, layouts, options.threads, options.quiet)
        line = exported.summary_line()
        exported.lines += [line] if line else []
        exported.lines += [f"wrote {path} ({FORMATS[layout.format].label}, {layout.size} bytes)"
                           for path, layout in layouts.items()]
    own_pass: dict[str, list[Target]] = {}
    for spec, path in targets:
        if CODE[spec.family.name].write is not None:
            own_pass.setdefault(spec.family.name, []).append((spec, path))
    for family, family_targets in own_pass.items():
        writer = CODE[family].write
        assert writer is not None
        exported.lines += writer(source, family_targets, options)
    return exported
